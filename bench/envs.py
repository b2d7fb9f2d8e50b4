"""Env throughput: reset 1,000 envs, then step each of them once, per bundled env (one CPU core).

    python -m bench.envs

The rollout engine steps every live episode once per turn in a Python loop, so this is the env
cost of one turn at batch 1,000. Two kinds of step: the expert's action and a random one.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from envs import REGISTRY, make_env, wrap_action


def bench_env(name: str, n: int = 1000) -> dict:
    envs = [make_env(name) for _ in range(n)]
    t0 = time.perf_counter()
    for i, env in enumerate(envs):
        env.reset(seed=i)
    reset_ms = (time.perf_counter() - t0) * 1e3
    out = {"env": name, "reset_ms": reset_ms}
    rng = np.random.default_rng(0)
    for kind in ("expert", "random"):
        for i, env in enumerate(envs):
            env.reset(seed=i)
        actions = [wrap_action(env.expert_action() if kind == "expert" else env.random_action(rng)) for env in envs]
        t0 = time.perf_counter()
        for env, action in zip(envs, actions):
            env.step(action)
        out[f"{kind}_step_ms"] = (time.perf_counter() - t0) * 1e3
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| env | reset 1,000 envs (ms) | 1,000 expert steps (ms) | 1,000 random steps (ms) |")
    print("|---|---|---|---|")
    for name in REGISTRY:
        r = bench_env(name)
        print(f"| {name} | {r['reset_ms']:.1f} | {r['expert_step_ms']:.1f} | {r['random_step_ms']:.1f} |")
