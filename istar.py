"""One iStar iteration after the rollout: PRM update, advantages, PPO-clip policy update.

Implements the loop of paper.md ("The loop", paper Algorithm 1) stages 2-4 and paper.md E8
(paper Eq. 6). Each stage is a named function returning `(…, stats)`; `istar_update` calls them
in the paper's order:

    old_logp   = log π_θold(y)                       recompute_old_logp   (T,)
    r, stats   = PRM scores + one DPO step (E1-E3)    update_prm           (S,)
    A, stats   = A^E + α · A^S on tokens (E5-E7)      compute_advantages   (T,)
    stats      = PPO-clip epochs (E8)                 update_policy

E8, PPO clip:  L(θ) = − mean [ min( ρ·A, clip(ρ, 1−ε, 1+ε)·A ) ],  ρ = π_θ(y) / π_θold(y)
per token (verl, default) or per step, ρ_t = Π_k π_θ(y_{t,k}) / π_θold(y_{t,k}) (paper Eq. 6).

The PRM's DPO loss couples the trajectories of a group through pairs, so it cannot be split into
independent micro-batches naively. `update_prm` does it exactly in two phases: (1) a no-grad
forward of the whole batch gives Q(τ) for every trajectory (and the step rewards used for the
advantages: "PRM before its update", paper.md open point 2); the loss is evaluated on a leaf copy
of Q to get g = ∂L/∂Q; (2) micro-batches recompute Q with gradients and back-propagate Σ_i g_i·Q_i,
whose gradient is exactly ∂L/∂φ. Only trajectories that appear in a pair are re-run.

References:
  1) iStar, https://arxiv.org/abs/2509.19199 (Algorithm 1, Eq. 6)
  2) PPO, Schulman et al. 2017, https://arxiv.org/abs/1707.06347; dual clip, Ye et al. 2020,
     https://arxiv.org/abs/1912.09729; k3 KL estimator, http://joschu.net/blog/kl-approx.html
  3) verl's token-mean aggregation, https://github.com/volcengine/verl

Deviations from the paper:
  1) Token-level ratio with token-mean aggregation by default (released code); the paper's step-
     level ratio is `ratio_level="step"` (product of the step's token ratios, mean over steps).
  2) Dual clip c = 3 and an entropy bonus 0.001 as in the released code (the paper names neither).
  2b) `loss_agg="seq-mean-token-mean"` (option) weights every trajectory of a minibatch equally instead
     of every token: with token-mean, tokens present in every step (the answer format) are pushed by
     Σ_i A_i·steps_i, which is negative whenever failed episodes are longer than won ones (Sokoban;
     on WebShop at lr 3e-4, token-mean lost the tags and seq-mean-token-mean kept them: README Results).
  3) Several minibatches per batch (each an optimiser step), not the paper's 64 step-samples:
     our samples are whole trajectories.
  3b) `step_reward_source="oracle"` (diagnostic, not the paper): the env's ground-truth step labels
     (credit.py) stand in for r_φ in E6 and the PRM is not trained: an upper bound on what step-level
     credit can add to the base algorithm with this policy and budget.
  3c) `prm_steps` > 1 (option, not the paper): several DPO steps of π_φ per iteration on the same pairs.
     r_φ is measured against π_θold, which moves every iteration; when the policy's optimiser steps
     outpace the PRM's single one, r_φ turns against what the policy has learned (README Results, Locks).
  3d) `prm_nll_coef` > 0 (option, not the paper): RPO's NLL of the preferred trajectories' action tokens
     is added to E3, so π_φ keeps mass on what won; without it DPO can lower the likelihood of the
     chosen trajectories too (likelihood displacement) and r_φ then favours text no trajectory had.
  3e) `prm_reference="start"` (option, not the paper): E1's reference is the frozen policy RL started
     from, π_0, as in DPO and PRIME, instead of π_θold. r_φ = β·Σ(log π_φ − log π_θold) splits into
     β·Σ(log π_φ − log π_0) − β·Σ(log π_θold − log π_0): the second term, the policy's own drift, is
     what this removes. It is also what bounds r_φ: under π_θold the expected step reward is
     −β·KL(π_θold ‖ π_φ) ≤ 0, so the policy cannot climb it; against π_0 it can, and on Locks every
     run did, into invalid text (README Results, Locks).
  3f) `combine="rewards"` (the paper's "merged rewards" ablation, paper.md E8; the formula is ours,
     advantage.py): R_i + α·r_{i,t} per step through the base algorithm's group formula once, in
     place of E7's A^E + α·A^S; credit/adv_auc then scores that merged advantage.
  4) For the PRIME ablation (granularity="token") the reference policy is π_θold, as for iStar
     (`prm_reference="start"` gives PRIME's frozen π_ref), and the token rewards go through the
     same group standardisation as step rewards (each token its own segment), so the two differ
     only in the granularity of the reward and the PRM's loss. PRIME itself uses a leave-one-out
     return-to-go of token rewards; that is not implemented.

Data parallelism (distributed.py): `batch` holds this rank's whole groups. Losses are weighted by
their share of the global count (PPO minibatch tokens, DPO pairs) and gradients summed over ranks
(`sync_grads`), so K ranks take the same optimiser steps as one; batch-wide statistics
(REINFORCE++ whitening, E4's max |r|, logged means) are all-reduced. One process: unchanged.
"""
from __future__ import annotations

