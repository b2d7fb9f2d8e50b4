"""Which key a Locks policy picks for each carving: does it read the carving, or one key for all?

On Locks (envs/locks.py) the rule maps each carving to one of 4 keys. ``eval/expert_prob``, the
mean probability of the right key, stays at 0.25 both for a policy that spreads its mass evenly and
for one that has learned a wrong key per carving, so it cannot tell a policy that ignores the
carving from one that reads it wrongly. This probe asks the policy of each run folder (its latest
``checkpoint.pt``), and with ``--warmstart`` the cached warm start of the first run's settings, for
P(key | carving) at door 1 of every carving, each key's action scored as the rollouts score it
(the sum of its tokens' log-probs in the context the policy acts in), and prints per policy:

    p_right       mean over carvings of P(the rule's key)
    p_keys        mean over carvings of Σ_k P(k): the mass on the 4 valid answers
    key_entropy   mean entropy of P(k | carving) renormalised over the keys (ln 4 = 1.386: uniform)
    max_p         mean of max_k P(k | carving), renormalised
    argmax_right  fraction of carvings whose most likely key is the rule's
    same_argmax   fraction of carvings whose most likely key is the most common argmax (1: one key for all)

Run: ``python -m bench.locks_keys runs/locks-rloo-istar-s0 --warmstart``
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench.heldout import run_config
from envs import wrap_action
from envs.locks import KEYS, RULE
from model import build_default_model
from train import env_factory
from warmstart import action_probs, cache_dir, demo_rows


def key_table(policy, tokenizer, cfg) -> np.ndarray:
    """(carvings, 4) P(key | carving) at door 1, in env.shapes order."""
    env = env_factory(cfg)()
    env.reset(seed=0)
    table = []
    for carving in env.shapes:
        env.carvings[0], env.steps = carving, 0
        first = env._observation()
        rows = [demo_rows(tokenizer, env.system_prompt, first, [(wrap_action(k), "")], cfg.max_context,
                          cfg.max_action_tokens, cfg.history_steps or None)[0] for k in KEYS]
        table.append(action_probs(policy, rows, tokenizer.pad_token_id, "cpu"))  # one row per key
    return np.array(table)  # (C, 4)


def key_stats(table: np.ndarray, shapes: list[str]) -> dict:
    right = np.array([KEYS.index(RULE[c]) for c in shapes])  # (C,)
    q = table / table.sum(1, keepdims=True)  # (C, 4) over the keys
    top = q.argmax(1)
    return {"p_right": float(table[np.arange(len(q)), right].mean()), "p_keys": float(table.sum(1).mean()),
            "key_entropy": float(-(q * np.log(q)).sum(1).mean()), "max_p": float(q.max(1).mean()),
            "argmax_right": float((top == right).mean()),
            "same_argmax": Counter(top.tolist()).most_common(1)[0][1] / len(top)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="Locks run folders written by train.py (their checkpoint.pt)")
    p.add_argument("--warmstart", action="store_true", help="also probe the cached warm start of the first run's settings")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer
    for i, run in enumerate(Path(r) for r in args.runs):
        cfg = run_config(run, 1, 0.0)
        if cfg.env != "locks" or not (run / "checkpoint.pt").is_file():
            raise SystemExit(f"bench.locks_keys: {run} is not a Locks run folder with a checkpoint.pt")
        tok = AutoTokenizer.from_pretrained(run / "tokenizer", local_files_only=True)
        policy = build_default_model(tok, cfg.model_size, seed=0).eval()
        shapes = env_factory(cfg)().shapes
        states = [("warm start", cache_dir(cfg, tok) / "policy.pt")] if args.warmstart and i == 0 else []
        for name, path in states + [(str(run), run / "checkpoint.pt")]:
            if not path.is_file():
                raise SystemExit(f"bench.locks_keys: {path} not found (the warm start cache of {run}'s settings)")
            state = torch.load(path, map_location="cpu", weights_only=False)
            policy.load_state_dict(state.get("policy", state))
            stats = key_stats(key_table(policy, tok, cfg), shapes)
            print(name, " ".join(f"{k} {v:.3f}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    main()
