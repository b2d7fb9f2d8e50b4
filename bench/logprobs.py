"""Forward + backward throughput of ``model.token_logprobs`` with and without the shared-prefix forward.

Every training forward (old log-probs, PRM, policy, warm start) goes through ``token_logprobs``.
Its rows begin with the same system prompt (with ``--model`` or ``--system-prompt``; the Sokoban preset of
the default model leaves it out, config.LOCAL_MODEL_PRESETS); with a history window (the Sokoban preset keeps 2
past steps) every step after the first few is a row of its own, so that prompt is a large part of
all the tokens the update processes. ``share_prefix=True`` runs the prompt once per chunk of rows.
This bench lays out real noisy-expert episodes of an env exactly as a rollout does
(``warmstart.demo_rows``), pads them as a batch, and times one forward + backward of the default
model (random weights) over them both ways. On CUDA it runs under bf16 autocast.

Run: ``python -m bench.logprobs`` (``--env webshop``, ``--history-steps 0`` for whole-trajectory rows).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from config import PRESETS
from envs import REGISTRY, make_env
from model import build_default_model, shared_prefix_len, token_logprobs
from warmstart import DEMO_SEED_BASE, demo_rows, env_tokenizer, play_noisy_expert


def batch_of_rows(env_name: str, episodes: int, history_steps: int, vocab_size: int):
    """Right-padded rows of ``episodes`` demonstrations, windowed as the env's preset windows them."""
    make = lambda: make_env(env_name)  # noqa: E731
    preset = PRESETS.get(env_name, {})
    tok = env_tokenizer(make, vocab_size, n_seeds=50)
    env, rng, rows = make(), np.random.default_rng(0), []
    for k in range(episodes):
        first, turns, _ = play_noisy_expert(env, DEMO_SEED_BASE + k, 0.3, rng)
        rows += demo_rows(tok, env.system_prompt, first, turns, preset.get("max_context", 1024),
                          preset.get("max_action_tokens", 48), history_steps or None)
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)  # (R, L)
    am = torch.zeros(len(rows), width, dtype=torch.long)  # (R, L)
    act = torch.zeros(len(rows), width, dtype=torch.bool)  # (R, L)
    for r, (row, mask) in enumerate(rows):
        ids[r, :len(row)], am[r, :len(row)], act[r, :len(row)] = torch.tensor(row), 1, torch.tensor(mask)
    return tok, ids, am, act


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="sokoban", choices=list(REGISTRY))
    p.add_argument("--episodes", type=int, default=4, help="demonstration episodes in the batch")
    p.add_argument("--history-steps", type=int, default=-1, help="history window; -1 = the env preset's")
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    history = PRESETS.get(args.env, {}).get("history_steps", 0) if args.history_steps < 0 else args.history_steps
    tok, ids, am, act = batch_of_rows(args.env, args.episodes, history, vocab_size=1024)
    ids, am, act = ids.to(device), am.to(device), act.to(device)
    model = build_default_model(tok, args.size, seed=0).to(device)
    real = int(am.sum())
    shared = shared_prefix_len(ids[:16], am[:16], act[:16])  # the first chunk's (chunk_rows = 16)
    print(f"{args.env}, history {history or 'all'}: {ids.shape[0]} rows, {real:,} real tokens "
          f"(longest {ids.shape[1]}), {int(act.sum()):,} action tokens, shared prefix {shared} tokens; "
          f"{args.size} model on {device}")
    for share in (False, True) * args.repeats:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logp = token_logprobs(model, ids, am, act, share_prefix=share)
        logp.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"  share_prefix={share!s:5}  forward + backward {dt:7.3f} s   {real / dt:9,.0f} real tokens/s")
        model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