import math

import torch

import distributed
from advantage import combined_advantage, episode_advantage, merged_advantage, scale_step_rewards
from batch import _ranges
from credit import credit_stats, logp_adv_cov, surprise_corr
from model import token_logprobs
from prm import prime_ce_loss, preference_pairs, step_rewards, token_rewards, trajectory_dpo_loss, trajectory_scores


class NonFiniteError(RuntimeError):
    """A loss or an advantage is NaN/inf: the update stops instead of training on garbage."""


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{name} has NaN/inf values ({(~torch.isfinite(x)).sum().item()} of {x.numel()}); update stopped")


def _chunks(batch, indices: torch.Tensor, cfg) -> list[torch.Tensor]:
    """Consecutive runs of the trajectories ``indices`` (whole trajectories), each one forward/backward:
    at most ``cfg.micro_batch`` trajectories and ``cfg.micro_batch_tokens`` padded row tokens (rows ×
    longest row, what a forward allocates), and at least one trajectory. Memory only: the gradient
    and the statistics do not depend on the split."""
    row_len = batch.attention_mask.sum(1).tolist()  # (R,) real tokens of each row
    row_cu = batch.row_cu.tolist()  # (N+1,)
    chunks, cur, rows, width = [], [], 0, 0
    for i in indices.tolist():
        r, w = row_cu[i + 1] - row_cu[i], max(row_len[row_cu[i]:row_cu[i + 1]], default=0)
        if cur and (len(cur) == cfg.micro_batch or (rows + r) * max(width, w) > cfg.micro_batch_tokens):
            chunks.append(torch.tensor(cur, dtype=torch.long))
            cur, rows, width = [], 0, 0
        cur.append(i)
        rows, width = rows + r, max(width, w)
    if cur:
        chunks.append(torch.tensor(cur, dtype=torch.long))
    return chunks


def _token_index(batch, traj_idx: torch.Tensor) -> torch.Tensor:
    """Indices into the packed token arrays (T,) of the selected trajectories, in order."""
    tok_cu = batch.step_cu[batch.traj_cu]  # (N+1,) token offsets of each trajectory
    idx = traj_idx.to(tok_cu.device)
    return _ranges(tok_cu[idx], tok_cu[idx + 1])  # (T_sel,) no Python loop


def _logprobs(model, batch, with_entropy=False):
    if distributed.is_sharded(model):  # FSDP2: route through the root's forward so its hooks gather the weights
        return model(batch.input_ids, batch.attention_mask, batch.action_mask, with_entropy=with_entropy)
    return token_logprobs(model, batch.input_ids, batch.attention_mask, batch.action_mask, with_entropy=with_entropy)


def _padded_chunks(batch, indices: torch.Tensor, cfg, model):
    """``_chunks``, then (FSDP only) padding chunks ``None`` until every rank runs as many as the busiest."""
    chunks = _chunks(batch, indices, cfg)
    return chunks + [None] * (distributed.pad_count(len(chunks), model) - len(chunks))


@torch.no_grad()
def recompute_old_logp(policy, batch, cfg) -> torch.Tensor:
    """log π_θold of every action token (T,): the policy that sampled the batch, before its update."""
    with distributed.gathered(policy):
        parts = [_logprobs(policy, batch.select(idx)) for idx in _chunks(batch, torch.arange(batch.num_traj), cfg)]
    return torch.cat(parts).float()  # (T,)


