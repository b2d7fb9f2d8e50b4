"""Shared benchmark harness for kernels/*.py, and one command that runs both kernel benchmarks.

Each kernel file's `__main__` checks Triton against its reference, then (on a GPU) times its
providers with this harness: a random packed batch shaped like the paper's runs (G = 8 rollouts per
task, ~15 steps per trajectory, ~50 action tokens per step), the device-to-device copy bandwidth as
the roofline, and a markdown table of ms, effective GB/s and the fraction of that floor.

    effective GB/s   = bytes that must move / measured time
    fraction of floor = (bytes / copy bandwidth) / measured time      (1.0 = as fast as a memcpy)

Run: `python bench/kernels.py` (both kernels), or `python kernels/step_logratio.py` for one.
Without CUDA it runs the correctness checks under TRITON_INTERPRET=1 and says the timing needs a GPU.
"""
from __future__ import annotations

import math
import os
import runpy
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_packed_batch(num_tokens: int, device="cpu", seed: int = 0, group_size: int = 8,
                        mean_steps: int = 15, mean_step_tokens: int = 50) -> dict:
    """A random batch in the packed layout of kernels/__init__.py with about num_tokens tokens.

    Steps per trajectory ~ U{1, 2·mean_steps − 1}, tokens per step ~ U{0, 2·mean_step_tokens − 1}
    (so empty and 1-token steps occur), full groups of group_size; int32 offsets.
    """
    gen = torch.Generator().manual_seed(seed)
    num_trajs = max(1, math.ceil(num_tokens / (mean_steps * mean_step_tokens) / group_size)) * group_size
    steps_per_traj = torch.randint(1, 2 * mean_steps, (num_trajs,), generator=gen)          # (N,)
    num_steps = int(steps_per_traj.sum())
    tokens_per_step = torch.randint(0, 2 * mean_step_tokens, (num_steps,), generator=gen)   # (S,)
    T = int(tokens_per_step.sum())

    def cu(lengths):  # lengths (K,) -> offsets (K+1,) int32
        return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(torch.int32)

    prm_logp = -3.0 * torch.rand(T, generator=gen)                                          # (T,)
    batch = {
        "prm_logp": prm_logp,
        "old_logp": prm_logp + 0.1 * torch.randn(T, generator=gen),                         # (T,)
        "step_reward": torch.randn(num_steps, generator=gen),                               # (S,)
        "episode_adv": torch.randn(num_trajs, generator=gen),                               # (N,)
        "step_cu": cu(tokens_per_step),                                                     # (S+1,)
        "traj_cu": cu(steps_per_traj),                                                      # (N+1,)
        "group_cu": cu(torch.full((num_trajs // group_size,), group_size)),                 # (M+1,)
    }
    return {k: v.to(device) for k, v in batch.items()}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted), the roofline for these ops."""
    import triton

    x = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    ms = triton.testing.do_bench(lambda: torch.empty_like(x).copy_(x))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def time_providers(providers: dict, copy_gbps: float, label: str) -> list[tuple]:
    """Time each provider {name: (fn, bytes)} with do_bench; one row per provider, errors kept."""
    import triton

    rows = []
    for name, (fn, nbytes) in providers.items():
        try:
            fn()  # warm-up outside the timing: JIT / torch.compile happen here
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(fn)
        except Exception as exc:  # e.g. torch.compile failing on this torch/triton pair: report, go on
            note = " ".join(f"{type(exc).__name__}: {exc}".split())[:80]  # one line, for the table
            rows.append((label, name, float("nan"), float("nan"), float("nan"), note))
            continue
        floor_ms = nbytes / (copy_gbps * 1e9) * 1e3
        rows.append((label, name, ms, nbytes / (ms * 1e-3) / 1e9, floor_ms / ms, ""))
    return rows


def print_table(op: str, rows: list[tuple], copy_gbps: float) -> None:
    print(f"\n### {op} on {torch.cuda.get_device_name()} (copy bandwidth {copy_gbps:.0f} GB/s)\n")
    print("| batch | provider | ms | GB/s | fraction of floor | note |")
    print("|---|---|---:|---:|---:|---|")
    for label, name, ms, gbps, frac, note in rows:
        print(f"| {label} | {name} | {ms:.4f} | {gbps:.0f} | {frac:.2f} | {note} |")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
    for op in ("step_logratio", "segment_normalize"):
        runpy.run_path(os.path.join(ROOT, "kernels", f"{op}.py"), run_name="__main__")
