"""
Step-level advantage and combined token advantage: group-wise standardisation of step rewards,
then broadcast of A^E + α·A^S to every action token of the step.

Math (paper Eq. 4 and Eq. 5, paper.md E6 and E7):
    R_g      = { r_s : s a step of any trajectory of group g }   (pooled across step indices)
    μ_g      = mean(R_g),   σ_g = unbiased std of R_g (Bessel, n_g − 1), σ_g = 0 when n_g = 1
    A^S_s    = (r_s − μ_g) / (σ_g + ε)                                       (Eq. 4)
    A_t      = A^E_{traj(t)} + α · A^S_{step(t)}   for every action token t   (Eq. 5)
Where:
    r_s `step_reward` (S,), A^E `episode_adv` (N,), α `alpha` (1.0 in the paper), ε `eps` (1e-6),
    A^S `step_adv` (S,), A `token_adv` (T,); the offsets step_cu / traj_cu / group_cu are the packed
    layout of kernels/__init__.py. Outputs are fp32 and carry no gradient (advantages are constants).
Numerics: μ_g and σ_g are computed on r_s − r_{first step of g} (the "shifted data" variance
algorithm, https://en.wikipedia.org/wiki/Algorithms_for_calculating_variance#Computing_shifted_data)
in two passes. Mathematically identical; it makes a group of equal rewards give exactly 0, never a
rounding residue divided by ε, and it keeps large common offsets from eating fp32 digits.

Why fuse: the torch reference needs ~15 small kernels (segment ids, two index_adds, gathers,
repeat_interleave) and writes (S,)/(M,) intermediates. The kernel is one launch with grid
(M, max group size): program (g, j) owns trajectory group_cu[g] + j, recomputes its group's μ_g and
σ_g from the group's step rewards (two passes), then writes A^S for its steps and A for its tokens.
Napkin math: writes 4·T (token_adv) + 4·S (step_adv) bytes; reads (S+1) step offsets, (N+1) + (M+1)
trajectory/group offsets, 4·N of A^E, and 4·S·(2·G + 1) bytes of step rewards, of which only 4·S
must come from DRAM (the re-reads of a group's ~G·15 floats hit L2). With ~50 tokens per step the
4·T write dominates: the floor is one write of T floats, so the op should run near copy bandwidth.

References:
    1) paper: https://arxiv.org/abs/2509.19199 (Eq. 4, Eq. 5)
    2) released code (CharacterRL-iStar on verl-agent), for intent only: see paper.md E6
Deviations from the paper:
    1) σ_g + ε in the denominator (Eq. 4 divides by σ_g alone), and σ_g := 0 for a 1-step group:
       a group whose rewards are all equal gets A^S = 0 instead of 0/0.
    2) The released code takes the group mean over one step per trajectory; we pool all steps of the
       group, as Eq. 4 is written (paper.md E6).
Run `python kernels/segment_normalize.py` to check against the reference (CPU: Triton
interpreter) and, on a GPU, benchmark.
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


def segment_normalize_reference(step_reward, episode_adv, step_cu, traj_cu, group_cu, alpha: float,
                                eps: float = 1e-6):
    """The spec: vectorised torch in fp32. Returns (token_adv (T,) fp32, step_adv (S,) fp32)."""
    device = step_reward.device
    num_steps, num_trajs, num_groups = step_reward.shape[0], episode_adv.shape[0], group_cu.shape[0] - 1
    r = step_reward.detach().float()                                                      # (S,)
    traj_of_step = torch.repeat_interleave(                                               # (S,)
        torch.arange(num_trajs, device=device), traj_cu.diff(), output_size=num_steps)
    group_of_traj = torch.repeat_interleave(                                              # (N,)
        torch.arange(num_groups, device=device), group_cu.diff(), output_size=num_trajs)
    group_of_step = group_of_traj[traj_of_step]                                           # (S,)
    first_step = traj_cu[group_cu[:-1]]                                                   # (M,)
    n = (traj_cu[group_cu[1:]] - first_step).float()                                      # (M,) steps per group
    # Shift by the group's first reward (see Numerics above), then two passes: mean, then variance.
    d = r - r[first_step][group_of_step]                                                  # (S,)
    mean = torch.zeros(num_groups, device=device).index_add(0, group_of_step, d) / n      # (M,)
    dev = d - mean[group_of_step]                                                         # (S,)
    var = torch.zeros(num_groups, device=device).index_add(0, group_of_step, dev * dev)   # (M,)
    std = torch.sqrt(var / (n - 1).clamp(min=1))   # (M,) Bessel; a 1-step group has dev = 0 -> std 0
    step_adv = dev / (std + eps)[group_of_step]                                           # (S,) Eq. 4
    step_total = episode_adv.detach().float()[traj_of_step] + alpha * step_adv            # (S,) Eq. 5
    token_adv = torch.repeat_interleave(step_total, step_cu.diff())                       # (T,)
    return token_adv, step_adv


@triton.jit
def _segment_normalize_kernel(
    step_reward_ptr,      # (S,) fp32/bf16 step rewards r_s
    episode_adv_ptr,      # (N,) fp32/bf16 episode advantages A^E_i
    step_cu_ptr,          # (S+1,) int32/int64, step s owns tokens [step_cu[s], step_cu[s+1])
    traj_cu_ptr,          # (N+1,) int32/int64, trajectory i owns steps [traj_cu[i], traj_cu[i+1])
    group_cu_ptr,         # (M+1,) int32/int64, group g owns trajectories [group_cu[g], group_cu[g+1])
    token_adv_ptr,        # (T,) fp32 output A_t
    step_adv_ptr,         # (S,) fp32 output A^S_s
    alpha,                # fp32 scalar α
    eps,                  # fp32 scalar ε
    BLOCK_S: tl.constexpr,  # step rewards per iteration of the statistics loops
    BLOCK_T: tl.constexpr,  # tokens per iteration of the broadcast loop
):
    g = tl.program_id(0)                                   # group
    j = tl.program_id(1)                                   # trajectory within the group
    traj_lo = tl.load(group_cu_ptr + g)
    traj_hi = tl.load(group_cu_ptr + g + 1)
    i = traj_lo + j                                        # this program's trajectory
    if i < traj_hi:                                        # the grid is padded to the largest group
        # The group's steps are contiguous: [first, last) of the S step rewards.
        first = tl.load(traj_cu_ptr + traj_lo)
        last = tl.load(traj_cu_ptr + traj_hi)
        n = (last - first).to(tl.float32)
        shift = tl.load(step_reward_ptr + first).to(tl.float32)  # shifted-data trick, see docstring
        offs = tl.arange(0, BLOCK_S)
        # Pass 1: μ_g (of the shifted rewards).
        acc = tl.zeros([BLOCK_S], dtype=tl.float32)
        for start in range(first, last, BLOCK_S):
            idx = start + offs
            mask = idx < last
            r = tl.load(step_reward_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            acc += tl.where(mask, r - shift, 0.0)
        mean = tl.div_rn(tl.sum(acc, axis=0), n)
        # Pass 2: Bessel variance around μ_g; the rewards are re-read from L2, not kept in registers.
        acc = tl.zeros([BLOCK_S], dtype=tl.float32)
        for start in range(first, last, BLOCK_S):
            idx = start + offs
            mask = idx < last
            r = tl.load(step_reward_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            dev = tl.where(mask, (r - shift) - mean, 0.0)
            acc += dev * dev
        var = tl.div_rn(tl.sum(acc, axis=0), tl.maximum(n - 1.0, 1.0))  # 1 step: var = 0 / 1
        denom = tl.sqrt_rn(var) + eps                      # IEEE sqrt/div to match torch's rounding
        ep = tl.load(episode_adv_ptr + i).to(tl.float32)
        toffs = tl.arange(0, BLOCK_T)
        # Own steps: A^S_s (Eq. 4), then A = A^E + α·A^S (Eq. 5) written to each of the step's tokens.
        for s in range(tl.load(traj_cu_ptr + i), tl.load(traj_cu_ptr + i + 1)):
            r_s = tl.load(step_reward_ptr + s).to(tl.float32)
            adv = tl.div_rn((r_s - shift) - mean, denom)
            tl.store(step_adv_ptr + s, adv)
            vals = tl.zeros([BLOCK_T], dtype=tl.float32) + (ep + alpha * adv)
            tok_lo = tl.load(step_cu_ptr + s)
            tok_hi = tl.load(step_cu_ptr + s + 1)
            for t0 in range(tok_lo, tok_hi, BLOCK_T):      # zero iterations for an empty step
                tidx = t0 + toffs
                tl.store(token_adv_ptr + tidx, vals, mask=tidx < tok_hi)


def _check_cheap(step_reward, episode_adv, step_cu, traj_cu, group_cu) -> None:
    """Dtype, rank and device checks: no device sync (value checks live in segment_normalize)."""
    check_float_vector("step_reward", step_reward)
    check_float_vector("episode_adv", episode_adv)
    for name, cu in (("step_cu", step_cu), ("traj_cu", traj_cu), ("group_cu", group_cu)):
        check_offsets_dtype(name, cu)
    check_same_device(step_reward=step_reward, episode_adv=episode_adv, step_cu=step_cu,
                      traj_cu=traj_cu, group_cu=group_cu)


def segment_normalize_triton(step_reward, episode_adv, step_cu, traj_cu, group_cu, alpha: float,
                             eps: float = 1e-6, num_tokens: int | None = None, max_group_size: int | None = None):
    """Launcher. num_tokens (T) and max_group_size are read from the offsets unless given (saves a sync)."""
    # (1) constraints that cost no device sync (values are checked in segment_normalize)
    _check_cheap(step_reward, episode_adv, step_cu, traj_cu, group_cu)
    require_launchable(_segment_normalize_kernel, step_reward)
    step_reward, episode_adv = step_reward.detach().contiguous(), episode_adv.detach().contiguous()
    step_cu, traj_cu, group_cu = step_cu.contiguous(), traj_cu.contiguous(), group_cu.contiguous()
    num_steps, num_groups = step_reward.shape[0], group_cu.shape[0] - 1
    if num_tokens is None or max_group_size is None:
        num_tokens, max_group_size = (int(v) for v in torch.stack(
            [step_cu[-1].long(), group_cu.diff().max().long()]).tolist())
    # (2) outputs: every entry is written by exactly one program, so no zero-fill is needed
    token_adv = torch.empty(num_tokens, dtype=torch.float32, device=step_reward.device)  # (T,)
    step_adv = torch.empty(num_steps, dtype=torch.float32, device=step_reward.device)    # (S,)
    # (3) grid: one program per (group, trajectory slot); blocks from the average segment lengths
    block_s, warps_s = launch_config(num_steps, num_groups)
    block_t, warps_t = launch_config(num_tokens, num_steps)
    _segment_normalize_kernel[(num_groups, max_group_size)](
        step_reward, episode_adv, step_cu, traj_cu, group_cu, token_adv, step_adv,
        float(alpha), float(eps), BLOCK_S=block_s, BLOCK_T=block_t, num_warps=max(warps_s, warps_t))
    return token_adv, step_adv


def segment_normalize(step_reward, episode_adv, step_cu, traj_cu, group_cu, alpha: float,
                      eps: float = 1e-6, impl: str | None = None):
    """(token_adv (T,) fp32, step_adv (S,) fp32), paper Eqs. 4-5. Same signature as the reference + impl.

    impl: "triton", "reference", or None (set_impl / $ISTAR_KERNELS, else Triton iff on CUDA).
    Inputs that require grad are detached: the outputs are constants for the policy loss.
    """
    _check_cheap(step_reward, episode_adv, step_cu, traj_cu, group_cu)
    num_steps, num_trajs = step_reward.shape[0], episode_adv.shape[0]
    for name, cu, n in (("step_cu", step_cu, num_steps), ("traj_cu", traj_cu, num_trajs)):
        if cu.shape[0] != n + 1:
            raise ValueError(f"{name} must have length {n + 1} (one more than its segments), got {cu.shape[0]}")
    if group_cu.shape[0] < 2:
        raise ValueError(f"group_cu must have length >= 2 (at least one group), got {group_cu.shape[0]}")
    (num_tokens, _), _, (_, max_group_size) = check_offsets_values([
        ("step_cu", step_cu, None, False),        # steps may be empty
        ("traj_cu", traj_cu, num_steps, True),    # every trajectory has >= 1 step
        ("group_cu", group_cu, num_trajs, True),  # every group has >= 1 trajectory
    ])
    step_reward, episode_adv = step_reward.detach(), episode_adv.detach()
    if resolve_impl(impl, step_reward) == "triton":
        return segment_normalize_triton(step_reward, episode_adv, step_cu, traj_cu, group_cu, alpha, eps,
                                        num_tokens=num_tokens, max_group_size=max_group_size)
    return segment_normalize_reference(step_reward, episode_adv, step_cu, traj_cu, group_cu, alpha, eps)


if __name__ == "__main__":
    from bench.kernels import copy_bandwidth, print_table, random_packed_batch, time_providers

    # 1) correctness: Triton == reference on a random ragged batch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for dtype in (torch.float32, torch.bfloat16):
        b = random_packed_batch(num_tokens=3000 if device == "cpu" else 200_000, device=device, seed=0)
        args = (b["step_reward"].to(dtype), b["episode_adv"].to(dtype), b["step_cu"], b["traj_cu"], b["group_cu"], 1.0)
        ref = segment_normalize_reference(*args)
        tri = segment_normalize(*args, impl="triton")
        for name, r, t in zip(("token_adv", "step_adv"), ref, tri):
            torch.testing.assert_close(t, r, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name} {dtype}: {m}")
    print(f"segment_normalize: Triton matches the reference on {device} (fp32, bf16 inputs).")
    if device == "cpu":
        print("The benchmark needs a CUDA GPU; skipped.")
    else:
        # 2) benchmark: bytes that must move (fp32 values, int32 offsets); L2-resident re-reads excluded
        copy_gbps = copy_bandwidth()
        rows = []
        for target in (1 << 20, 1 << 24):
            b = random_packed_batch(num_tokens=target, device=device, seed=1)
            args = (b["step_reward"], b["episode_adv"], b["step_cu"], b["traj_cu"], b["group_cu"], 1.0)
            T, S, N, M = int(b["step_cu"][-1]), b["step_reward"].shape[0], b["episode_adv"].shape[0], b["group_cu"].shape[0] - 1
            off = b["step_cu"].element_size()
            nbytes = 4 * T + 4 * S + 4 * S + 4 * N + off * (S + 1 + N + 1 + M + 1)  # writes T+S, reads S+N + offsets
            gmax = int(b["group_cu"].diff().max())
            compiled = torch.compile(segment_normalize_reference, dynamic=True)
            providers = {
                "triton": (lambda: segment_normalize_triton(*args, num_tokens=T, max_group_size=gmax), nbytes),
                "torch eager": (lambda: segment_normalize_reference(*args), nbytes),
                "torch.compile": (lambda: compiled(*args), nbytes),
            }
            rows += time_providers(providers, copy_gbps, label=f"T={T:,} S={S:,} N={N:,}")
        print_table("segment_normalize", rows, copy_gbps)
