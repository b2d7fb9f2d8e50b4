"""Throughput of ``rollout.rollout`` next to plain Hugging Face ``model.generate``.

Measures generated tokens/s and env steps/s of our batched multi-turn rollout for the default
model (``model.build_default_model(size)``, random weights) at batch 1, 64 and 512, with each
cache rollout.py can drive (engine.py's static engine, with and without CUDA graphs on CUDA, and
kvcache.py's HF forward), and of ``model.generate`` with a 128-token prompt and 64 new tokens,
one episode at a time and batched. Every configuration runs once untimed first (CUDA graphs are
captured then). On CUDA it runs in bf16; on CPU it falls back to small batches and fp32 and says so.

The bench env shows a ~128-token observation and lasts ``--steps`` steps whatever the action,
so the rollout exercises prefill, decode, finished rows leaving and observation appends.
Random weights rarely emit ``</action>``/EOS, so most actions run to ``max_action_tokens``;
the generated-token counts come from the trajectories, never assumed.

Run: ``python -m bench.rollout`` (add ``--batches 1,8 --size tiny`` for a quick CPU look).
``--profile N`` then prints where one more static-engine rollout at the largest batch spends its
host time (cProfile, the N functions of largest cumulative time): on a GPU, time waiting for the
device shows up at the host syncs (``.tolist()``), Python and launch costs everywhere else.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
import torch

from envs.base import Env
from model import build_default_model, build_tokenizer, format_prompt
from rollout import rollout

WORDS = "box wall floor target player push left right up down room step goal move".split()


class BenchEnv(Env):
    """A fixed-length text observation, ``steps`` steps per episode, every action accepted."""

    name, system_prompt = "bench", "Play. Answer with <action>...</action>."

    def __init__(self, steps: int = 2, obs_words: int = 110):
        super().__init__()
        self.max_steps, self.obs_words = steps, obs_words

    def _obs(self) -> str:
        rng = np.random.default_rng((self.seed, self.steps))
        return " ".join(rng.choice(WORDS, self.obs_words))

    def _reset(self, seed):
        return self._obs()

    def _step(self, action):
        return self._obs(), 0.0, False, {"valid_action": True}

    def expert_action(self):
        return "up"

    def random_action(self, rng):
        return str(rng.choice(["up", "down"]))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_rollout(model, tok, batch, steps, new_tokens, device, engine="auto", graphs=True):
    make = lambda: BenchEnv(steps)  # noqa: E731
    _sync(device)
    t0 = time.perf_counter()
    trajs = rollout(model, tok, make, list(range(batch)), 1, temperature=1.0, max_action_tokens=new_tokens,
                    seed=0, device=device, engine=engine, cuda_graphs=graphs)
    _sync(device)
    dt = time.perf_counter() - t0
    return dict(tokens=sum(len(t.logp) for t in trajs), steps=sum(t.num_steps for t in trajs), episodes=batch, s=dt)


def bench_generate(model, tok, prompt, batch, new_tokens, device, one_at_a_time):
    ids = torch.tensor([prompt] * (1 if one_at_a_time else batch), device=device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, pad_token_id=tok.pad_token_id)
    n_calls = batch if one_at_a_time else 1
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_calls):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    _sync(device)
    dt = time.perf_counter() - t0
    return dict(tokens=batch * new_tokens, steps=batch, episodes=batch, s=dt)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", help="model size from model.MODEL_SIZES")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,64,512 on CUDA, 1,8 on CPU)")
    p.add_argument("--steps", type=int, default=2, help="env steps per rollout episode")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens per action / per generate call")
    p.add_argument("--serial-cap", type=int, default=16, help="episodes timed for one-at-a-time generate")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the table, profile one static-engine rollout at the largest batch: top N functions")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    batches = [int(b) for b in (args.batches or ("1,64,512" if cuda else "1,8")).split(",")]
    env = BenchEnv(args.steps)
    texts = [env.system_prompt] + [env.reset(s) for s in range(50)] + ["<action>up</action>"]
    tok = build_tokenizer(texts, vocab_size=1024)
    model = build_default_model(tok, args.size, seed=0).to(device=device, dtype=dtype).eval()
    prompt = format_prompt(tok, env.system_prompt, env.reset(0))
    prompt = (prompt * (128 // len(prompt) + 1))[:128]  # exactly 128 tokens for generate
    n_params = sum(q.numel() for q in model.parameters())
    where = torch.cuda.get_device_name() if cuda else "CPU (no CUDA found: small batches, fp32)"
    print(f"device: {where}; model '{args.size}' {n_params / 1e6:.2f} M params, {dtype}; "
          f"rollout prompt {len(format_prompt(tok, env.system_prompt, env.reset(0)))} tokens, "
          f"{args.steps} steps x up to {args.new_tokens} action tokens; generate: 128-token prompt, "
          f"{args.new_tokens} new tokens")
    ours = [("rollout, static engine" + (" + CUDA graphs" if cuda else ""), "static", True),
            ("rollout, HF forward + cache", "hf", False)]
    if cuda:
        ours.insert(1, ("rollout, static engine, no graphs", "static", False))
    for b in batches:  # warm-up: allocator, kernels, and the CUDA graphs of every bucket this batch will use
        for _, engine, graphs in ours:
            bench_rollout(model, tok, b, args.steps, args.new_tokens, device, engine, graphs)

    print("\n| method | batch | episodes | generated tokens | seconds | tokens/s | env steps/s |")
    print("|---|---|---|---|---|---|---|")
    for b in batches:
        rows = [(name, bench_rollout(model, tok, b, args.steps, args.new_tokens, device, engine, graphs))
                for name, engine, graphs in ours]
        rows.append(("generate, batched", bench_generate(model, tok, prompt, b, args.new_tokens, device, False)))
        serial = min(b, args.serial_cap)
        rows.append((f"generate, one at a time ({serial} timed)",
                     bench_generate(model, tok, prompt, serial, args.new_tokens, device, True)))
        for name, r in rows:
            steps = f"{r['steps'] / r['s']:.1f}" if name.startswith("rollout") else "-"
            rate = r["tokens"] / r["s"]
            print(f"| {name} | {b} | {r['episodes']} | {r['tokens']} | {r['s']:.2f} | {rate:.0f} | {steps} |")
    if args.profile:
        name, engine, graphs = ours[0]
        print(f"\nprofile: {name}, batch {batches[-1]} (host time; cumulative, top {args.profile})")
        prof = cProfile.Profile()
        prof.runcall(bench_rollout, model, tok, batches[-1], args.steps, args.new_tokens, device, engine, graphs)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
