"""Ground-truth check of step credit: do the implicit step rewards favour the steps that were good?

iStar's claim (paper.md E1, E6-E7; paper Eq. 1, 4, 5) is that a PRM trained only on trajectory
preferences (E3) learns *which steps* deserve credit, so A^E + α·A^S ranks the good steps of a
group above the bad ones better than the outcome alone does. Where an environment can label its
own steps (``info["optimal"]``; Sokoban: the move took one step along a shortest solution), this
module measures that claim directly, with the AUC of a per-step score against the label:

    AUC(score) = P( score(good step) > score(bad step) ),  ties counted ½,

over every (good, bad) pair of steps **in the same group** (same task, the set E6 standardises
over: scores of different tasks are never compared). 0.5 is chance; 1 a perfect ranking. Logged
per iteration (training steps, not evaluation):

    credit/optimal_frac   fraction of labelled steps that are good (the policy's own step quality)
    credit/episode_auc    AUC of A^E_i, the base algorithm's credit (every step of a trajectory
                          gets its episode's value, so this only sorts steps by their episode)
    credit/prm_auc        AUC of the implicit step reward r_φ (E1): the PRM's step credit alone
    credit/adv_auc        AUC of A^E_i + α·A^S_{i,t} (E7), the credit the policy update uses
    credit/*_gap          the same pairs' mean score difference, score(good) − score(bad): how much
                          of the score's magnitude (for adv: of the advantage that weights the policy
                          gradient) lands on the right side, where the AUC only counts which side

iStar assigns credit better than its base algorithm exactly when adv_auc > episode_auc. The AUC
can be perfect while the gap is small (a few good steps far ahead, most just above the bad ones):
the policy gradient of a step's choice follows E[A | good] − E[A | bad] (what adv_gap averages),
not the ranking. For the PRIME ablation (token granularity, paper.md E9) a step's reward is the
sum of its tokens' rewards and its advantage their mean. Unlabelled steps (label −1: other envs, dead ends) are left
out; with no (good, bad) pair the AUCs are absent from the stats.

Diagnostics only: nothing here feeds back into training. Deviations from the paper: the paper
has no ground-truth credit metric (its evidence is downstream success); this is ours.
"""
from __future__ import annotations

import numpy as np
import torch

import distributed
from prm import trajectory_scores


def _check_shapes(name: str, score: torch.Tensor, label: torch.Tensor, group: torch.Tensor) -> None:
    if not (score.shape == label.shape == group.shape and score.ndim == 1):
        raise ValueError(f"{name}: expected three (S,) tensors, got {tuple(score.shape)}, "
                         f"{tuple(label.shape)}, {tuple(group.shape)}")


def within_group_auc(score: torch.Tensor, label: torch.Tensor, group: torch.Tensor) -> tuple[float, int]:
    """Mann-Whitney count over same-group pairs: (Σ wins, number of pairs); AUC = wins / pairs.

    Args:
        score: (S,) a per-step score (float).
        label: (S,) 1 good, 0 bad, −1 unknown (left out).
        group: (S,) group id of each step.
    A pair (i good, j bad, same group) wins 1 if score_i > score_j and ½ if equal. Returned as sums
    so data-parallel ranks can add theirs before dividing.
    """
    _check_shapes("within_group_auc", score, label, group)
    s, y, g = score.detach().float().cpu().numpy(), label.cpu().numpy(), group.cpu().numpy()
    wins, pairs = 0.0, 0
    for gid in np.unique(g[y >= 0]):
        good = s[(g == gid) & (y == 1)]
        bad = np.sort(s[(g == gid) & (y == 0)])
        if good.size == 0 or bad.size == 0:
            continue
        below = np.searchsorted(bad, good, side="left")  # bad scores strictly below each good one
        tied = np.searchsorted(bad, good, side="right") - below
        wins += float(below.sum() + 0.5 * tied.sum())
        pairs += good.size * bad.size
    return wins, pairs


def within_group_gap(score: torch.Tensor, label: torch.Tensor, group: torch.Tensor) -> tuple[float, int]:
    """Σ over the same-group (good, bad) pairs of score_good − score_bad, and their number; the mean
    difference (gap) = sum / pairs. Per group the sum is n_bad·Σ good − n_good·Σ bad (no pair loop).
    Args as ``within_group_auc``."""
    _check_shapes("within_group_gap", score, label, group)
    s, y, g = score.detach().double().cpu().numpy(), label.cpu().numpy(), group.cpu().numpy()
    total, pairs = 0.0, 0
    for gid in np.unique(g[y >= 0]):
        good, bad = s[(g == gid) & (y == 1)], s[(g == gid) & (y == 0)]
        total += float(bad.size * good.sum() - good.size * bad.sum())
        pairs += good.size * bad.size
    return total, pairs


def credit_stats(batch, episode_adv: torch.Tensor, implicit_reward: torch.Tensor | None = None,
                 step_adv: torch.Tensor | None = None, step_adv_coef: float = 1.0, granularity: str = "step") -> dict:
    """The ``credit/*`` metrics of one batch (module docstring); {} when no step has a label.

    Args:
        batch:           a batch.Batch with ``step_optimal`` (S,).
        episode_adv:     (N,) A^E (E5).
        implicit_reward: (S,) r_φ (E1), or (T,) token rewards for granularity="token"; None = iStar off.
        step_adv:        (S,) A^S (E6), or (T,) per token for "token"; a step scores A^E + α·A^S (E7).
    """
    label = batch.step_optimal  # (S,)
    labelled = distributed.all_sum([float((label >= 0).sum()), float((label == 1).sum())])
    if labelled[0] == 0:
        return {}
    steps_per_traj = (batch.traj_cu[1:] - batch.traj_cu[:-1]).long()  # (N,)
    group = torch.repeat_interleave(batch.group_id, steps_per_traj)  # (S,) group of each step
    scores = {"episode": torch.repeat_interleave(episode_adv.float(), steps_per_traj)}  # (S,)
    if implicit_reward is not None:
        if granularity == "token":  # a step's reward is its tokens' sum, its A^S their mean
            implicit_reward = trajectory_scores(implicit_reward, batch.step_cu, "sum")  # (S,)
            step_adv = trajectory_scores(step_adv, batch.step_cu, "mean")  # (S,)
        scores["prm"] = implicit_reward  # (S,)
        scores["adv"] = scores["episode"] + step_adv_coef * step_adv  # (S,) E7
    sums = []
    for score in scores.values():
        sums += [*within_group_auc(score, label, group), within_group_gap(score, label, group)[0]]
    sums = distributed.all_sum(sums)
    stats = {"credit/optimal_frac": labelled[1] / labelled[0]}
    for k, name in enumerate(scores):
        wins, pairs, diff = sums[3 * k: 3 * k + 3]
        if pairs > 0:
            stats[f"credit/{name}_auc"] = wins / pairs
            stats[f"credit/{name}_gap"] = diff / pairs
    if "credit/episode_auc" in stats and implicit_reward is None:  # the base algorithm's advantage is A^E
        stats["credit/adv_auc"], stats["credit/adv_gap"] = stats["credit/episode_auc"], stats["credit/episode_gap"]
    return stats
