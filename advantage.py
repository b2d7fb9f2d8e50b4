"""Advantages of iStar: episode-level (base algorithm) + α · step-level (implicit step rewards).

Implements paper.md E4-E7 (paper Eq. 3, Eq. 4, Eq. 5):

    (E5)  A^E_i     episode advantage of trajectory i from the outcome rewards R of its group
                      RLOO         A^E_i = R_i − 1/(G−1) Σ_{j≠i} R_j = G/(G−1) · (R_i − mean_g R)
                      GRPO         A^E_i = (R_i − mean_g R) / (std_g R + ε)
                      REINFORCE++  A^E_i = whiten_batch(R_i − mean_g R)
    (E6)  A^S_{i,t} = (r_{i,t} − mean(R_s)) / (std(R_s) + ε),  R_s = every step reward of every
                      trajectory of the group (pooled across step indices)
    (E7)  A_{i,t}   = A^E_i + α · A^S_{i,t}, given to every action token of step t

and the paper's "merged rewards" ablation (paper.md E8; the paper finds it clearly worse than E7):

    merged  m_{i,t} = R_i + α · r_{i,t};  A_{i,t} = the base algorithm's group formula (E5) applied
            to the m of every step of the group, pooled as E6 pools step rewards

Symbols: R = `outcome` (N,), r = `step_reward` (S,), A^E = `episode_adv` (N,),
A^S = `step_adv` (S,), A = `token_adv` (T,), α = `step_adv_coef`. Shapes follow the packed layout
of kernels/__init__.py: N trajectories in M contiguous groups (`group_cu`), S steps (`traj_cu`),
T action tokens (`step_cu`).

E6 + E7 + the broadcast to tokens are one fused op, `kernels.segment_normalize`; this file holds
the episode-level math and the wiring, the kernel file holds the step-level reference.

Degenerate inputs: a group of one trajectory gets A^E = 0 (there is no baseline to compare with);
a group whose outcomes are all equal gets 0, never NaN (ε in the denominator); an empty batch is
rejected with a ValueError.

References:
  1) iStar, https://arxiv.org/abs/2509.19199 (Eq. 3-5)
  2) RLOO, Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740
  3) GRPO, Shao et al. 2024, https://arxiv.org/abs/2402.03300
  4) REINFORCE++, Hu 2025, https://arxiv.org/abs/2501.03262 (the "baseline" variant)

Deviations from the paper:
  1) std is the unbiased (n−1) standard deviation, as torch.std in verl; a single value has std 0.
  2) REINFORCE++ whitens over trajectories of the batch, not over tokens (verl whitens token-
     weighted, which lets long answers dominate the statistics).
  3) The released code normalises step rewards with a group mean taken from one step per
     trajectory; we use all steps of the group, as Eq. 4 says (paper.md open point 3).
  4) E4 (divide all step rewards by the batch max |r|) is not in the paper; off by default. When
     on, the scaled rewards are the step advantage directly (no group standardisation, which
     would cancel the scaling), as the released code does.
  5) The paper names its "merged rewards" ablation without a formula. `merged_advantage` is our
     reading: the outcome joins every step's reward before the one normalisation; with a single
     step per trajectory and α = 0 it is the base algorithm exactly. RLOO's leave-one-out and
     GRPO's statistics then run over the group's steps, so a long trajectory weighs more in them.
"""
from __future__ import annotations

import torch

from kernels import segment_normalize

EPS = 1e-6  # paper.md E5: ε = 1e−6


def _check_groups(outcome: torch.Tensor, group_cu: torch.Tensor) -> torch.Tensor:
    """Validate (outcome, group_cu) and return the group size of every trajectory (N,)."""
    if outcome.ndim != 1 or outcome.numel() == 0:
        raise ValueError(f"outcome: expected a non-empty 1-D tensor of outcome rewards, got shape {tuple(outcome.shape)}")
    if group_cu.ndim != 1 or group_cu.numel() < 2 or group_cu.dtype not in (torch.int32, torch.int64):
        raise ValueError("group_cu: expected a 1-D int32/int64 tensor of M+1 offsets into the trajectories")
    sizes = group_cu[1:] - group_cu[:-1]  # (M,)
    if int(group_cu[0]) != 0 or int(group_cu[-1]) != outcome.numel() or bool((sizes < 1).any()):
        raise ValueError(
            f"group_cu: must start at 0, end at N={outcome.numel()} and give every group >= 1 trajectory, got {group_cu.tolist()}"
        )
    return torch.repeat_interleave(sizes, sizes)  # (N,) size of each trajectory's group


