"""Where a run's implicit step rewards come from: what the PRM learned, or how far the policy moved?

E1 (paper Eq. 1, paper.md E1) measures the PRM against π_θold, the policy that sampled the batch,
and both models start from one policy π_0 (the warm start; paper.md E3: the PRM is initialised from
the policy). So every step reward splits exactly into two parts:

    r_φ  = β·Σ_k (log π_φ − log π_θold)
         = β·Σ_k (log π_φ − log π_0)  −  β·Σ_k (log π_θold − log π_0)
           └ prm_change: what DPO taught ┘  └ policy_drift: what RL taught the policy ┘

For the latest weights of each run given (its final models, or its newest checkpoint), this probe
rolls out ``--tasks`` × ``--group-size`` episodes with the run's policy and scores every step with
the three sums. Against the env's step labels (credit.py: a move along a shortest solution vs not;
a move that kept the level solvable vs one into a dead end) each gets a within-group AUC (0.5 is
chance). Where the policy's drift ranks good moves high (RL taught them) and the PRM's change does
not keep up, r_φ ranks them low: the step reward then pushes the policy away from what it has just
learned, as the README's Sokoban and Locks results describe.

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

PARTS = ("r_phi", "prm_change", "policy_drift")


def step_scores(logp: dict[str, torch.Tensor], step_cu: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """The three per-step sums (S,) of the module docstring from per-token log-probs (T,) of the run's
    ``policy`` (π_θold), ``prm`` (π_φ) and ``start`` (π_0); r_phi = prm_change − policy_drift exactly."""
    def part(a, b):
        return step_rewards(logp[a], logp[b], step_cu, beta)  # (S,) E1 with reference b
    return {"r_phi": part("prm", "policy"), "prm_change": part("prm", "start"), "policy_drift": part("policy", "start")}


def credit_aucs(batch, scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Within-group AUC of each score against the shortest-path label (``<name>``) and against safe vs
    fatal moves (``<name>_safe``); nan without a (good, bad) pair; plus each score's mean."""
    group = torch.repeat_interleave(batch.group_id, batch.num_steps.long())  # (S,)
    out = {}
    for suffix, label in (("", batch.step_optimal), ("_safe", safe_move_labels(batch))):
        for name, score in scores.items():
            wins, pairs = within_group_auc(score, label, group)
            out[name + suffix] = wins / pairs if pairs else float("nan")
    out.update({f"{name}_mean": float(score.mean()) for name, score in scores.items()})
    return out


@torch.no_grad()
def probe(run_dir: str, tasks: int, group_size: int, seed: int) -> dict:
    cfg, policy, prm, tokenizer, which = load_run(Path(run_dir))
    cfg = dataclasses.replace(cfg, out_dir=str(Path(run_dir).parent), device="cpu")  # the warm-start cache beside the run
    _, start, make, device = warm_started_policy(cfg)
    seeds = torch.randint(0, 2**31, (tasks,), generator=torch.Generator().manual_seed(seed)).tolist()
    trajs = rollout(policy, tokenizer, make, seeds, group_size, temperature=cfg.temperature, seed=seed,
                    **rollout_kwargs(cfg, device))
    batch = pack(trajs, device, tokenizer.pad_token_id)
    logp = {name: recompute_old_logp(model, batch, cfg) for name, model in
            (("policy", policy), ("prm", prm), ("start", start))}  # (T,) each
    stats = credit_aucs(batch, step_scores(logp, batch.step_cu, cfg.beta))
    return {"run": run_dir, "weights": which, "won": int(batch.won.sum()), "episodes": batch.num_traj,
            "lost": fatal_moves([batch]), **stats}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="train.py run folders")
    p.add_argument("--tasks", type=int, default=16, help="tasks rolled out with each run's policy")
    p.add_argument("--group-size", type=int, default=8, help="rollouts per task (one group)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the tasks and the sampling (the same for every run)")
    args = p.parse_args(argv)
    if args.tasks < 1 or args.group_size < 2:
        p.error(f"--tasks must be >= 1 and --group-size >= 2, got {args.tasks}, {args.group_size}")
    cols = [f"{n}{s}" for s in ("", "_safe") for n in PARTS] + [f"{n}_mean" for n in PARTS]
    print("| run | weights | won | " + " | ".join(cols) + " |\n|" + "---|" * (3 + len(cols)))
    rows = []
    for run in args.runs:
        rows.append(probe(run, args.tasks, args.group_size, args.seed))
        r = rows[-1]
        print(f"| {run} | {r['weights']} | {r['won']}/{r['episodes']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |",
              flush=True)
    for r in rows:
        print(f"{r['run']}: {r['lost'] or 'no move into a dead end'}")
    return rows


if __name__ == "__main__":
    main()
