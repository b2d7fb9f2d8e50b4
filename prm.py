"""The implicit process reward model (PRM) of iStar and its trajectory-level DPO loss.

Implements paper.md E1-E3 and E9 (paper Eq. 1 and Eq. 2):

    (E1)  r_φ(o_{1:t}, a_t) = β · Σ_{k=1..L_t} ( log π_φ(y_{t,k} | ·) − log π_θold(y_{t,k} | ·) )
    (E2)  Q_φ(τ) = Σ_t r_φ(o_{1:t}, a_t)                  (`reduce="mean"`: (1/T) Σ_t, released code)
    (E3)  L_PRM(φ) = − mean_{(τ⁺, τ⁻)} log σ( Q_φ(τ⁺) − Q_φ(τ⁻) ),   pairs inside one group only
    (E9)  PRIME's token reward β · (log π_φ − log π_ref) and its cross-entropy loss on the outcome

Symbols: β = `beta`, log π_φ = `prm_logp` (T,), log π_θold = `old_logp` (T,), r_φ = `step_reward`
(S,), Q_φ = `traj_score` (N,). Packed layout as in kernels/__init__.py.

The PRM π_φ is a causal LM of its own (initialised from the policy, paper.md E3); this file only
needs its token log-probs. The segmented sum of E1 is the fused kernel `kernels.step_logratio`,
differentiable with respect to `prm_logp`, so the DPO loss trains the PRM through it. (The
released code computes its loss on a detached tensor and never trains the PRM; ours does, and
tests/test_prm.py checks that the PRM's parameters move and its pair accuracy rises.)

References:
  1) iStar, https://arxiv.org/abs/2509.19199 (Eq. 1-2)
  2) DPO, Rafailov et al. 2023, https://arxiv.org/abs/2305.18290
  3) PRIME, Cui et al. 2025, https://arxiv.org/abs/2502.01456 (token-level implicit PRM, E9)

Deviations from the paper:
  1) Pairs by threshold on `won` (paper: success > 0 for WebShop/Sokoban, judge score > 6 for
     SOTOPIA; each env's `won` encodes its threshold); `pair_rule="graded"` adds the option of every
     strictly better/worse pair by outcome reward (paper.md open point 4).
  2) The DPO loss is the mean over all pairs of the batch pooled (a group with more pairs weighs
     more), as the released code does; paper.md E3 allows this reading.
  3) With no pair in the batch the loss is a zero that still depends on the parameters (so a
     caller's backward is harmless) and stats say `num_pairs = 0`; the trainer then skips the step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels import step_logratio

BETA = 0.05  # paper.md E1: β = 0.05


def step_rewards(
    prm_logp: torch.Tensor, old_logp: torch.Tensor, step_cu: torch.Tensor, beta: float = BETA, impl: str | None = None
) -> torch.Tensor:
    """r_φ (S,) for every step of a packed batch: paper Eq. 1 (paper.md E1), one fused segmented sum."""
    return step_logratio(prm_logp, old_logp, step_cu, beta, impl=impl)  # (S,) E1


def token_rewards(prm_logp: torch.Tensor, old_logp: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """PRIME's token-level implicit reward β · (log π_φ − log π_ref) (T,) (paper.md E9, the ablation)."""
    return beta * (prm_logp.float() - old_logp.float())  # (T,) E9


def trajectory_scores(step_reward: torch.Tensor, traj_cu: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """Q_φ(τ) (N,): the sum (paper Eq. 2) or mean (released code) of a trajectory's step rewards (E2)."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce: expected 'sum' (paper) or 'mean' (released code), got {reduce!r}")
    num_steps = (traj_cu[1:] - traj_cu[:-1]).long()  # (N,)
    traj_id = torch.repeat_interleave(torch.arange(num_steps.numel(), device=step_reward.device), num_steps)  # (S,)
    q = torch.zeros(num_steps.numel(), device=step_reward.device, dtype=step_reward.dtype)
    q = q.index_add(0, traj_id, step_reward)  # (N,) E2: Q = Σ_t r_t (index_add keeps the autograd graph)
    return q / num_steps.clamp(min=1) if reduce == "mean" else q


def preference_pairs(
    won: torch.Tensor, outcome: torch.Tensor, group_cu: torch.Tensor, rule: str = "threshold"
) -> torch.Tensor:
    """Indices (P, 2) of (τ⁺, τ⁻) pairs formed inside each group (paper.md E3, open point 4).

    rule="threshold" (paper): every positive (won) × negative (not won) trajectory of a group;
    rule="graded": every pair with outcome R⁺ > R⁻ strictly. A group that ties gives no pair.
    """
    if rule not in ("threshold", "graded"):
        raise ValueError(f"pair_rule: expected 'threshold' (paper) or 'graded', got {rule!r}")
    key = won.float() if rule == "threshold" else outcome.float()  # (N,) what "better" means
    pairs = []
    for g in range(group_cu.numel() - 1):
        lo, hi = int(group_cu[g]), int(group_cu[g + 1])
        idx = torch.arange(lo, hi, device=key.device)  # (G,)
        better = key[lo:hi, None] > key[None, lo:hi]  # (G, G) better[a, b]: a beats b
        a, b = better.nonzero(as_tuple=True)
        pairs.append(torch.stack([idx[a], idx[b]], dim=1))  # (P_g, 2)
    return torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.long, device=key.device)


def trajectory_dpo_loss(traj_score: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L_PRM = − mean over pairs of log σ(Q(τ⁺) − Q(τ⁻)): paper Eq. 2 (paper.md E3).

    Returns ``(loss, stats)`` with `prm/acc` (fraction of pairs with Q⁺ > Q⁻), `prm/margin`
    (mean Q⁺ − Q⁻) and `prm/num_pairs`. No pairs: a zero loss, stats with num_pairs 0.
    """
    if pairs.numel() == 0:
        zero = traj_score.sum() * 0.0  # keeps the graph, gradient exactly 0
        return zero, {"prm/dpo_loss": 0.0, "prm/acc": float("nan"), "prm/margin": float("nan"), "prm/num_pairs": 0}
    margin = traj_score[pairs[:, 0]] - traj_score[pairs[:, 1]]  # (P,) Q(τ⁺) − Q(τ⁻)
    loss = -F.logsigmoid(margin.float()).mean()  # E3
    stats = {
        "prm/dpo_loss": loss.item(),
        "prm/acc": (margin > 0).float().mean().item(),
        "prm/margin": margin.mean().item(),
        "prm/num_pairs": int(pairs.shape[0]),
    }
    return loss, stats


def prime_ce_loss(traj_score: torch.Tensor, won: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """PRIME's PRM loss (paper.md E9): cross-entropy of σ(Q) against the outcome label.

    L = − mean_i [ y_i log σ(Q_i) + (1 − y_i) log(1 − σ(Q_i)) ],  Q_i = Σ over τ_i's tokens of the
    token reward (`trajectory_scores(token_reward, step_cu[traj_cu])`), y_i = won.
    """
    y = won.float()  # (N,)
    loss = F.binary_cross_entropy_with_logits(traj_score.float(), y)
    acc = ((traj_score > 0).float() == y).float().mean().item()
    return loss, {"prm/ce_loss": loss.item(), "prm/ce_acc": acc, "prm/q_mean": traj_score.mean().item(), "prm/num_pairs": 0}


LOG2 = math.log(2.0)  # the DPO loss when the PRM equals π_old (all rewards 0): −log σ(0)
