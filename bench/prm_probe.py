"""Does the implicit PRM learn step credit from trajectory preferences alone? A fixed-policy probe.

iStar's PRM (paper.md E1-E3; paper Eq. 1-2) only ever sees which trajectory of a group did better,
yet its rewards r_φ = β·Σ_k (log π_φ − log π_θold) are meant to say which *steps* were good. This
probe tests that in isolation, with the policy held fixed (so π_θold is the same for every batch and
r_φ has no policy-drift term):

1. Roll out ``--batches`` batches of N × G episodes with the warm-started policy (the one train.py
   with the same flags starts RL from). The last batch is held out.
2. For each PRM learning rate: a fresh PRM (a copy of the policy, paper.md E3) takes one
   ``istar.update_prm`` DPO step per training batch, ``--epochs`` passes over them.
3. After every pass, on the held-out batch: DPO pair accuracy and margin, and the AUC of r_φ against
   the env's ground-truth step labels (credit.py: ``credit/prm_auc``; Sokoban labels a move good
   when it takes one step along a shortest solution), plus ``credit/adv_auc`` of the combined
   advantage A^E + α·A^S (E7) next to ``credit/episode_auc`` of A^E alone; and what r_φ follows:
   ``live_auc``, the AUC of r_φ for steps taken from a solvable state against steps taken in a dead
   end (no move helps there, so the credit AUCs leave those steps out), and its within-group
   correlation with the action's log π_θold and with the step's index. Three more AUCs separate
   step credit from trajectory ranking: ``traj_auc``, the AUC of r_φ over (good, bad) pairs of
   steps *of the same trajectory* (A^E is constant there, so this is credit the outcome cannot
   give: 0.5 for any episode-level advantage); ``index_auc``, over pairs of one group taken at the
   same step index (a reward that merely falls with the step's position scores 0.5 there); and
   ``policy_auc``, the AUC of the sampling policy's own log π_θold of the action (what the PRM
   starts from: does r_φ know more than the policy's confidence?). ``*_safe_auc`` score the same
   quantities against moves that kept the level solvable vs moves into a dead end (credit.py,
   ``safe_move_labels``; ``fatal_frac`` of the moves were fatal): in Sokoban the moves that decide
   the outcome, where the shortest-path label also marks harmless detours bad.

AUC 0.5 is chance. iStar's step term helps credit assignment where adv_auc > episode_auc.

Run: ``python -m bench.prm_probe --batches 6 --epochs 4 --prm-lrs 2e-4,1e-3 -- --env sokoban
--tasks-per-iter 8 --warmstart-episodes 800`` (flags after ``--`` are train.py's).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.common import fatal_moves, split_argv, warm_started_policy
from config import parse_config
from credit import within_group_auc, within_group_corr
from istar import compute_advantages, recompute_old_logp, score_with_prm, update_prm
from prm import preference_pairs, trajectory_dpo_loss, trajectory_scores
from rollout import pack, rollout
from train import rollout_kwargs


# Config fields that do not change the rollouts (PRM and update settings): a cache made under other
# values of these is still valid.
_NOT_ROLLOUT = {"beta", "prm_lr", "prm_grad_clip", "q_reduce", "pair_rule", "prm_order", "prm_steps", "prm_nll_coef",
                "granularity", "scale_step_rewards", "adam_beta2",
                "algo", "step_adv_coef", "step_reward_source", "lr", "clip_eps", "dual_clip", "ratio_level", "loss_agg",
                "ppo_epochs", "minibatches", "micro_batch", "micro_batch_tokens", "entropy_coef", "kl_coef", "grad_clip",
                "kernels", "iterations", "max_env_steps", "run_name", "eval_every", "eval_tasks", "eval_temperature",
                "save_every", "tensorboard", "istar", "out_dir", "fsdp"}


def held_out_stats(prm, batch, old_logp, cfg) -> dict:
    """DPO pair accuracy/margin, the credit/* AUCs of a PRM on a batch it was not trained on, and what
    its step rewards follow: within-group correlation of r_φ with the step's log π_θold (Σ over its
    tokens) and with its index in the episode."""
    reward = score_with_prm(prm, batch, old_logp, cfg)  # (S,) E1
    q = trajectory_scores(reward, batch.traj_cu, cfg.q_reduce)  # (N,) E2
    _, dpo = trajectory_dpo_loss(q, preference_pairs(batch.won, batch.outcome, batch.group_cu, cfg.pair_rule))  # E3
    _, adv = compute_advantages(batch, reward, cfg)  # E5-E7, with the credit/* stats
    steps = batch.num_steps.long()  # (N,)
    group = torch.repeat_interleave(batch.group_id - batch.group_id.min(), steps)  # (S,)
    index = torch.arange(int(steps.sum())) - torch.repeat_interleave(batch.traj_cu[:-1], steps)  # (S,) 0, 1, ... per episode
    step_old = trajectory_scores(old_logp, batch.step_cu, "sum")  # (S,) log π_θold of each whole action
    live = (batch.step_optimal >= 0).to(torch.int8)  # (S,) 1 = a labelled step, 0 = a step from a dead end
    traj = torch.repeat_interleave(torch.arange(batch.num_traj, device=steps.device), steps)  # (S,) trajectory of each step
    same_index = group * (int(index.max()) + 1) + index  # (S,) one id per (group, step index)

    def auc(score, label, ids):  # AUC over (good, bad) pairs sharing an id; nan without a pair
        wins, pairs = within_group_auc(score, label, ids)
        return wins / pairs if pairs else float("nan")

    def corr(x, y):  # Pearson correlation within groups; nan when one side is constant in every group
        sxy, sxx, syy = within_group_corr(x, y.to(x.dtype), group)
        return sxy / (sxx * syy) ** 0.5 if sxx * syy > 0 else float("nan")

    return {"acc": dpo["prm/acc"], "margin": dpo["prm/margin"], "pairs": dpo["prm/num_pairs"],
            **{k.split("/")[1]: v for k, v in adv.items() if k.startswith("credit/")},
            "live_auc": auc(reward, live, group),
            "traj_auc": auc(reward, batch.step_optimal, traj),  # pairs inside one trajectory
            "index_auc": auc(reward, batch.step_optimal, same_index),
            "policy_auc": auc(step_old, batch.step_optimal, group),
            "corr_old_logp": corr(reward, step_old),
            "corr_step_index": corr(reward, index)}


def collect(cfg, num_batches: int, cache: str | None = None):
    """The warm-started policy and ``num_batches`` rollout batches of it, each with its old log-probs.
    With ``cache``, the batches are loaded from that file when it holds the same rollout settings,
    else rolled out and saved there (so probes of several PRM settings see the same episodes). The
    old log-probs are always computed in this process, so the untrained PRM's rewards are exactly 0."""
    key = json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_ROLLOUT} | {"batches": num_batches},
                     sort_keys=True)
    tokenizer, policy, make, device = warm_started_policy(cfg)
    if cache and Path(cache).is_file():
        saved = torch.load(cache, weights_only=False)
        if saved["key"] == key:  # old log-probs are recomputed here: thread counts change their last bits
            print(f"batches loaded from {cache}")
            return policy, [(b, recompute_old_logp(policy, b, cfg)) for b in (b.to(device) for b in saved["batches"])]
        print(f"{cache} holds other rollout settings: rolling out again")
    gen, batches = torch.Generator().manual_seed(cfg.seed), []
    for k in range(num_batches):
        seeds = torch.randint(0, 2**31, (cfg.tasks_per_iter,), generator=gen).tolist()
        with torch.no_grad():
            trajs = rollout(policy, tokenizer, make, seeds, cfg.group_size, temperature=cfg.temperature,
                            seed=cfg.seed + k, **rollout_kwargs(cfg, device))
        batch = pack(trajs, device, tokenizer.pad_token_id)
        batches.append((batch, recompute_old_logp(policy, batch, cfg)))
    if cache:
        tmp = Path(cache).with_suffix(".tmp")
        torch.save({"key": key, "batches": [b.to("cpu") for b, _ in batches]}, tmp)
        os.replace(tmp, cache)  # atomic
    return policy, batches


def probe(policy, batches, cfg, prm_lr: float, epochs: int, on_row=None) -> list[dict]:
    """A fresh PRM trained on every batch but the last, ``epochs`` passes; one row of held-out stats per
    pass (pass 0: the untrained PRM, r_φ = 0 everywhere, so every AUC is all ties: 0.5)."""
    prm = copy.deepcopy(policy)  # π_φ starts as the policy (paper.md E3)
    prm.train()
    opt = torch.optim.AdamW(prm.parameters(), lr=prm_lr, weight_decay=0.0)
    train, (held, held_old) = batches[:-1], batches[-1]
    rows = []
    for epoch in range(epochs + 1):
        fit = []
        if epoch > 0:
            for batch, old_logp in train:
                _, stats = update_prm(prm, opt, batch, old_logp, cfg)  # one DPO step (E3)
                if stats["prm/num_pairs"]:
                    fit.append(stats["prm/acc"])  # accuracy before this step, on this batch
        rows.append({"pass": epoch, "train_acc": sum(fit) / len(fit) if fit else float("nan"),
                     **held_out_stats(prm, held, held_old, cfg)})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, train_args = split_argv(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Flags after -- go to train.py's config.")
    p.add_argument("--batches", type=int, default=6, help="rollout batches; the last one is held out (>= 2)")
    p.add_argument("--epochs", type=int, default=4, help="passes over the training batches")
    p.add_argument("--prm-lrs", default="2e-4,1e-3", help="comma-separated PRM learning rates, each from the same start")
    p.add_argument("--cache", default=None, help="file to load the rollout batches from, or save them to (same rollout settings)")
    args = p.parse_args(own)
    if args.batches < 2 or args.epochs < 1:
        raise SystemExit(f"--batches must be >= 2 and --epochs >= 1, got {args.batches}, {args.epochs}")
    cfg, _ = parse_config(["--tasks-per-iter", "8", "--group-size", "8", *train_args])
    t0 = time.time()
    policy, batches = collect(cfg, args.batches, args.cache)
    won, n = sum(int(b.won.sum()) for b, _ in batches), sum(b.num_traj for b, _ in batches)
    print(f"{args.batches} batches of {cfg.tasks_per_iter}x{cfg.group_size} episodes ({won}/{n} won) in {time.time() - t0:.0f} s; "
          f"the last is held out; beta {cfg.beta}, Q = {cfg.q_reduce}, pairs = {cfg.pair_rule}")
    print(fatal_moves([b for b, _ in batches]))
    cols = ["train_acc", "acc", "margin", "optimal_frac", "episode_auc", "prm_auc", "adv_auc", "traj_auc",
            "index_auc", "policy_auc", "live_auc", "fatal_frac", "episode_safe_auc", "prm_safe_auc", "adv_safe_auc",
            "corr_old_logp", "corr_step_index"]
    show = lambda r: print(f"{r['pass']:4d}  " + "  ".join(f"{r.get(c, float('nan')):>{len(c)}.4f}" for c in cols), flush=True)  # noqa: E731
    out = {}
    for lr in [float(x) for x in args.prm_lrs.split(",")]:
        print(f"\nPRM lr {lr:g}: the held-out batch after each pass (train_acc: on each training batch before its step)")
        print("pass  " + "  ".join(cols))
        out[lr] = probe(policy, batches, cfg, lr, args.epochs, on_row=show)
    return out


if __name__ == "__main__":
    main()