# ---------------------------------------------------------------------------------------------
# Stage 2: implicit PRM (paper.md E1-E3, E9)
# ---------------------------------------------------------------------------------------------
def _prm_rewards(prm_logp, old_logp, batch_part, cfg):
    """Step rewards (S,) and Q (N,), or token rewards (T,) and Q for the PRIME ablation."""
    if cfg.granularity == "token":
        r = token_rewards(prm_logp, old_logp, cfg.beta)  # (T,) E9
        return r, trajectory_scores(r, batch_part.step_cu[batch_part.traj_cu], "sum")  # (N,)
    r = step_rewards(prm_logp, old_logp, batch_part.step_cu, cfg.beta, impl=cfg.kernel_impl)  # (S,) E1
    return r, trajectory_scores(r, batch_part.traj_cu, cfg.q_reduce)  # (N,) E2


def _prm_loss(q, batch, cfg, pairs):
    """E3 on the preference pairs (P, 2), or PRIME's E9 for granularity="token" (pairs None)."""
    return prime_ce_loss(q, batch.won) if cfg.granularity == "token" else trajectory_dpo_loss(q, pairs)


def score_with_prm(prm, batch, old_logp, cfg) -> torch.Tensor:
    """No-grad PRM forward over the whole batch: the implicit rewards (S,) or (T,) for token granularity."""
    rewards = []
    with torch.no_grad(), distributed.gathered(prm):
        for idx in _chunks(batch, torch.arange(batch.num_traj), cfg):
            part = batch.select(idx)
            r, _ = _prm_rewards(_logprobs(prm, part).float(), old_logp[_token_index(batch, idx)], part, cfg)
            rewards.append(r)
    return torch.cat(rewards)


def update_prm(prm, prm_opt, batch, old_logp, cfg, ref_logp=None) -> tuple[torch.Tensor, dict]:
    """``cfg.prm_steps`` trajectory-DPO optimiser steps of π_φ on this batch's pairs (E3; the paper
    takes one); returns the step rewards for the advantages and the stats of the first step (the
    PRM as it was before this iteration: pair accuracy on pairs it has not trained on).

    Default (`prm_order="before"`): the rewards come from π_φ before its steps (paper Algorithm 1);
    "after" rescores with the updated PRM (one more forward pass). ``ref_logp`` (T,) is E1's
    reference log π_ref (`prm_reference="start"`); None = ``old_logp``, π_θold (the paper).
    """
    ref = old_logp if ref_logp is None else ref_logp  # (T,) E1's reference
    reward = score_with_prm(prm, batch, ref, cfg)  # (S,) or (T,)
    stats = _prm_step(prm, prm_opt, batch, ref, cfg, reward)
    for _ in range(cfg.prm_steps - 1):  # option: keep π_φ ahead of the policy it is measured against
        _prm_step(prm, prm_opt, batch, ref, cfg, score_with_prm(prm, batch, ref, cfg))
    if cfg.prm_order == "after":
        reward = score_with_prm(prm, batch, ref, cfg)
    stats["prm/reward_mean"], stats["prm/reward_std"] = distributed.mean_std(reward)
    stats.update(surprise_corr(batch, reward, old_logp, cfg.granularity))  # diagnostic: does r_φ follow surprise?
    return reward.detach(), stats


