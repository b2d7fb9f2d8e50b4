"""What the warm start teaches: the policy's probability of the expert's action on held-out states, per SFT step.

The warm start's success rate alone cannot say whether the model learned to read the board: on the
Sokoban levels here (6×6, one box, 15 steps) uniformly random moves already win about 21-23% of the
held-out tasks (``python -m bench.heldout RUN --random``), inside the 10-40% the warm start aims at.
This probe trains the warm start exactly as ``train.py`` with the same flags does (model, tokenizer,
demonstrations, optimiser: warmstart.warm_start; nothing is cached) and every ``--every`` optimiser
steps prints the mean probability the policy gives the expert's action along ``--probe-episodes``
held-out expert episodes (warmstart.expert_prob; Sokoban: 0.25 for a policy that ignores the board),
the mean training loss since the previous line and the wall time. At the end it plays the
``--tasks`` held-out tasks (greedy and sampled, train.py ``evaluate``) and uniformly random actions
on the same tasks.

Run: ``python -m bench.warmstart_probe --every 100 -- --env sokoban --warmstart-episodes 800``
(flags after ``--`` are train.py's).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import split_argv
from bench.heldout import random_success
from config import parse_config
from train import build_models, env_factory, evaluate, resolve_device
from warmstart import expert_prob, expert_rows, warm_start


def main(argv: list[str] | None = None) -> list[dict]:
    own, rest = split_argv(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--every", type=int, default=100, help="optimiser steps between probes")
    p.add_argument("--probe-episodes", type=int, default=40, help="held-out expert episodes whose actions are probed")
    p.add_argument("--tasks", type=int, default=128, help="held-out tasks played at the end (0 = skip)")
    args = p.parse_args(own)
    if args.every < 1 or args.probe_episodes < 1 or args.tasks < 0:
        raise SystemExit(f"bench.warmstart_probe: --every and --probe-episodes must be >= 1 and --tasks >= 0, "
                         f"got {args.every}, {args.probe_episodes}, {args.tasks}")
    cfg, _ = parse_config(rest)
    device, make = resolve_device(cfg), env_factory(cfg)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, policy, _, _, _ = build_models(cfg, make, device, Path(tmp))
    rows = expert_rows(tokenizer, make, cfg, args.probe_episodes)
    out, t0, since = [], time.time(), []

    def probe(step: int, loss: float | None, force: bool = False) -> None:
        if loss is not None:
            since.append(loss)
        if step % args.every and not force:
            return
        policy.eval()
        row = {"step": step, "loss": float(np.mean(since)) if step else float("nan"),
               "expert_prob": expert_prob(policy, rows, tokenizer.pad_token_id, device), "s": time.time() - t0}
        since.clear()
        out.append(row)
        print(f"step {step:5d}  loss {row['loss']:.4f}  expert action prob {row['expert_prob']:.4f}  {row['s']:.0f} s", flush=True)

    probe(0, None)
    stats = warm_start(policy, tokenizer, make, cfg, device, on_step=probe)
    if since:  # steps after the last probe
        probe(out[-1]["step"] + len(since), None, force=True)
    print(f"warm start: {stats}")
    if args.tasks:
        policy.eval()
        m = evaluate(policy, tokenizer, make, dataclasses.replace(cfg, eval_tasks=args.tasks), device, modes=("greedy", "sampled"))
        print(f"held-out success on {args.tasks} tasks: greedy {m['eval/success_greedy']:.3f}, sampled "
              f"T={cfg.eval_temperature} {m['eval/success_sampled']:.3f}; uniform random actions "
              f"{random_success(make, args.tasks):.3f}")
    return out


if __name__ == "__main__":
    main()
