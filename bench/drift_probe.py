"""Where a run's implicit step rewards come from: what the PRM learned, or how far the policy moved?

E1 (paper Eq. 1, paper.md E1) measures the PRM against π_θold, the policy that sampled the batch,
and both models start from one policy π_0 (the warm start; paper.md E3: the PRM is initialised from
the policy). So every step reward splits exactly into two parts:

    r_φ  = β·Σ_k (log π_φ − log π_θold)
         = β·Σ_k (log π_φ − log π_0)  −  β·Σ_k (log π_θold − log π_0)
           └ prm_change: what DPO taught ┘  └ policy_drift: what RL taught the policy ┘

For the latest weights of each run given (its final models, or its newest checkpoint), this probe
rolls out ``--tasks`` × ``--group-size`` episodes with the run's policy and scores every step with
the three sums, and with a fourth, ``headroom`` = −β·Σ_k log π_0: the most prm_change can be (as
log π_φ ≤ 0), small for the moves π_0 already favours. Against the env's step labels (credit.py:
a move along a shortest solution vs not; a move that kept the level solvable vs one into a dead
end) each gets a within-group AUC (0.5 is chance). Where the policy's drift ranks good moves high (RL taught them) and the PRM's change does
not keep up, r_φ ranks them low: the step reward then pushes the policy away from what it has just
learned, as the README's Sokoban and Locks results describe. Where prm_change ranks like headroom,
the PRM's credit follows how surprising a move was to π_0 rather than what it did.

On Sokoban a second table splits the moves into pushes (a box moved) and walks, read off the
recorded observations (``push_labels``): how each part ranks pushes against walks (``<part>_push``,
above 0.5 = pushes score higher), and its shortest-path AUC among pushes only and among walks only.
Every move into a dead end is a push (a walk is undone by walking back), so a PRM that learns
"pushing loses" marks down the pushes a solution needs along with the fatal ones.

``--rollout-policy start`` rolls the episodes out with the warm start π_0 instead of the run's
policy, the same episodes for every run: the PRM's change is then scored on one fixed distribution
of moves, so what it learned can be told apart from where the run's policy went (headroom and the
labels are the same for every run; policy_drift is then how the run's policy would rescore π_0's
moves, and r_phi what its PRM would give them under E1 against it).

Run: ``python -m bench.drift_probe RUN_DIR [RUN_DIR ...] --tasks 16 --group-size 8``. The warm start
π_0 comes from the cache next to the run (``<out_dir>/.warmstart``, as train.py wrote it; computed
again if it is missing). Runs on the CPU (the models are small); diagnostics only, nothing is written.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from bench.common import fatal_moves, warm_started_policy
from credit import safe_move_labels, within_group_auc
from istar import recompute_old_logp
from prm import step_rewards
from replay import load_run
from rollout import pack, rollout
from train import rollout_kwargs

PARTS = ("r_phi", "prm_change", "policy_drift", "headroom")
PUSH_COLS = ("push", "sp_push", "sp_walk")


def push_labels(trajs) -> torch.Tensor:
    """(S,) int8 per step of the trajectories, in pack order: 1 if the move pushed a box (the boxes'
    cells on the board after it differ from those before it), 0 a walk, −1 where the observations
    show no box (not a Sokoban board: envs/sokoban.py's rows start with the wall '#')."""
    def boxes(obs: str) -> tuple:
        rows = [line for line in obs.split("\n") if line.startswith("#")]  # the board, not the task line
        return tuple((r, c) for r, line in enumerate(rows) for c, ch in enumerate(line) if ch in "X√")
    out = []
    for t in trajs:
        seen = [boxes(o) for o in t.observations]  # obs 0 (reset) .. obs S
        out += [(-1 if not a else int(a != b)) for a, b in zip(seen[:-1], seen[1:])]
    return torch.tensor(out, dtype=torch.int8)


def step_scores(logp: dict[str, torch.Tensor], step_cu: torch.Tensor, beta: float,
                reference: str = "old") -> dict[str, torch.Tensor]:
    """The three per-step sums (S,) of the module docstring from per-token log-probs (T,) of the run's
    ``policy`` (π_θold), ``prm`` (π_φ) and ``start`` (π_0); r_phi = prm_change − policy_drift exactly
    (a run with ``--prm-reference start`` measured E1 against π_0: its r_phi is prm_change).
    A fourth, ``headroom`` = −β·Σ_k log π_0, is the most prm_change can be (log π_φ ≤ 0): a move π_0
    already makes with probability p can earn at most −β·log p, so a score that follows headroom
    ranks the moves π_0 favours low whatever they did."""
    def part(a, b):
        return step_rewards(logp[a], logp[b], step_cu, beta)  # (S,) E1 with reference b
    return {"r_phi": part("prm", "start" if reference == "start" else "policy"), "prm_change": part("prm", "start"), "policy_drift": part("policy", "start"),
            "headroom": step_rewards(torch.zeros_like(logp["start"]), logp["start"], step_cu, beta)}


def credit_aucs(batch, scores: dict[str, torch.Tensor], pushes: torch.Tensor | None = None) -> dict[str, float]:
    """Within-group AUC of each score against the shortest-path label (``<name>``) and against safe vs
    fatal moves (``<name>_safe``); nan without a (good, bad) pair; plus each score's mean. With
    ``pushes`` (S,) from ``push_labels``: pushes vs walks (``<name>_push``) and the shortest-path AUC
    among pushes (``<name>_sp_push``) and among walks (``<name>_sp_walk``), and the share of pushes
    among shortest-path moves (``push_share_sp``) and among the other moves (``push_share_other``)."""
    group = torch.repeat_interleave(batch.group_id, batch.num_steps.long())  # (S,)
    labels = {"": batch.step_optimal, "_safe": safe_move_labels(batch)}
    out = {}
    if pushes is not None:
        sp = batch.step_optimal.to(pushes.device)  # (S,)
        unknown = torch.full_like(sp, -1)
        labels.update({"_push": pushes, "_sp_push": torch.where(pushes == 1, sp, unknown),
                       "_sp_walk": torch.where(pushes == 0, sp, unknown)})
        for name, on in (("sp", sp == 1), ("other", sp == 0)):
            known = on & (pushes >= 0)
            out[f"push_share_{name}"] = float((pushes[known] == 1).float().mean()) if known.any() else float("nan")
    for suffix, label in labels.items():
        for name, score in scores.items():
            wins, pairs = within_group_auc(score, label, group)
            out[name + suffix] = wins / pairs if pairs else float("nan")
    out.update({f"{name}_mean": float(score.mean()) for name, score in scores.items()})
    return out


@torch.no_grad()
def probe(run_dir: str, tasks: int, group_size: int, seed: int, rollout_policy: str = "run") -> dict:
    cfg, policy, prm, tokenizer, which = load_run(Path(run_dir))
    cfg = dataclasses.replace(cfg, out_dir=str(Path(run_dir).parent), device="cpu")  # the warm-start cache beside the run
    _, start, make, device = warm_started_policy(cfg)
    seeds = torch.randint(0, 2**31, (tasks,), generator=torch.Generator().manual_seed(seed)).tolist()
    actor = {"run": policy, "start": start}[rollout_policy]
    trajs = rollout(actor, tokenizer, make, seeds, group_size, temperature=cfg.temperature, seed=seed,
                    **rollout_kwargs(cfg, device))
    batch = pack(trajs, device, tokenizer.pad_token_id)
    logp = {name: recompute_old_logp(model, batch, cfg) for name, model in
            (("policy", policy), ("prm", prm), ("start", start))}  # (T,) each
    pushes = push_labels(trajs) if cfg.env == "sokoban" else None  # (S,)
    stats = credit_aucs(batch, step_scores(logp, batch.step_cu, cfg.beta, cfg.prm_reference), pushes)
    return {"run": run_dir, "weights": which, "won": int(batch.won.sum()), "episodes": batch.num_traj,
            "lost": fatal_moves([batch]), **stats}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="train.py run folders")
    p.add_argument("--tasks", type=int, default=16, help="tasks rolled out with each run's policy")
    p.add_argument("--group-size", type=int, default=8, help="rollouts per task (one group)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the tasks and the sampling (the same for every run)")
    p.add_argument("--rollout-policy", choices=["run", "start"], default="run",
                   help="who plays the scored episodes: the run's policy, or its warm start π_0 (one fixed batch for every run)")
    args = p.parse_args(argv)
    if args.tasks < 1 or args.group_size < 2:
        p.error(f"--tasks must be >= 1 and --group-size >= 2, got {args.tasks}, {args.group_size}")
    cols = [f"{n}{s}" for s in ("", "_safe") for n in PARTS] + [f"{n}_mean" for n in PARTS]
    print(f"{args.tasks} tasks x {args.group_size} episodes (seed {args.seed}), played by "
          + {"run": "each run's policy", "start": "the warm start π_0"}[args.rollout_policy])
    print("| run | weights | won | " + " | ".join(cols) + " |\n|" + "---|" * (3 + len(cols)))
    rows = []
    for run in args.runs:
        rows.append(probe(run, args.tasks, args.group_size, args.seed, args.rollout_policy))
        r = rows[-1]
        print(f"| {run} | {r['weights']} | {r['won']}/{r['episodes']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |",
              flush=True)
    pushed = [r for r in rows if "push_share_sp" in r]
    if pushed:
        cols = [f"{n}_{s}" for s in PUSH_COLS for n in PARTS]
        print("\nPushes vs walks (Sokoban): `_push` ranks pushes against walks; `_sp_push` / `_sp_walk` the "
              "shortest-path AUC among pushes / walks only")
        print("| run | pushes among shortest-path moves | among the others | " + " | ".join(cols) + " |\n|"
              + "---|" * (3 + len(cols)))
        for r in pushed:
            print(f"| {r['run']} | {r['push_share_sp']:.2f} | {r['push_share_other']:.2f} | "
                  + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    for r in rows:
        print(f"{r['run']}: {r['lost'] or 'no move into a dead end'}")
    return rows


if __name__ == "__main__":
    main()
