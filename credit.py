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
    credit/adv_auc        AUC of the advantage the policy update gives the step's tokens (their
                          mean): A^E_i + α·A^S_{i,t} (E7), or the merged advantage of --combine rewards
    credit/*_gap          the same pairs' mean score difference, score(good) − score(bad): how much
                          of the score's magnitude (for adv: of the advantage that weights the policy
                          gradient) lands on the right side, where the AUC only counts which side

    credit/fatal_frac     fraction of the moves whose fate is known that led into a dead end
    credit/*_safe_auc     the same AUCs (and *_safe_gap the gaps) against a second label derived from the
                          first (``safe_move_labels``): a move that kept the level solvable (good) vs
                          one that made it unsolvable (bad). In Sokoban these are the moves that
                          decide the outcome: after a fatal move no sequence of moves wins, where a
                          detour only costs steps

iStar assigns credit better than its base algorithm exactly when adv_auc > episode_auc. The AUC
can be perfect while the gap is small (a few good steps far ahead, most just above the bad ones):
the policy gradient of a step's choice follows E[A | good] − E[A | bad] (what adv_gap averages),
not the ranking. For the PRIME ablation (token granularity, paper.md E9) a step's reward is the
sum of its tokens' rewards. Unlabelled steps (label −1: other envs, dead ends) are left
out; with no (good, bad) pair the AUCs are absent from the stats.

A label-free diagnostic sits beside them, for every env (``surprise_corr``):

    prm/surprise_corr     within-group correlation of r_φ with the surprisal −Σ log π_θold of the
                          step's tokens: above 0, the PRM rewards what the sampling policy found
                          unlikely, whatever it did (E1 measures π_φ against π_θold)

and one for the policy update's effect on entropy (``logp_adv_cov``, every run, iStar on or off):

    policy/logp_adv_cov   covariance over action tokens of log π_θold and the advantage (Cui et al.
                          2025): below 0 the policy-gradient step raises entropy (rare tokens pushed
                          up or likely ones down), above 0 it lowers it

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


def within_group_corr(x: torch.Tensor, y: torch.Tensor, group: torch.Tensor) -> tuple[float, float, float]:
    """Pearson correlation of x and y (S,) within groups, as sums for data-parallel ranks to add:
    (Σ x̃ỹ, Σ x̃², Σ ỹ²) with x̃, ỹ each minus its group's mean (groups never span ranks: tasks are
    sharded whole); the correlation is Σ x̃ỹ / sqrt(Σ x̃² · Σ ỹ²). A group's constant shift of x or
    y changes nothing."""
    _check_shapes("within_group_corr", x, y, group)
    g = torch.unique(group, return_inverse=True)[1]  # (S,) 0 .. G'−1
    count = torch.bincount(g).double()  # (G',)

    def centre(v):
        v = v.detach().double()
        return v - (torch.zeros_like(count).index_add_(0, g, v) / count)[g]
    xc, yc = centre(x), centre(y)
    return float((xc * yc).sum()), float((xc * xc).sum()), float((yc * yc).sum())


def surprise_corr(batch, implicit_reward: torch.Tensor, old_logp: torch.Tensor, granularity: str = "step") -> dict:
    """``prm/surprise_corr``: the within-group correlation of r_φ with the surprisal of what was
    sampled, −Σ_k log π_θold over the step's tokens (per token for granularity="token"); needs no
    labels, so every env logs it. E1 is a log-ratio against π_θold, so a PRM flatter than the policy
    that sampled the batch (one that has moved mass from the policy's habits to everything else)
    gives the moves the policy found unlikely the high rewards: above 0, r_φ follows surprise, and
    A^S pushes the policy towards its own rare moves whatever they did. {} without two steps in a group.

    Args:
        batch:           a batch.Batch (step_cu, traj_cu, group_id).
        implicit_reward: (S,) r_φ, or (T,) token rewards for granularity="token".
        old_logp:        (T,) log π_θold of the action tokens.
    """
    if granularity == "token":
        surprisal = -old_logp.float()  # (T,)
        per_traj = batch.step_cu[batch.traj_cu[1:]] - batch.step_cu[batch.traj_cu[:-1]]  # (N,) tokens
    else:
        surprisal = -trajectory_scores(old_logp.float(), batch.step_cu, "sum")  # (S,)
        per_traj = batch.traj_cu[1:] - batch.traj_cu[:-1]  # (N,) steps
    group = torch.repeat_interleave(batch.group_id, per_traj.long())  # (S,) or (T,)
    sxy, sxx, syy = distributed.all_sum(list(within_group_corr(implicit_reward, surprisal, group)))
    return {"prm/surprise_corr": sxy / (sxx * syy) ** 0.5} if sxx * syy > 0 else {}


def logp_adv_cov(old_logp: torch.Tensor, token_adv: torch.Tensor, weight: torch.Tensor | None = None) -> dict:
    """``policy/logp_adv_cov``: the covariance over the batch's action tokens of log π_θold(y) and the
    advantage A that weights them (Cui et al. 2025, arXiv 2505.22617), each token weighted as the
    loss weights it. For a softmax whose logits move by η·A, entropy changes by −η·Cov_π(log π, A) to
    first order: above 0 the update sharpens the policy (its likely tokens pushed up, its unlikely ones
    down), below 0 it flattens it (the entropy bonus is not in it). ``policy/logp_adv_cov_neg`` is the
    part of the sum from tokens with A < 0: below 0, pushing down likely tokens is what flattens.
    A batch estimate over tokens of different states, as in Cui et al.; label-free. {} for no tokens.

    Args:
        old_logp:  (T,) log π_θold of the action tokens.
        token_adv: (T,) the advantage of each token (E7).
        weight:    (T,) the loss's weight of each token; None = equal (token-mean).
    """
    x, a = old_logp.detach().double(), token_adv.detach().double()  # (T,), (T,)
    w = torch.ones_like(x) if weight is None else weight.detach().double()  # (T,)
    neg = w * (a < 0)  # (T,) the weights of the tokens pushed down
    sums = distributed.all_sum([float(v.sum()) for v in (w, w * x, w * a, w * x * a, neg, neg * x, neg * a, neg * x * a)])
    total, sx, sa, sxa, n_total, n_x, n_a, n_xa = sums
    if total <= 0:
        return {}
    xm, am = sx / total, sa / total  # weighted means
    return {"policy/logp_adv_cov": sxa / total - xm * am,  # Σ w (x − x̄)(a − ā) / Σ w
            "policy/logp_adv_cov_neg": (n_xa - am * n_x - xm * n_a + xm * am * n_total) / total}


def safe_move_labels(batch) -> torch.Tensor:
    """(S,) int8: 1 a move that left the level solvable, 0 a fatal move (into a dead end), −1 unknown.

    Derived from ``step_optimal``, where −1 in a labelled env marks a step taken *from* a dead end
    (Sokoban: ``step_optimal`` is None exactly there). So a step from a solvable state (label ≥ 0)
    whose next step in the same trajectory is unlabelled moved into a dead end; one whose next step
    is labelled did not; a good step (1, one move along a shortest solution) never does. A not-good
    last step of a trajectory (the step limit came first) and every step from a dead end are
    unknown, as are all steps of an env without labels. Meaningful only where −1 marks dead ends:
    Locks' labels are never −1, so there every move counts as safe (``credit/fatal_frac`` 0), though
    a wrong key already loses the episode.
    """
    label = batch.step_optimal  # (S,)
    following = torch.full_like(label, -2)  # (S,) label of the next step of the same trajectory; −2 = none
    following[:-1] = label[1:]
    ends = batch.traj_cu[1:][batch.traj_cu[1:] > batch.traj_cu[:-1]] - 1  # (N',) last step of each trajectory
    following[ends.to(label.device)] = -2
    safe = torch.full_like(label, -1)  # (S,)
    safe[(label == 1) | ((label == 0) & (following >= 0))] = 1
    safe[(label == 0) & (following == -1)] = 0
    return safe


def credit_stats(batch, episode_adv: torch.Tensor, implicit_reward: torch.Tensor | None = None,
                 token_adv: torch.Tensor | None = None, granularity: str = "step") -> dict:
    """The ``credit/*`` metrics of one batch (module docstring); {} when no step has a label.

    Args:
        batch:           a batch.Batch with ``step_optimal`` (S,).
        episode_adv:     (N,) A^E (E5).
        implicit_reward: (S,) r_φ (E1), or (T,) token rewards for granularity="token"; None = iStar off.
        token_adv:       (T,) the advantage of every action token as the policy update uses it (E7);
                         a step scores the mean over its tokens. Given with implicit_reward.
    """
    label = batch.step_optimal  # (S,)
    labelled = distributed.all_sum([float((label >= 0).sum()), float((label == 1).sum())])
    if labelled[0] == 0:
        return {}
    steps_per_traj = (batch.traj_cu[1:] - batch.traj_cu[:-1]).long()  # (N,)
    group = torch.repeat_interleave(batch.group_id, steps_per_traj)  # (S,) group of each step
    scores = {"episode": torch.repeat_interleave(episode_adv.float(), steps_per_traj)}  # (S,)
    if implicit_reward is not None:
        if granularity == "token":  # a step's reward is its tokens' sum
            implicit_reward = trajectory_scores(implicit_reward, batch.step_cu, "sum")  # (S,)
        scores["prm"] = implicit_reward  # (S,)
        scores["adv"] = trajectory_scores(token_adv.float(), batch.step_cu, "mean")  # (S,) E7, as trained
    safe = safe_move_labels(batch)  # (S,)
    labels = {"": label, "_safe": safe}
    sums = [float((safe >= 0).sum()), float((safe == 0).sum())]
    for y in labels.values():
        for score in scores.values():
            sums += [*within_group_auc(score, y, group), within_group_gap(score, y, group)[0]]
    known, fatal, *sums = distributed.all_sum(sums)
    stats = {"credit/optimal_frac": labelled[1] / labelled[0]}
    if known > 0:
        stats["credit/fatal_frac"] = fatal / known
    keys = [(name, suffix) for suffix in labels for name in scores]  # the order of ``sums``, three per key
    for k, (name, suffix) in enumerate(keys):
        wins, pairs, diff = sums[3 * k: 3 * k + 3]
        if pairs > 0:
            stats[f"credit/{name}{suffix}_auc"] = wins / pairs
            stats[f"credit/{name}{suffix}_gap"] = diff / pairs
    if implicit_reward is None:  # the base algorithm's advantage is A^E
        for suffix in labels:
            for kind in ("auc", "gap"):
                if f"credit/episode{suffix}_{kind}" in stats:
                    stats[f"credit/adv{suffix}_{kind}"] = stats[f"credit/episode{suffix}_{kind}"]
    return stats
