"""
Implicit step reward: a segmented sum of token log-ratios over each step's action tokens.

Math (paper Eq. 1, paper.md E1):
    r_s = β · Σ_{t ∈ step s} ( log π_φ(y_t | ·) − log π_θold(y_t | ·) )
Where:
    β            `beta`, 0.05 in the paper
    log π_φ      `prm_logp` (T,): token log-probs under the implicit PRM (action tokens only)
    log π_θold   `old_logp` (T,): token log-probs under the sampling policy
    step s       tokens [step_cu[s], step_cu[s+1]) of the packed layout (see kernels/__init__.py)
Gradient (the trajectory-DPO loss trains π_φ through this op, paper Eq. 2):
    ∂L/∂prm_logp[t] = β · ∂L/∂r_{step(t)},   ∂L/∂old_logp[t] = −β · ∂L/∂r_{step(t)}

Why fuse: the torch reference upcasts both inputs, subtracts, builds a (T,) step-index vector and
scatters (≈ 5 passes over T). The kernel reads each log-prob once, in its storage dtype.
Napkin math, forward: reads 2·T log-probs (8·T bytes fp32, 4·T bf16) + (S+1) offsets, writes S
fp32. Backward: reads S grads + (S+1) offsets, writes T (or 2·T) grads. At ~50 tokens per step
the offsets and per-step values are ~2-4% of the traffic, so the op should run at copy bandwidth.
Design: one program per step looping over its tokens in BLOCK_SIZE chunks, the varlen pattern of
flash-linear-attention's cu_seqlens kernels; BLOCK_SIZE from launch_config (no autotune).

References:
    1) paper: https://arxiv.org/abs/2509.19199 (Eq. 1, Eq. 2)
    2) fla varlen kernels: https://github.com/fla-org/flash-linear-attention (fla/ops/utils/cumsum.py)
    3) Triton tutorials 02/05 for the launcher layout: https://triton-lang.org/main/getting-started/tutorials/
Deviations from the paper:
    1) None in the math. Steps with 0 action tokens are allowed and get r_s = 0.
Run `python kernels/step_logratio.py` to check against the reference (CPU: Triton interpreter)
and, on a GPU, benchmark.
"""
if __name__ == "__main__":  # run as a script: make `kernels` importable; without a GPU, interpret
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede `import triton`, just below

import torch
import triton
import triton.language as tl

from kernels._common import (check_float_vector, check_offsets_dtype, check_offsets_values,
                             check_same_device, launch_config, require_launchable, resolve_impl)


def step_logratio_reference(prm_logp: torch.Tensor, old_logp: torch.Tensor, step_cu: torch.Tensor,
                            beta: float) -> torch.Tensor:
    """The spec: plain torch, fp32 accumulation, differentiable by autograd. Returns (S,) fp32."""
    num_steps = step_cu.shape[0] - 1
    tokens_per_step = step_cu.diff()                                                  # (S,)
    step_of_token = torch.repeat_interleave(                                          # (T,)
        torch.arange(num_steps, device=step_cu.device), tokens_per_step, output_size=prm_logp.shape[0])
    diff = prm_logp.float() - old_logp.float()                                        # (T,)
    sums = torch.zeros(num_steps, dtype=torch.float32, device=diff.device).index_add(0, step_of_token, diff)
    return beta * sums                                                                # (S,) Eq. 1