def _group_center_std(x: torch.Tensor, group_cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per trajectory: its value minus its group's mean (N,), and the group's unbiased std (N,).

    Values are first shifted by their group's first value (a "shifted-data" variance, as the
    kernel does): the statistics are unchanged, but a group of equal values gives exactly 0,
    where `x − mean(x)` in fp32 leaves a rounding residue that ε would blow up (e.g. 8 × 10.6).
    """
    sizes = (group_cu[1:] - group_cu[:-1]).long()  # (M,)
    gid = torch.repeat_interleave(torch.arange(sizes.numel(), device=x.device), sizes)  # (N,)
    x = x.float()
    d = x - x[group_cu[:-1].long()][gid]  # (N,) shifted by the group's first value
    mean = torch.zeros(sizes.numel(), device=x.device).index_add_(0, gid, d) / sizes  # (M,)
    centered = d - mean[gid]  # (N,) R − mean_g R
    var = torch.zeros_like(mean).index_add_(0, gid, centered**2) / (sizes - 1).clamp(min=1)  # (M,)
    return centered, var.sqrt()[gid]  # (N,), (N,)


def rloo_advantage(outcome: torch.Tensor, group_cu: torch.Tensor) -> torch.Tensor:
    """RLOO leave-one-out baseline, paper Eq. 3 as run for WebShop/Sokoban (paper.md E5).

    A^E_i = R_i − 1/(G−1) Σ_{j≠i} R_j = G/(G−1) · (R_i − mean_g R); 0 for a group of one.
    """
    size = _check_groups(outcome, group_cu).float()  # (N,)
    centered, _ = _group_center_std(outcome, group_cu)  # (N,)
    adv = size / (size - 1).clamp(min=1) * centered  # (N,) E5, RLOO
    return torch.where(size > 1, adv, torch.zeros_like(adv))


def grpo_advantage(outcome: torch.Tensor, group_cu: torch.Tensor, eps: float = EPS, scale: bool = True) -> torch.Tensor:
    """GRPO group normalisation, paper Eq. 3 (paper.md E5): (R_i − mean_g R) / (std_g R + ε).

    ``scale=False`` gives the mean-only variant (Dr. GRPO). Equal rewards give 0, not NaN.
    """
    _check_groups(outcome, group_cu)
    centered, std = _group_center_std(outcome, group_cu)  # (N,), (N,)
    return centered / (std + eps) if scale else centered  # E5, GRPO


def _local_mean_std(x: torch.Tensor) -> tuple[float, float]:
    return x.mean().item(), (x.std().item() if x.numel() > 1 else 0.0)


def reinforce_pp_advantage(outcome: torch.Tensor, group_cu: torch.Tensor, eps: float = EPS, batch_mean_std=_local_mean_std) -> torch.Tensor:
    """REINFORCE++ with baseline (paper.md E5): subtract the group mean, then whiten over the batch.

    `batch_mean_std(x) -> (mean, std)` gives the batch statistics; distributed runs pass one that
    all-reduces over ranks, so the whitening spans the global batch.
    """
    _check_groups(outcome, group_cu)
    centered, _ = _group_center_std(outcome, group_cu)  # (N,) group baseline
    mean, std = batch_mean_std(centered)
    return (centered - mean) / (std + eps)  # (N,) batch whitening


EPISODE_ADVANTAGES = {"rloo": rloo_advantage, "grpo": grpo_advantage, "reinforce++": reinforce_pp_advantage}


def episode_advantage(outcome: torch.Tensor, group_cu: torch.Tensor, algo: str = "rloo", **kwargs) -> torch.Tensor:
    """A^E (N,) for the chosen base algorithm (paper.md E5); kwargs go to that algorithm's function."""
    if algo not in EPISODE_ADVANTAGES:
        raise ValueError(f"algo: expected one of {sorted(EPISODE_ADVANTAGES)}, got {algo!r}")
    return EPISODE_ADVANTAGES[algo](outcome, group_cu, **kwargs)


