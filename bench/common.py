"""What the probes in bench/ share: their command line (own flags, then ``--`` and train.py's) and
the warm-started policy that ``train.py`` with the same flags starts RL from."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from train import build_models, env_factory, resolve_device
from warmstart import cached_warm_start


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``[own flags] -- [train.py flags]`` -> (own, train); without ``--`` every flag is the probe's."""
    return (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def warm_started_policy(cfg):
    """(tokenizer, policy in eval mode, env factory, device): the model built as train.py builds it,
    warm-started from the cache (computed if missing) unless ``--model`` loads a pretrained LM."""
    device = resolve_device(cfg)
    make = env_factory(cfg)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, policy, _, _, _ = build_models(cfg, make, device, Path(tmp))
    if not cfg.model:
        print(f"warm start: {cached_warm_start(policy, tokenizer, make, cfg, device)}")
    return tokenizer, policy.eval(), make, device