@triton.jit
def _step_logratio_fwd_kernel(
    prm_logp_ptr,         # (T,) fp32/bf16, PRM token log-probs
    old_logp_ptr,         # (T,) fp32/bf16, sampling-policy token log-probs
    step_cu_ptr,          # (S+1,) int32/int64, step s owns tokens [step_cu[s], step_cu[s+1])
    step_reward_ptr,      # (S,) fp32 output
    beta,                 # fp32 scalar β
    BLOCK_SIZE: tl.constexpr,
):
    s = tl.program_id(0)                                   # one program per step
    tok_start = tl.load(step_cu_ptr + s)
    tok_end = tl.load(step_cu_ptr + s + 1)
    offs = tl.arange(0, BLOCK_SIZE)
    # Accumulate lane-wise in fp32 and reduce once at the end: one tree reduction per step.
    acc = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for block_start in range(tok_start, tok_end, BLOCK_SIZE):  # zero iterations for an empty step
        idx = block_start + offs
        mask = idx < tok_end                               # the last block of a step is partial
        prm = tl.load(prm_logp_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        old = tl.load(old_logp_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        acc += prm - old                                   # masked lanes add 0 - 0
    tl.store(step_reward_ptr + s, beta * tl.sum(acc, axis=0))  # Eq. 1


@triton.jit
def _step_logratio_bwd_kernel(
    grad_reward_ptr,      # (S,) any float, upstream gradient ∂L/∂r
    step_cu_ptr,          # (S+1,) int32/int64 step offsets
    grad_prm_ptr,         # (T,) output in prm_logp's dtype (unused unless HAS_GRAD_PRM)
    grad_old_ptr,         # (T,) output in old_logp's dtype (unused unless HAS_GRAD_OLD)
    beta,                 # fp32 scalar β
    HAS_GRAD_PRM: tl.constexpr,
    HAS_GRAD_OLD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    s = tl.program_id(0)                                   # one program per step, as forward
    tok_start = tl.load(step_cu_ptr + s)
    tok_end = tl.load(step_cu_ptr + s + 1)
    # Every token of the step gets the same gradient β·∂L/∂r_s, computed in fp32 as autograd does.
    g = beta * tl.load(grad_reward_ptr + s).to(tl.float32)
    vals = tl.zeros([BLOCK_SIZE], dtype=tl.float32) + g    # broadcast once, store many times
    offs = tl.arange(0, BLOCK_SIZE)
    for block_start in range(tok_start, tok_end, BLOCK_SIZE):
        idx = block_start + offs
        mask = idx < tok_end
        if HAS_GRAD_PRM:
            tl.store(grad_prm_ptr + idx, vals.to(grad_prm_ptr.dtype.element_ty), mask=mask)
        if HAS_GRAD_OLD:
            tl.store(grad_old_ptr + idx, (-vals).to(grad_old_ptr.dtype.element_ty), mask=mask)


def step_logratio_fwd_triton(prm_logp: torch.Tensor, old_logp: torch.Tensor, step_cu: torch.Tensor,
                             beta: float) -> torch.Tensor:
    """Forward launcher (no autograd). Returns (S,) fp32."""
    # (1) constraints that cost no device sync (values are checked in step_logratio)
    check_float_vector("prm_logp", prm_logp)
    check_float_vector("old_logp", old_logp, prm_logp.shape[0])
    check_offsets_dtype("step_cu", step_cu)
    check_same_device(prm_logp=prm_logp, old_logp=old_logp, step_cu=step_cu)
    require_launchable(_step_logratio_fwd_kernel, prm_logp)
    prm_logp, old_logp, step_cu = prm_logp.contiguous(), old_logp.contiguous(), step_cu.contiguous()
    num_tokens, num_steps = prm_logp.shape[0], step_cu.shape[0] - 1
    # (2) output
    step_reward = torch.zeros(num_steps, dtype=torch.float32, device=prm_logp.device)  # (S,)
    if num_steps == 0 or num_tokens == 0:
        return step_reward  # every step is empty: all sums are 0, nothing to launch
    # (3) grid and block, (4) launch
    block, num_warps = launch_config(num_tokens, num_steps)
    _step_logratio_fwd_kernel[(num_steps,)](prm_logp, old_logp, step_cu, step_reward, float(beta),
                                            BLOCK_SIZE=block, num_warps=num_warps)
    return step_reward


def step_logratio_bwd_triton(grad_reward: torch.Tensor, step_cu: torch.Tensor, beta: float, num_tokens: int,
                             prm_dtype: torch.dtype | None, old_dtype: torch.dtype | None):
    """Backward launcher: (grad_prm (T,) or None, grad_old (T,) or None); a None dtype skips that grad."""
    check_float_vector("grad_reward", grad_reward, step_cu.shape[0] - 1)
    check_offsets_dtype("step_cu", step_cu)
    require_launchable(_step_logratio_bwd_kernel, grad_reward)
    grad_reward, step_cu = grad_reward.contiguous(), step_cu.contiguous()
    device = grad_reward.device
    grad_prm = None if prm_dtype is None else torch.empty(num_tokens, dtype=prm_dtype, device=device)  # (T,)
    grad_old = None if old_dtype is None else torch.empty(num_tokens, dtype=old_dtype, device=device)  # (T,)
    num_steps = step_cu.shape[0] - 1
    if num_tokens == 0 or num_steps == 0 or (grad_prm is None and grad_old is None):
        return grad_prm, grad_old
    block, num_warps = launch_config(num_tokens, num_steps)
    dummy = grad_prm if grad_prm is not None else grad_old  # never written when its flag is off
    _step_logratio_bwd_kernel[(num_steps,)](
        grad_reward, step_cu, dummy if grad_prm is None else grad_prm, dummy if grad_old is None else grad_old,
        float(beta), HAS_GRAD_PRM=grad_prm is not None, HAS_GRAD_OLD=grad_old is not None,
        BLOCK_SIZE=block, num_warps=num_warps)
    return grad_prm, grad_old


def step_logratio_triton(prm_logp: torch.Tensor, old_logp: torch.Tensor, step_cu: torch.Tensor,
                         beta: float) -> torch.Tensor:
    """Differentiable Triton path: both kernels wrapped in an autograd.Function. (S,) fp32."""
    return _StepLogratioFunction.apply(prm_logp, old_logp, step_cu, beta)


def step_logratio(prm_logp: torch.Tensor, old_logp: torch.Tensor, step_cu: torch.Tensor, beta: float,
                  impl: str | None = None) -> torch.Tensor:
    """Implicit step rewards r (S,) fp32, paper Eq. 1. Same signature as the reference, plus impl.

    impl: "triton", "reference", or None (set_impl / $ISTAR_KERNELS, else Triton iff on CUDA).
    Differentiable w.r.t. prm_logp and old_logp in both implementations.
    """
    check_float_vector("prm_logp", prm_logp)
    check_float_vector("old_logp", old_logp, prm_logp.shape[0])
    check_offsets_dtype("step_cu", step_cu)
    check_same_device(prm_logp=prm_logp, old_logp=old_logp, step_cu=step_cu)
    check_offsets_values([("step_cu", step_cu, prm_logp.shape[0], False)])
    if resolve_impl(impl, prm_logp) == "triton":
        return step_logratio_triton(prm_logp, old_logp, step_cu, beta)
    return step_logratio_reference(prm_logp, old_logp, step_cu, beta)


class _StepLogratioFunction(torch.autograd.Function):
    """Forward and backward are both Triton kernels; grads come back in the inputs' dtypes."""

    @staticmethod
    def forward(ctx, prm_logp, old_logp, step_cu, beta):
        ctx.save_for_backward(step_cu)
        ctx.beta, ctx.num_tokens = float(beta), prm_logp.shape[0]
        ctx.dtypes = (prm_logp.dtype, old_logp.dtype)
        return step_logratio_fwd_triton(prm_logp, old_logp, step_cu, beta)  # (S,)

    @staticmethod
    def backward(ctx, grad_reward):
        (step_cu,) = ctx.saved_tensors
        need_prm, need_old = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_prm, grad_old = step_logratio_bwd_triton(
            grad_reward, step_cu, ctx.beta, ctx.num_tokens,
            ctx.dtypes[0] if need_prm else None, ctx.dtypes[1] if need_old else None)
        return grad_prm, grad_old, None, None


if __name__ == "__main__":
    from bench.kernels import copy_bandwidth, print_table, random_packed_batch, time_providers

    # 1) correctness: Triton == reference, forward and backward, on a random ragged batch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for dtype in (torch.float32, torch.bfloat16):
        b = random_packed_batch(num_tokens=3000 if device == "cpu" else 200_000, device=device, seed=0)
        prm = b["prm_logp"].to(dtype).requires_grad_()
        old = b["old_logp"].to(dtype).requires_grad_()
        ref = step_logratio_reference(prm, old, b["step_cu"], 0.05)
        tri = step_logratio(prm, old, b["step_cu"], 0.05, impl="triton")
        torch.testing.assert_close(tri, ref, atol=1e-5, rtol=1e-5)
        dy = torch.randn_like(ref)
        ref_grads = torch.autograd.grad(ref, (prm, old), dy)
        tri_grads = torch.autograd.grad(tri, (prm, old), dy)
        # Exact on a GPU; Triton's interpreter truncates fp32 -> bf16 instead of rounding to nearest
        # (triton/runtime/interpreter.py, _convert_float), so on CPU bf16 grads agree to 1 bf16 ulp.
        rtol = 2**-7 if (dtype == torch.bfloat16 and device == "cpu") else 0.0
        for r, t in zip(ref_grads, tri_grads):
            assert t.dtype == dtype
            torch.testing.assert_close(t, r, atol=0, rtol=rtol)
    print(f"step_logratio: Triton matches the reference on {device} (fp32, bf16; forward, backward).")
    if device == "cpu":
        print("The benchmark needs a CUDA GPU; skipped.")
    else:
        # 2) benchmark: bytes that must move for each direction (fp32 log-probs, int32 offsets)
        copy_gbps = copy_bandwidth()
        rows = []
        for target in (1 << 20, 1 << 24):
            b = random_packed_batch(num_tokens=target, device=device, seed=1)
            prm, old, cu = b["prm_logp"], b["old_logp"], b["step_cu"]
            T, S = prm.shape[0], cu.shape[0] - 1
            fwd_bytes = 2 * T * 4 + (S + 1) * cu.element_size() + S * 4    # read 2·T logp + offsets, write S
            bwd_bytes = S * 4 + (S + 1) * cu.element_size() + 2 * T * 4    # read S grads + offsets, write 2·T
            dy = torch.randn(S, device=device)
            compiled = torch.compile(step_logratio_reference, dynamic=True)
            prm_req, old_req = prm.clone().requires_grad_(), old.clone().requires_grad_()
            ref_out = step_logratio_reference(prm_req, old_req, cu, 0.05)  # graph kept for the eager backward
            providers = {
                "triton fwd": (lambda: step_logratio_fwd_triton(prm, old, cu, 0.05), fwd_bytes),
                "triton bwd": (lambda: step_logratio_bwd_triton(dy, cu, 0.05, T, prm.dtype, old.dtype), bwd_bytes),
                "torch eager fwd": (lambda: step_logratio_reference(prm, old, cu, 0.05), fwd_bytes),
                "torch eager bwd": (lambda: torch.autograd.grad(ref_out, (prm_req, old_req), dy, retain_graph=True),
                                    bwd_bytes),
                "torch.compile fwd": (lambda: compiled(prm, old, cu, 0.05), fwd_bytes),
            }
            rows += time_providers(providers, copy_gbps, label=f"T={T:,} S={S:,}")
        print_table("step_logratio", rows, copy_gbps)