def scale_step_rewards(step_reward: torch.Tensor, max_abs: float | None = None) -> torch.Tensor:
    """paper.md E4 (released code, not the paper): r / (max_batch |r| + 1e−6), so r ∈ [−1, 1].

    Used *instead of* the group standardisation of E6 (a batch-wide constant would cancel in it):
    with `--scale-step-rewards`, A^S = the scaled r, as in the released code's "batch_norm" mode.
    `max_abs` overrides the local max (distributed runs pass the global one).
    """
    m = step_reward.abs().max().item() if max_abs is None else max_abs
    return step_reward / (m + 1e-6)  # (S,)


def combined_advantage(
    episode_adv: torch.Tensor,
    step_reward: torch.Tensor,
    step_cu: torch.Tensor,
    traj_cu: torch.Tensor,
    group_cu: torch.Tensor,
    step_adv_coef: float = 1.0,
    eps: float = EPS,
    impl: str | None = None,
    standardise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_{i,t} = A^E_i + α · A^S_{i,t} on every action token (paper Eq. 4-5, paper.md E6-E7).

    Returns ``(token_adv (T,), step_adv (S,))``. With α = 0 the result is the base algorithm's
    advantage broadcast to tokens: iStar is a plug-in. Fused in one kernel (kernels/segment_normalize.py).
    """
    if step_reward.numel() == 0:
        raise ValueError("step_reward: empty batch (no steps); roll out at least one step")
    if not standardise:  # E4 mode: A^S is the (already scaled) step reward itself
        step_adv = step_reward.detach().float()  # (S,)
        traj_of_step = torch.repeat_interleave(torch.arange(traj_cu.numel() - 1, device=step_adv.device), (traj_cu[1:] - traj_cu[:-1]).long())  # (S,)
        per_step = episode_adv.detach().float()[traj_of_step] + step_adv_coef * step_adv  # (S,) E7
        return torch.repeat_interleave(per_step, (step_cu[1:] - step_cu[:-1]).long()), step_adv  # (T,), (S,)
    return segment_normalize(
        step_reward.detach().float(), episode_adv.detach().float(), step_cu, traj_cu, group_cu, step_adv_coef, eps, impl=impl
    )


def merged_advantage(
    outcome: torch.Tensor,
    step_reward: torch.Tensor,
    step_cu: torch.Tensor,
    traj_cu: torch.Tensor,
    group_cu: torch.Tensor,
    step_adv_coef: float = 1.0,
    algo: str = "rloo",
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The "merged rewards" ablation (paper.md E8): the step reward joins the outcome *before* normalising.

    m_{i,t} = R_i + α·r_{i,t}, then A_{i,t} = `episode_advantage` of the base algorithm over the m of
    all steps of the group (the group's step offsets, ``traj_cu[group_cu]``, as its segments). One
    normalisation for both signals: the larger one sets the scale, where E7 normalises each on its own.
    Returns ``(token_adv (T,), step_adv (S,))``, step_adv being that advantage per step; kwargs go to
    the base algorithm (REINFORCE++'s ``batch_mean_std``).
    """
    if step_reward.numel() == 0:
        raise ValueError("step_reward: empty batch (no steps); roll out at least one step")
    _check_groups(outcome, group_cu)
    steps_per_traj = (traj_cu[1:] - traj_cu[:-1]).long()  # (N,)
    merged = torch.repeat_interleave(outcome.float(), steps_per_traj) + step_adv_coef * step_reward.detach().float()  # (S,)
    step_adv = episode_advantage(merged, traj_cu[group_cu], algo, **kwargs)  # (S,) E5 over the group's steps
    return torch.repeat_interleave(step_adv, (step_cu[1:] - step_cu[:-1]).long()), step_adv  # (T,), (S,)