def _prm_step(prm, prm_opt, batch, old_logp, cfg, reward: torch.Tensor) -> dict:
    """One DPO optimiser step of π_φ whose current step rewards are ``reward`` (no grad): the loss
    on the trajectory scores Q, then ∂L/∂Q pushed through the PRM one chunk of trajectories at a time."""
    seg_cu = batch.step_cu[batch.traj_cu] if cfg.granularity == "token" else batch.traj_cu
    q = trajectory_scores(reward, seg_cu, "sum" if cfg.granularity == "token" else cfg.q_reduce)  # (N,)
    q_leaf = q.detach().requires_grad_(True)
    pairs = None if cfg.granularity == "token" else preference_pairs(batch.won, batch.outcome, batch.group_cu, cfg.pair_rule)  # (P, 2)
    loss, stats = _prm_loss(q_leaf, batch, cfg, pairs)
    if distributed.world_size() > 1:  # the loss is a mean over all pairs (trajectories for E9) of all ranks
        loss, stats = _global_prm_loss(loss, stats, batch, cfg)
    if cfg.prm_nll_coef and stats["prm/num_pairs"] > 0:  # option (RPO), not in the paper
        nll, stats["prm/nll"] = _preferred_nll(q_leaf, batch, old_logp, cfg, pairs)
        loss = loss + cfg.prm_nll_coef * nll
    _check_finite("prm loss", loss.detach())
    prm_opt.zero_grad(set_to_none=True)
    if stats["prm/num_pairs"] > 0 or cfg.granularity == "token":
        loss.backward()
        grad_q = q_leaf.grad  # (N,) ∂L/∂Q
        used = grad_q.nonzero(as_tuple=True)[0]  # trajectories in a pair
        for idx in _padded_chunks(batch, used, cfg, prm):
            weight = 1.0 if idx is not None else 0.0  # a padding chunk (FSDP lockstep) adds no gradient
            idx = idx if idx is not None else torch.zeros(1, dtype=torch.long)
            part = batch.select(idx)
            _, q_part = _prm_rewards(_logprobs(prm, part).float(), old_logp[_token_index(batch, idx)], part, cfg)
            (q_part * grad_q[idx] * weight).sum().backward()  # Σ g_i Q_i: same gradient as the full loss
        distributed.sync_grads(prm)
        stats["prm/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(prm.parameters(), cfg.prm_grad_clip))
        if not math.isfinite(stats["prm/grad_norm"]):
            raise NonFiniteError("prm gradient norm is NaN/inf; update stopped")
        prm_opt.step()
        stats["prm/updated"] = 1.0
    else:
        stats["prm/updated"] = 0.0  # no pair in the batch: the PRM is not updated (paper.md E3)
    return stats


def _preferred_nll(q, batch, old_logp, cfg, pairs) -> tuple[torch.Tensor, float]:
    """RPO's term (Pang et al. 2024, arXiv 2404.19733; an option, not in the paper): the mean NLL under
    π_φ of the action tokens of every trajectory that is τ⁺ in some pair, over all ranks' such tokens.

    It needs no forward of its own: by E1-E2 a trajectory's summed log π_φ is Σ log π_θold + s·Q/β
    (s = 1 for Q = sum, the number of steps for Q = mean), so the term is a function of Q and its
    gradient flows through the same ∂L/∂Q pass as the DPO loss. Returns (the term, its value)."""
    pos = torch.unique(pairs[:, 0])  # (N⁺,) the preferred trajectories
    tok_cu = batch.step_cu[batch.traj_cu]  # (N+1,) token offsets of the trajectories
    old_sum = trajectory_scores(old_logp.float(), tok_cu, "sum")  # (N,) Σ log π_θold over each trajectory
    steps = (batch.traj_cu[1:] - batch.traj_cu[:-1]).float()  # (N,)
    s = steps if cfg.q_reduce == "mean" else torch.ones_like(steps)
    logp_sum = old_sum[pos] + s[pos] * q[pos] / cfg.beta  # (N⁺,) Σ log π_φ over each τ⁺ (E1-E2 inverted)
    n_tok, total = distributed.all_sum([float((tok_cu[1:] - tok_cu[:-1])[pos].sum()), float(logp_sum.detach().sum())])
    return -logp_sum.sum() / max(n_tok, 1.0), -total / max(n_tok, 1.0)


def _global_prm_loss(loss, stats, batch, cfg):
    """Reweight this rank's mean loss by its share of the global pair (E3) or trajectory (E9) count;
    logged means become means over all ranks' pairs."""
    n_local = stats["prm/num_pairs"] if cfg.granularity == "step" else batch.num_traj
    keys = [k for k in ("prm/dpo_loss", "prm/ce_loss", "prm/acc", "prm/margin", "prm/ce_acc", "prm/q_mean") if k in stats]
    sums = distributed.all_sum([n_local] + [stats[k] * n_local if n_local else 0.0 for k in keys])
    n_all = sums[0]
    stats = {**stats, **{k: (v / n_all if n_all else float("nan")) for k, v in zip(keys, sums[1:])}}
    if cfg.granularity == "step":
        stats["prm/num_pairs"] = int(n_all)
        stats["prm/dpo_loss"] = stats["prm/dpo_loss"] if n_all else 0.0
    return loss * (n_local / n_all if n_all else 0.0), stats


# ---------------------------------------------------------------------------------------------
# Stage 3: advantages (paper.md E4-E7)
# ---------------------------------------------------------------------------------------------
def compute_advantages(batch, implicit_reward: torch.Tensor | None, cfg) -> tuple[torch.Tensor, dict]:
    """Token advantages (T,): A^E of the base algorithm + α·A^S when iStar is on (E5-E7)."""
    kwargs = {"batch_mean_std": distributed.mean_std} if cfg.algo == "reinforce++" else {}  # whiten over the global batch
    episode_adv = episode_advantage(batch.outcome, batch.group_cu, cfg.algo, **kwargs)  # (N,) E5
    _check_finite("episode advantage", episode_adv)
    mean, std = distributed.mean_std(episode_adv)
    stats = {"adv/episode_mean": mean, "adv/episode_std": std}
    if implicit_reward is None:  # the base algorithm alone: broadcast A^E to the tokens
        stats.update(credit_stats(batch, episode_adv))  # ground-truth step credit, where the env labels steps
        tokens_per_traj = batch.step_cu[batch.traj_cu[1:]] - batch.step_cu[batch.traj_cu[:-1]]  # (N,)
        return torch.repeat_interleave(episode_adv, tokens_per_traj), stats
    r = implicit_reward
    if cfg.scale_step_rewards:  # E4 (option, replaces E6's standardisation); the max |r| spans every rank's batch
        r = scale_step_rewards(r, float(distributed.all_max(r.abs().max())))
    if cfg.granularity == "token":  # PRIME ablation: every token is its own segment
        step_cu = torch.arange(r.numel() + 1, device=r.device)
        traj_cu = batch.step_cu[batch.traj_cu]
    else:
        step_cu, traj_cu = batch.step_cu, batch.traj_cu
    if cfg.combine == "rewards":  # the paper's "merged rewards" ablation: R + α·r, one normalisation (E8)
        token_adv, step_adv = merged_advantage(batch.outcome, r, step_cu, traj_cu, batch.group_cu, cfg.step_adv_coef, cfg.algo, **kwargs)
    else:
        token_adv, step_adv = combined_advantage(episode_adv, r, step_cu, traj_cu, batch.group_cu, cfg.step_adv_coef,
                                                 impl=cfg.kernel_impl, standardise=not cfg.scale_step_rewards)  # E6-E7
    _check_finite("token advantage", token_adv)
    stats.update(credit_stats(batch, episode_adv, implicit_reward, token_adv, cfg.granularity))
    stats["adv/step_std"] = distributed.mean_std(step_adv)[1]
    if cfg.granularity == "step":  # > 0: the step credit pushes the policy towards invalid actions
        invalid = ~batch.step_valid  # (S,)
        total, count = distributed.all_sum([float(step_adv[invalid].sum()), float(invalid.sum())])
        if count:
            stats["adv/step_invalid_mean"] = total / count
    stats["adv/token_std"] = distributed.mean_std(token_adv)[1]
    return token_adv, stats


# ---------------------------------------------------------------------------------------------
# Stage 4: policy update (paper.md E8)
# ---------------------------------------------------------------------------------------------
def policy_loss(logp, old_logp, token_adv, step_cu, clip_eps=0.2, dual_clip=3.0, ratio_level="token", weight=None):
    """PPO-clip surrogate, paper Eq. 6 (paper.md E8). Returns ``(loss, stats)``.

    Args:
        logp:      (T,) log π_θ of the action tokens (with grad).
        old_logp:  (T,) log π_θold of the same tokens.
        token_adv: (T,) A_{i,t} broadcast to tokens (E7).
        step_cu:   (S+1,) step offsets into T; used when ratio_level="step".
        weight:    (T,) or (S,) weight of each loss term; None = the plain mean (token- or step-mean).
    ratio_level="token": ρ per token, token-mean. "step": log ρ_t = Σ_k (log π_θ − log π_θold) over
    the step's tokens, one term per step, step-mean (every token of a step has the same advantage).
    ``weight`` replaces the mean by Σ weight·term (``update_policy`` uses it for ``loss_agg``).
    """
    if ratio_level == "step":
        step_len = (step_cu[1:] - step_cu[:-1]).long()  # (S,)
        step_id = torch.repeat_interleave(torch.arange(step_len.numel(), device=logp.device), step_len)  # (T,)
        log_ratio = torch.zeros(step_len.numel(), device=logp.device).index_add(0, step_id, logp.float() - old_logp)  # (S,)
        adv = torch.zeros_like(log_ratio).index_add(0, step_id, token_adv) / step_len.clamp(min=1)  # (S,) the step's A
    else:
        log_ratio, adv = logp.float() - old_logp, token_adv  # (T,), (T,)
    ratio = torch.exp(log_ratio.clamp(max=20.0))  # ρ; clamp only guards exp overflow
    surr1 = ratio * adv
    surr2 = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    loss_terms = -torch.min(surr1, surr2)  # E8
    if dual_clip:  # bound the loss of a negative advantage by −c·A (Ye et al. 2020)
        dual_active = (adv < 0) & (loss_terms > -dual_clip * adv)  # where the dual clip bounds the loss
        loss_terms = torch.where(dual_active, -dual_clip * adv, loss_terms)
    loss = loss_terms.mean() if weight is None else (loss_terms * weight).sum()
    with torch.no_grad():
        stats = {
            "policy/pg_loss": loss.item(),
            "policy/clip_frac": (surr2 < surr1).float().mean().item(),  # the clipped term is the active one (verl)
            "policy/approx_kl": ((ratio - 1) - log_ratio).mean().item(),  # k3, http://joschu.net/blog/kl-approx.html
            "policy/dual_clip_frac": dual_active.float().mean().item() if dual_clip else 0.0,
        }
    return loss, stats


def _seq_mean_weights(part, ratio_level: str, n_mb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``loss_agg="seq-mean-token-mean"``: every loss term (token, or step for the step-level
    ratio) of trajectory i gets 1 / (n_mb · units_i), so each trajectory of the minibatch counts 1/n_mb
    whatever its length; the second tensor is the same per token (entropy and KL terms)."""
    tok_n = (part.step_cu[part.traj_cu[1:]] - part.step_cu[part.traj_cu[:-1]]).long()  # (N_part,) tokens
    unit_n = tok_n if ratio_level == "token" else (part.traj_cu[1:] - part.traj_cu[:-1]).long()  # (N_part,)
    per = lambda n: torch.repeat_interleave(1.0 / (n_mb * n.clamp(min=1).float()), n)  # noqa: E731
    return per(unit_n), per(tok_n)


def update_policy(policy, opt, batch, old_logp, token_adv, cfg, ref_policy=None, generator=None) -> dict:
    """PPO epochs over the batch: `minibatches` optimiser steps per epoch, micro-batched forwards.

    Data parallel: the permutation is over the global trajectory indices (same generator on every
    rank); a rank runs the part of each minibatch it holds, weighted by the minibatch's global tokens.
    The loss is a mean over tokens (ratio_level="token") or over steps ("step", paper Eq. 6), so
    micro-batches and ranks are weighted by their share of the minibatch's tokens or steps, and
    the logged stats are averaged with the same weights. With ``loss_agg="seq-mean-token-mean"``
    each term carries 1 / (trajectories in the minibatch · its trajectory's terms) instead.
    """
    _check_finite("token advantage", token_adv)  # before any optimiser step: nothing is applied
    totals: dict[str, float] = {}
    count = 0
    cu = batch.step_cu[batch.traj_cu] if cfg.ratio_level == "token" else batch.traj_cu  # (N+1,) units per trajectory
    parts = distributed.gather_objects([(cu[1:] - cu[:-1]).cpu()])  # one (N_r,) per rank
    lo = sum(t.numel() for t in parts[:distributed.rank()])  # this rank's first global trajectory
    traj_units = torch.cat(parts)  # (N_global,) loss terms (tokens or steps) of every trajectory
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(traj_units.numel(), generator=generator)
        for mb in torch.tensor_split(order, cfg.minibatches):
            if mb.numel() == 0:
                continue
            opt.zero_grad(set_to_none=True)
            mb_units = int(traj_units[mb].sum())  # the token- (step-) mean spans the global minibatch
            local = mb[(mb >= lo) & (mb < lo + batch.num_traj)] - lo  # this rank's trajectories of it
            for idx in _padded_chunks(batch, local, cfg, policy):
                weight = 1.0 if idx is not None else 0.0  # a padding chunk (FSDP lockstep) adds no gradient
                idx = idx if idx is not None else torch.zeros(1, dtype=torch.long)
                part, tok = batch.select(idx), _token_index(batch, idx)
                units = tok.numel() if cfg.ratio_level == "token" else part.step_cu.numel() - 1
                if cfg.loss_agg == "token-mean":  # every term 1/mb_units: micro-batches weighted by their units
                    unit_w = tok_w = None
                    share = units / mb_units
                else:  # seq-mean-token-mean: each trajectory 1/mb.numel(), its terms share that equally
                    unit_w, tok_w = _seq_mean_weights(part, cfg.ratio_level, mb.numel())  # (T_part or S_part,), (T_part,)
                    share = 1.0
                logp, entropy = _logprobs(policy, part, with_entropy=True)  # (T_part,), (T_part,)
                loss, stats = policy_loss(logp, old_logp[tok], token_adv[tok], part.step_cu, cfg.clip_eps, cfg.dual_clip,
                                          cfg.ratio_level, weight=unit_w)
                if unit_w is not None:  # log the minibatch's own loss: Σ_parts (this) · units / count = its mean
                    stats["policy/pg_loss"] *= mb_units / max(units, 1)
                token_mean = (lambda x: x.mean()) if tok_w is None else (lambda x: (x * tok_w).sum())  # noqa: E731
                loss = loss - cfg.entropy_coef * token_mean(entropy)
                if cfg.kl_coef > 0 and ref_policy is not None:
                    with torch.no_grad():
                        ref_logp = _logprobs(ref_policy, part).float()
                    log_r = ref_logp - logp.float()
                    kl = token_mean(log_r.exp() - 1 - log_r)  # k3 estimator of KL(π_θ || π_ref)
                    loss = loss + cfg.kl_coef * kl
                    stats["policy/kl_ref"] = (log_r.exp() - 1 - log_r).mean().item()
                _check_finite("policy loss", loss.detach())
                (loss * share * weight).backward()  # weighted gradient accumulation
                if not weight:
                    continue
                stats["policy/entropy"] = entropy.mean().item()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v * units
                count += units
            distributed.sync_grads(policy)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip))
            if not math.isfinite(grad_norm):
                raise NonFiniteError("policy gradient norm is NaN/inf; update stopped")
            totals["policy/grad_norm"] = totals.get("policy/grad_norm", 0.0) + grad_norm
            opt.step()
    grad_norm = totals.pop("policy/grad_norm", 0.0)  # the same on every rank (gradients are synchronised)
    out = distributed.merge_means(totals, count)  # token- (step-) weighted means over every rank's micro-batches
    out["policy/grad_norm"] = grad_norm / max(cfg.ppo_epochs * cfg.minibatches, 1)
    return out


def istar_update(policy, prm, policy_opt, prm_opt, batch, cfg, ref_policy=None, generator=None) -> dict:
    """Stages 2-4 of one iteration, in the paper's order (Algorithm 1). iStar off = base algorithm.
    ``ref_policy``: the frozen policy RL started from, for ``kl_coef`` and ``prm_reference="start"``."""
    old_logp = recompute_old_logp(policy, batch, cfg)  # (T,)
    stats: dict = {}
    implicit_reward = None
    if cfg.istar and cfg.step_reward_source == "oracle":  # diagnostic: ground-truth step labels replace r_φ
        implicit_reward = (batch.step_optimal == 1).float()  # (S,) 1 good, 0 not good or unlabelled (dead end)
    elif cfg.istar:
        ref_logp = recompute_old_logp(ref_policy, batch, cfg) if cfg.prm_reference == "start" else None  # (T,) option
        implicit_reward, prm_stats = update_prm(prm, prm_opt, batch, old_logp, cfg, ref_logp)  # E1-E3
        stats.update(prm_stats)
    token_adv, adv_stats = compute_advantages(batch, implicit_reward, cfg)  # E5-E7
    stats.update(adv_stats)
    weight = None if cfg.loss_agg == "token-mean" else _seq_mean_weights(batch, "token", 1)[1]  # (T,) the loss's token weights
    stats.update(logp_adv_cov(old_logp, token_adv, weight))  # diagnostic: does the update raise or lower entropy?
    stats.update(update_policy(policy, policy_opt, batch, old_logp, token_adv, cfg, ref_policy, generator))  # E8
    return stats
