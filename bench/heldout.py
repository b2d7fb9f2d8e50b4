"""Held-out success of finished runs, and of the warm start they began from, on more tasks than a run's own evaluations.

A run's periodic evaluation (train.py ``evaluate``) plays ``--eval-tasks`` held-out tasks, 64 by
default: one success rate then has a standard error of ~5 points, too coarse to tell a small gain
or loss. This re-plays the latest policy of each run (``replay.load_run``: its final
policy, or its checkpoint while it runs) and, with ``--warmstart``,
the cached warm start of the first run's settings (the policy RL started from) on ``--tasks``
held-out tasks (the same seeds and sampling keys as train.py's evaluations, so the first 64 tasks
are the runs' own), at each ``--temperatures`` (0 = greedy), with the run's rollout settings.

Run: ``python -m bench.heldout runs/sokoban-rloo-istar-s0 runs/sokoban-rloo-s0 --warmstart --tasks 256``
Prints one line per (policy, temperature): successes / tasks, rate ± its binomial standard error,
and the fraction of invalid actions; then per policy its mean probability of the expert's action
along ``--tasks`` held-out expert episodes and its mean entropy at those actions' tokens
(warmstart.expert_probe: fixed contexts, so a change is the policy's own, not its states'). ``--random`` adds the success
of uniformly random actions on the same tasks, the floor a policy that learned anything beats.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from config import Config, saved_config
from envs import scripted_play
from replay import load_run
from train import env_factory, evaluate, resolve_device
from warmstart import EVAL_SEED_BASE, cache_dir, cached_warm_start


def run_config(run_dir: Path, tasks: int, temperature: float) -> Config:
    """The run's saved config with the evaluation's task count and temperature."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise SystemExit(f"bench.heldout: {run_dir} has no config.json (not a train.py run folder)")
    return dataclasses.replace(Config(**saved_config(path)), eval_tasks=tasks, eval_temperature=temperature)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders written by train.py (their final policy, or the checkpoint of an unfinished run)")
    p.add_argument("--tasks", type=int, default=256, help="held-out tasks per evaluation")
    p.add_argument("--temperatures", default="0,0.4", help="comma-separated; 0 = greedy")
    p.add_argument("--warmstart", action="store_true", help="also evaluate the cached warm start of the first run's settings")
    p.add_argument("--random", action="store_true", help="also play uniformly random actions on the same tasks (the floor to beat)")
    args = p.parse_args(argv)
    if args.tasks < 1:
        raise SystemExit(f"bench.heldout --tasks: expected a positive integer, got {args.tasks}")
    temps = [float(t) for t in args.temperatures.split(",")]
    runs = [Path(r) for r in args.runs]
    cfg0 = run_config(runs[0], args.tasks, temps[0])
    device = resolve_device(cfg0)
    targets = []
    if args.warmstart:
        _, model, _, tok, _ = load_run(runs[0], device)  # the run's architecture and tokenizer
        if not (cache_dir(cfg0, tok) / "policy.pt").is_file():
            raise SystemExit(f"bench.heldout --warmstart: no cached warm start for {runs[0]}'s settings under "
                             f"{cfg0.out_dir}/.warmstart (run it from the folder the run was started in)")
        cached_warm_start(model, tok, env_factory(cfg0), cfg0, device)  # loads the cached weights
        targets.append(("warm start", runs[0], model, tok))
    for r in runs:
        _, model, _, tok, which = load_run(r, device)
        print(f"{r.name}: {which}")
        targets.append((r.name, r, model, tok))
    for name, run_dir, model, tok in targets:
        model.eval()
        for temp in temps:
            cfg = run_config(run_dir, args.tasks, temp)
            key = "greedy" if temp == 0 else "sampled"
            m = evaluate(model, tok, env_factory(cfg), cfg, device, modes=(key,))
            rate = m[f"eval/success_{key}"]
            se = math.sqrt(rate * (1 - rate) / args.tasks)
            print(f"{name:32s} T={temp:<4g} success {round(rate * args.tasks):4d}/{args.tasks} = {rate:.3f} ± {se:.3f}"
                  f"   invalid actions {m[f'eval/invalid_frac_{key}']:.4f}", flush=True)
        m = evaluate(model, tok, env_factory(cfg), cfg, device, modes=("expert",))
        print(f"{name:32s} probability of the expert's action along {args.tasks} held-out expert episodes: "
              f"{m['eval/expert_prob']:.3f}; the policy's entropy at its tokens: {m['eval/expert_entropy']:.3f}", flush=True)
    if args.random:
        cfg = run_config(runs[0], args.tasks, 0.0)
        rate = random_success(env_factory(cfg), args.tasks)
        se = math.sqrt(rate * (1 - rate) / args.tasks)
        print(f"{'uniform random actions':32s}        success {round(rate * args.tasks):4d}/{args.tasks} = {rate:.3f} ± {se:.3f}")


def random_success(make, tasks: int, seed: int = 0) -> float:
    """Success rate on the first ``tasks`` held-out tasks of a policy that plays ``env.random_action``
    every step (Sokoban: one of the four moves, uniformly): the floor any learned policy must beat."""
    return scripted_play(make, "random", range(EVAL_SEED_BASE, EVAL_SEED_BASE + tasks), rng_seed=seed)["success"]


if __name__ == "__main__":
    main()
