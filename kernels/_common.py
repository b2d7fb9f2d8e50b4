"""Plumbing shared by the two kernel files: implementation dispatch, input checks, launch heuristics.

Nothing here touches the GPU at import (STYLE R7). The packed layout being checked is described in
``kernels/__init__.py``.
"""
from __future__ import annotations

import os

import torch
import triton

IMPLS = ("triton", "reference")
_override: str | None = None  # set by set_impl(); wins over the ISTAR_KERNELS environment variable


def set_impl(impl: str | None) -> None:
    """Force every kernel entry point to one implementation ("triton" / "reference"); None = automatic.

    ``set_impl("triton")`` on a CPU machine needs ``TRITON_INTERPRET=1`` in the environment before
    triton is first imported: every ``@triton.jit`` (ours and triton.language's own helpers) decides
    at decoration time whether it will be interpreted.
    """
    global _override
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")
    _override = impl


def resolve_impl(impl: str | None, like: torch.Tensor) -> str:
    """The implementation to run: explicit ``impl`` > ``set_impl`` > $ISTAR_KERNELS > CUDA-or-not."""
    if impl is None:
        impl = _override
    if impl is None:
        env = os.environ.get("ISTAR_KERNELS", "").strip().lower()
        impl = env if env not in ("", "auto") else None
    if impl is None:
        return "triton" if like.is_cuda else "reference"
    if impl not in IMPLS:
        raise ValueError(f"impl (or $ISTAR_KERNELS) must be one of {IMPLS} or None/'auto', got {impl!r}")
    return impl


def require_launchable(kernel, like: torch.Tensor) -> None:
    """A compiled Triton kernel needs CUDA tensors; on CPU only the interpreter can run it."""
    if not like.is_cuda and type(kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "the Triton path needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is first imported "
            f"(got tensors on {like.device}); use impl='reference' on CPU"
        )


def launch_config(num_items: int, num_segments: int) -> tuple[int, int]:
    """(BLOCK_SIZE, num_warps) for a loop over segments of average length num_items / num_segments.

    No autotune (STYLE R7): a block covers one average segment, so a ~50-token step is one masked
    iteration, clamped to [16, 1024]. Two warps for small blocks keep 64 warps resident per SM even
    with the 32-blocks-per-SM limit (H100: https://docs.nvidia.com/cuda/hopper-tuning-guide/);
    wider blocks get up to 8 warps, as Liger's calculate_settings does.
    """
    avg = num_items / max(num_segments, 1)
    block = triton.next_power_of_2(int(min(max(avg, 16), 1024)))
    num_warps = 2 if block <= 128 else (4 if block <= 512 else 8)
    return block, num_warps


# ---------------------------------------------------------------------------------------------
# Input checks. Shape/dtype checks are free; value checks (monotone offsets, totals) read a few
# numbers back from the device, so they run in the public entry points, not in the launchers.
# ---------------------------------------------------------------------------------------------

def check_float_vector(name: str, x, length: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 or not x.is_floating_point():
        raise ValueError(f"{name} must be a 1-D floating tensor, got shape {tuple(x.shape)} dtype {x.dtype}")
    if length is not None and x.shape[0] != length:
        raise ValueError(f"{name} must have length {length}, got {x.shape[0]}")


def check_offsets_dtype(name: str, cu) -> None:
    if not isinstance(cu, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of int32/int64 offsets, got {type(cu).__name__}")
    if cu.dim() != 1 or cu.dtype not in (torch.int32, torch.int64) or cu.shape[0] < 1:
        raise ValueError(
            f"{name} must be a non-empty 1-D int32 or int64 tensor of offsets, "
            f"got shape {tuple(cu.shape)} dtype {cu.dtype}"
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")


def check_offsets_values(checks: list[tuple[str, torch.Tensor, int | None, bool]]) -> list[tuple[int, int]]:
    """Validate several cu_seqlens tensors with ONE device->host read; return (last entry, longest
    segment) of each, which the launchers need for allocation and grid size.

    Each check is (name, cu, expected_last or None, strict): cu[0] must be 0, cu must be
    non-decreasing (strictly increasing if strict, i.e. no empty segment), and cu[-1] must equal
    expected_last when given.
    """
    stats = []
    for _, cu, _, strict in checks:
        d = cu.diff()
        ok = (d > 0).all() if strict else (d >= 0).all()
        longest = d.max().long() if d.numel() else torch.zeros((), dtype=torch.long, device=cu.device)
        stats.append(torch.stack([cu[0].long(), ok.long(), cu[-1].long(), longest]))
    values = torch.stack(stats).tolist()  # the single sync
    for (name, _, expected, strict), (first, ok, last, _) in zip(checks, values):
        if first != 0:
            raise ValueError(f"{name} must start at 0, got {first}")
        if not ok:
            rule = "strictly increasing (every segment non-empty)" if strict else "non-decreasing"
            raise ValueError(f"{name} must be {rule}")
        if expected is not None and last != expected:
            raise ValueError(f"{name} must end at {expected}, got {last}")
    return [(v[2], v[3]) for v in values]
