"""Bundled text environments and their registry: ``make_env(name, **kwargs)``."""
from __future__ import annotations

import importlib

import numpy as np

from envs.base import INVALID_PENALTY, Env, parse_action, wrap_action

# name -> "module:Class"; imported lazily so one env's import cost is paid only when used.
REGISTRY = {
    "sokoban": "envs.sokoban:SokobanEnv",
    "webshop": "envs.webshop:WebShopEnv",
    "sotopia": "envs.sotopia:SotopiaEnv",
    "locks": "envs.locks:LocksEnv",  # a diagnostic of step credit, not in the paper
}

EVAL_SEED_BASE = 2**31  # held-out tasks (train.py's evaluations): seeds >= 2**31; training tasks are drawn below 2**31


def make_env(name: str, **kwargs) -> Env:
    """Build a registered env by name; unknown names list the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"make_env: unknown env {name!r}; known envs: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def scripted_play(make, policy: str, seeds, rng_seed: int = 0) -> dict:
    """Play one episode per task seed with a scripted policy, ``"expert"`` (``env.expert_action``)
    or ``"random"`` (``env.random_action``, the floor a learned policy must beat). ``make`` builds an
    env (e.g. ``lambda: make_env("webshop")``). Returns the success rate, mean final ``info["score"]``
    and mean episode length over the seeds."""
    if policy not in ("expert", "random"):
        raise ValueError(f"scripted_play: policy must be 'expert' or 'random', got {policy!r}")
    env, rng = make(), np.random.default_rng(rng_seed)
    wins, scores, steps = [], [], []
    for seed in seeds:
        env.reset(seed=seed)
        done, info, n = False, {}, 0
        while not done:
            action = env.expert_action() if policy == "expert" else env.random_action(rng)
            _, _, done, info = env.step(wrap_action(action))
            n += 1
        wins.append(bool(info.get("won", False)))
        scores.append(float(info.get("score", 0.0)))
        steps.append(n)
    if not wins:
        raise ValueError("scripted_play: seeds is empty")
    return {"success": float(np.mean(wins)), "score": float(np.mean(scores)), "steps": float(np.mean(steps))}


__all__ = ["EVAL_SEED_BASE", "Env", "INVALID_PENALTY", "REGISTRY", "make_env", "parse_action", "scripted_play", "wrap_action"]
