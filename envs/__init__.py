"""Bundled text environments and their registry: ``make_env(name, **kwargs)``."""
from __future__ import annotations

import importlib

from envs.base import INVALID_PENALTY, Env, parse_action, wrap_action

# name -> "module:Class"; imported lazily so one env's import cost is paid only when used.
REGISTRY = {
    "sokoban": "envs.sokoban:SokobanEnv",
    "webshop": "envs.webshop:WebShopEnv",
    "sotopia": "envs.sotopia:SotopiaEnv",
    "locks": "envs.locks:LocksEnv",  # a diagnostic of step credit, not in the paper
}


def make_env(name: str, **kwargs) -> Env:
    """Build a registered env by name; unknown names list the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"make_env: unknown env {name!r}; known envs: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["Env", "INVALID_PENALTY", "REGISTRY", "make_env", "parse_action", "wrap_action"]
