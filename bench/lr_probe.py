"""How far one iteration's update moves the policy, for several learning rates: choose ``--lr`` here.

One batch of real rollouts of the warm-started policy (the one ``train.py`` with the same flags
starts RL from: the cached warm start, computed if missing), then, for each learning rate, a
fresh AdamW and one ``istar.istar_update`` (PRM step, advantages, PPO minibatches) from that same
start. Printed per learning rate: the k3 KL between π_θold and the updated π_θ over every action
token of the batch, the largest |log ρ| of a token, and the token whose probability moved most.

Why this exists: an update is not bounded by its learning rate in an obvious way. AdamW's step
is about ``lr`` per parameter whatever the gradient's size (gradient clipping does not bound it),
and a sparse-reward batch's gradient is dominated by its few successful episodes, so every
weight of a layer moves coherently and the change of a logit grows with the layer's fan-in × lr.
The KL therefore grows much faster than the learning rate and then jumps: with the small default
model on Sokoban (8 × 8 episodes, 4 minibatches) it was 1.5e-3 at 1e-4, 4.6e-3 at 3e-4 and 0.42 at
1e-3 (``</action>`` fell from p = 1 to 2e-5), and a training run at 3e-4 lost its answer format in
its first iteration (README, Results). Where the edge lies depends on the batch; the default
learning rate stays a few times below it.

Run: ``python -m bench.lr_probe --lrs 3e-5,1e-4,2e-4,3e-4 -- --env sokoban --tasks-per-iter 8``
(flags after ``--`` are train.py's; the default model is built and warm-started as there).
Add ``--loss-agg seq-mean-token-mean`` after ``--`` to compare the PPO loss aggregations: the
printed mean log ρ of ``</action>`` shows how the update moves the answer format itself.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from bench.common import split_argv, warm_started_policy
from config import parse_config
from istar import istar_update
from model import token_logprobs
from rollout import pack, rollout
from train import rollout_kwargs


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, train_args = split_argv(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Flags after -- go to train.py's config.")
    p.add_argument("--lrs", default="3e-5,1e-4,2e-4,3e-4", help="comma-separated policy learning rates")
    args = p.parse_args(own)
    lrs = [float(x) for x in args.lrs.split(",")]
    cfg, _ = parse_config(["--tasks-per-iter", "8", "--group-size", "8", *train_args])
    tokenizer, policy, make, device = warm_started_policy(cfg)
    seeds = torch.randint(0, 2**31, (cfg.tasks_per_iter,), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    with torch.no_grad():
        trajs = rollout(policy, tokenizer, make, seeds, cfg.group_size, temperature=cfg.temperature, seed=cfg.seed,
                        **rollout_kwargs(cfg, device))
    batch = pack(trajs, device, tokenizer.pad_token_id)
    old_logp = batch.old_logp  # (T,) log π_θold, recorded at sampling
    tokens = batch.input_ids[batch.action_mask]  # (T,) the action tokens, packed
    print(f"batch: {batch.num_traj} episodes, {int(batch.won.sum())} won, {batch.input_ids.shape[0]} rows, "
          f"{old_logp.numel()} action tokens; policy lr {', '.join(f'{x:g}' for x in lrs)}")
    end_id = tokenizer.convert_tokens_to_ids("</action>")
    is_end = tokens == end_id  # (T,) the closing tag, in every step of every episode
    for lr in lrs:
        model, prm = copy.deepcopy(policy), copy.deepcopy(policy)  # the PRM starts as the policy (paper.md E3)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        prm_opt = torch.optim.AdamW(prm.parameters(), lr=cfg.prm_lr, weight_decay=0.0)
        model.train()
        t0 = time.time()
        stats = istar_update(model, prm, opt, prm_opt, batch, cfg, generator=torch.Generator().manual_seed(cfg.seed))
        with torch.no_grad():
            new_logp = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.action_mask).float()  # (T,)
        log_ratio = new_logp - old_logp  # (T,)
        kl = float(((log_ratio.exp() - 1) - log_ratio).mean())  # k3 estimate of KL(π_θold ‖ π_θ)
        k = int(log_ratio.abs().argmax())
        word = tokenizer.decode([int(tokens[k])])
        fmt = log_ratio[is_end].mean() if is_end.any() else float("nan")  # the answer format's closing tag
        print(f"lr {lr:7.1e}: KL after the update {kl:9.2e}   max |log ρ| {log_ratio.abs().max():6.2f} "
              f"({word!r}: p {old_logp[k].exp():.3g} -> {new_logp[k].exp():.3g})   mean log ρ of '</action>' {fmt:+.4f}"
              f"   clip_frac {stats['policy/clip_frac']:.3f}   grad_norm {stats['policy/grad_norm']:.2f}"
              f"   ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
