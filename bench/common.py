"""What the probes in bench/ share: their command line (own flags, then ``--`` and train.py's),
the warm-started policy that ``train.py`` with the same flags starts RL from, and how the episodes
of a set of batches were lost."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from credit import safe_move_labels
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


def fatal_moves(batches: list) -> str:
    """How the lost episodes of ``batches`` (batch.Batch objects) were lost: how many made a move
    into a dead end (credit.py ``safe_move_labels``), and at which step (1 = the first move). Empty
    for envs without dead-end labels."""
    lost = with_fatal = 0
    at = []
    for batch in batches:
        fatal = (safe_move_labels(batch) == 0).tolist()  # (S,)
        for i in range(batch.num_traj):
            s, e = int(batch.traj_cu[i]), int(batch.traj_cu[i + 1])
            if not bool(batch.won[i]):
                lost += 1
                steps = [t - s + 1 for t in range(s, e) if fatal[t]]
                with_fatal += bool(steps)
                at += steps[:1]
    if not at:
        return ""
    at.sort()
    return (f"lost episodes: {lost}, {with_fatal} of them after a move into a dead end, made at step "
            f"{at[len(at) // 4]} / {at[len(at) // 2]} / {at[3 * len(at) // 4]} (quartiles)")
