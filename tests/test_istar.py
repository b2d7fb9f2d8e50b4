"""One iStar iteration: the PRM really trains (E3), micro-batching is exact, PPO-clip math (E8)."""
import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advantage import combined_advantage, episode_advantage, merged_advantage
from config import Config, validate
from credit import credit_stats, logp_adv_cov
from istar import (NonFiniteError, _chunks, _seq_mean_weights, compute_advantages, istar_update, policy_loss, score_with_prm,
                   update_policy, update_prm)
from model import token_logprobs
from prm import step_rewards, trajectory_scores


@pytest.fixture(scope="module")
def setup(sokoban_setup):
    return sokoban_setup


def cfg_for(**kw):
    base = dict(model_size="tiny", micro_batch=64, minibatches=2, prm_lr=1e-3, lr=1e-3, kernels="reference")
    return Config(**{**base, **kw})


def full_batch_prm_grad(prm, batch, old_logp, cfg):
    """Reference: the DPO loss on the whole batch in one autograd graph (+ RPO's NLL of the preferred
    trajectories' action tokens, taken from the PRM's token log-probs directly, when cfg asks)."""
    from prm import preference_pairs, trajectory_dpo_loss

    prm_logp = token_logprobs(prm, batch.input_ids, batch.attention_mask, batch.action_mask)
    q = trajectory_scores(step_rewards(prm_logp, old_logp, batch.step_cu, cfg.beta, impl="reference"), batch.traj_cu, cfg.q_reduce)
    pairs = preference_pairs(batch.won, batch.outcome, batch.group_cu)
    loss, _ = trajectory_dpo_loss(q, pairs)
    if cfg.prm_nll_coef:
        tok_cu = batch.step_cu[batch.traj_cu]
        traj_of_token = torch.repeat_interleave(torch.arange(batch.num_traj), (tok_cu[1:] - tok_cu[:-1]).long())  # (T,)
        preferred = torch.isin(traj_of_token, pairs[:, 0])  # (T,) tokens of a τ⁺
        loss = loss - cfg.prm_nll_coef * prm_logp[preferred].mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in prm.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("micro_batch,tokens,nll,q_reduce", [(1, 32768, 0.0, "sum"), (5, 32768, 0.0, "sum"), (64, 32768, 0.0, "sum"),
                                                       (64, 2000, 0.0, "sum"), (5, 32768, 0.7, "sum"), (64, 2000, 1.3, "mean")])
def test_two_phase_prm_gradient_equals_the_full_batch_gradient(setup, micro_batch, tokens, nll, q_reduce):
    """Also with --prm-nll-coef (RPO): its term is folded into ∂L/∂Q and must equal the NLL taken directly."""
    tok, policy, batch = setup
    cfg = cfg_for(micro_batch=micro_batch, micro_batch_tokens=tokens, prm_nll_coef=nll, q_reduce=q_reduce)
    old_logp = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
    prm = copy.deepcopy(policy)
    with torch.no_grad():  # make the PRM differ from π_old so rewards are not all zero
        for p in prm.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ref_prm = copy.deepcopy(prm)
    ref = full_batch_prm_grad(ref_prm, batch, old_logp, cfg)
    captured = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured.update({n: p.grad.clone() for n, p in prm.named_parameters() if p.grad is not None})

    cfg = dataclasses.replace(cfg, prm_grad_clip=1e9)
    update_prm(prm, Capture(prm.parameters(), lr=0.0), batch, old_logp, cfg)
    assert captured.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(captured[name], ref[name], atol=1e-6, rtol=1e-4)


def test_prm_nll_is_logged_as_the_mean_nll_of_the_preferred_tokens_and_checked(setup):
    from prm import preference_pairs

    tok, policy, batch = setup
    old_logp = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
    prm = copy.deepcopy(policy)
    with torch.no_grad():
        for p in prm.parameters():
            p.add_(0.02 * torch.randn_like(p))
        prm_logp = token_logprobs(prm, batch.input_ids, batch.attention_mask, batch.action_mask)
    tok_cu = batch.step_cu[batch.traj_cu]
    traj_of_token = torch.repeat_interleave(torch.arange(batch.num_traj), (tok_cu[1:] - tok_cu[:-1]).long())
    preferred = torch.isin(traj_of_token, preference_pairs(batch.won, batch.outcome, batch.group_cu)[:, 0])
    _, stats = update_prm(prm, torch.optim.SGD(prm.parameters(), lr=0.0), batch, old_logp, cfg_for(prm_nll_coef=0.5))
    assert math.isclose(stats["prm/nll"], -prm_logp[preferred].mean().item(), rel_tol=1e-4)
    _, stats = update_prm(prm, torch.optim.SGD(prm.parameters(), lr=0.0), batch, old_logp, cfg_for())
    assert "prm/nll" not in stats  # the paper's loss: no NLL term
    for bad in (dict(prm_nll_coef=-1.0), dict(prm_nll_coef=1.0, granularity="token")):
        with pytest.raises(ValueError, match="--prm-nll-coef"):
            validate(cfg_for(**bad))


def test_prm_parameters_move_and_pair_accuracy_rises(setup):
    """The released code never trains its PRM (paper.md warning); ours must."""
    tok, policy, batch = setup
    cfg = cfg_for()
    old_logp = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
    prm = copy.deepcopy(policy)
    before = [p.detach().clone() for p in prm.parameters()]
    opt = torch.optim.AdamW(prm.parameters(), lr=cfg.prm_lr)
    accs = []
    for _ in range(15):
        _, stats = update_prm(prm, opt, batch, old_logp, cfg)
        accs.append(stats["prm/acc"])
    assert stats["prm/num_pairs"] == 4 + 4 + 3
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, prm.parameters()))
    assert accs[0] <= 0.75 and accs[-1] == 1.0, accs
    assert stats["prm/dpo_loss"] < 0.69


@pytest.mark.parametrize("reference", ["old", "start"])
def test_e1_is_measured_against_the_reference_the_config_names(setup, reference):
    """--prm-reference old (paper Eq. 1): r_φ = β·Σ(log π_φ − log π_θold); start: against the frozen
    ``ref_policy`` π_0 instead. istar_update logs the mean of the rewards it used (PRM before its step)."""
    tok, policy, batch = setup
    gen = torch.Generator().manual_seed(3)
    prm, start = copy.deepcopy(policy), copy.deepcopy(policy)
    with torch.no_grad():
        for model in (prm, start):
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    logp = {name: token_logprobs(m, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
            for name, m in (("old", policy), ("start", start), ("prm", prm))}  # (T,) each
    expected = step_rewards(logp["prm"], logp[reference], batch.step_cu, 0.05, impl="reference").mean()
    other = step_rewards(logp["prm"], logp["start" if reference == "old" else "old"], batch.step_cu, 0.05, impl="reference").mean()
    cfg = cfg_for(prm_reference=reference)
    pol = copy.deepcopy(policy)
    stats = istar_update(pol, prm, torch.optim.AdamW(pol.parameters(), lr=1e-3), torch.optim.AdamW(prm.parameters(), lr=1e-3),
                         batch, cfg, ref_policy=start, generator=torch.Generator().manual_seed(0))
    assert stats["prm/reward_mean"] == pytest.approx(float(expected), rel=1e-4, abs=1e-7)
    assert abs(float(expected - other)) > 1e-3  # the two references give different rewards here


def test_prm_rewards_come_from_the_pre_update_prm_by_default(setup):
    tok, policy, batch = setup
    old_logp = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
    prm = copy.deepcopy(policy)
    opt = torch.optim.AdamW(prm.parameters(), lr=1e-2)
    r_before, _ = update_prm(prm, opt, batch, old_logp, cfg_for())  # PRM == π_old before: rewards exactly 0
    assert torch.equal(r_before, torch.zeros_like(r_before))
    prm2, opt2 = copy.deepcopy(policy), None
    opt2 = torch.optim.AdamW(prm2.parameters(), lr=1e-2)
    r_after, _ = update_prm(prm2, opt2, batch, old_logp, cfg_for(prm_order="after"))
    assert r_after.abs().sum() > 0


def test_prm_steps_k_equal_k_single_step_updates_and_keep_the_first_scores_and_stats(setup):
    """--prm-steps 3 = three one-step updates on the same batch (same PRM weights after), returning
    the rewards and stats of the first (the PRM before this iteration), or, with prm_order after,
    the rewards of the PRM after all three."""
    tok, policy, batch = setup
    old_logp = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
    base = copy.deepcopy(policy)
    opt = torch.optim.AdamW(base.parameters(), lr=1e-3)
    update_prm(base, opt, batch, old_logp, cfg_for())  # a PRM that differs from π_old: non-zero rewards
    one, many = copy.deepcopy(base), copy.deepcopy(base)
    opt_one, opt_many = torch.optim.AdamW(one.parameters(), lr=1e-3), torch.optim.AdamW(many.parameters(), lr=1e-3)
    opt_one.load_state_dict(copy.deepcopy(opt.state_dict())), opt_many.load_state_dict(copy.deepcopy(opt.state_dict()))
    first = [update_prm(one, opt_one, batch, old_logp, cfg_for()) for _ in range(3)][0]
    r_many, stats_many = update_prm(many, opt_many, batch, old_logp, cfg_for(prm_steps=3))
    torch.testing.assert_close(r_many, first[0])
    assert stats_many["prm/acc"] == first[1]["prm/acc"] and stats_many["prm/dpo_loss"] == first[1]["prm/dpo_loss"]
    for a, b in zip(one.parameters(), many.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    after = copy.deepcopy(base)
    opt_after = torch.optim.AdamW(after.parameters(), lr=1e-3)
    opt_after.load_state_dict(copy.deepcopy(opt.state_dict()))
    r_after, _ = update_prm(after, opt_after, batch, old_logp, cfg_for(prm_steps=3, prm_order="after"))
    torch.testing.assert_close(r_after, score_with_prm(many, batch, old_logp, cfg_for()), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="prm-steps"):
        validate(cfg_for(prm_steps=0))


def test_alpha_zero_and_no_istar_give_the_base_algorithm(setup):
    _, _, batch = setup
    r = torch.randn(batch.step_cu.numel() - 1)
    a0, _ = compute_advantages(batch, r, cfg_for(step_adv_coef=0.0))
    base, _ = compute_advantages(batch, None, cfg_for())
    torch.testing.assert_close(a0, base)
    tok_r = torch.randn(int(batch.step_cu[-1]))  # PRIME ablation: token-level rewards
    a_tok, stats = compute_advantages(batch, tok_r, cfg_for(granularity="token"))
    assert a_tok.shape == base.shape and torch.isfinite(a_tok).all() and stats["adv/step_std"] > 0


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_combine_rewards_trains_on_the_merged_advantage_and_scores_its_credit(setup, algo):
    """--combine rewards (the paper's "merged rewards" ablation): the tokens get merged_advantage, and
    credit/adv_auc ranks the steps by that, not by A^E + α·A^S; it needs iStar."""
    batch = copy.copy(setup[2])
    S = batch.step_cu.numel() - 1
    batch.step_optimal = torch.tensor([1, 0, -1] * S, dtype=torch.int8)[:S]  # labels, so credit/* is computed
    r = torch.randn(S, generator=torch.Generator().manual_seed(0))  # (S,)
    token_adv, stats = compute_advantages(batch, r, cfg_for(algo=algo, combine="rewards", step_adv_coef=0.5))
    want, _ = merged_advantage(batch.outcome, r, batch.step_cu, batch.traj_cu, batch.group_cu, 0.5, algo)
    assert torch.equal(token_adv, want)
    combined, _ = compute_advantages(batch, r, cfg_for(algo=algo, step_adv_coef=0.5))
    assert not torch.allclose(token_adv, combined)
    credit = credit_stats(batch, episode_advantage(batch.outcome, batch.group_cu, algo), r, want)
    assert "credit/adv_auc" in credit and stats["credit/adv_auc"] == credit["credit/adv_auc"]
    with pytest.raises(ValueError, match="--combine rewards"):
        validate(cfg_for(combine="rewards", istar=False))


def test_step_invalid_mean_is_the_mean_step_advantage_of_the_invalid_actions(setup):
    """``adv/step_invalid_mean`` (the Locks collapse's warning sign): the mean A^S over invalid steps,
    positive when the step rewards favour them, absent when every action is valid."""
    _, _, batch = setup
    S = batch.step_cu.numel() - 1
    valid = torch.ones(S, dtype=torch.bool)
    valid[::3] = False  # every third step invalid, in every group
    batch = dataclasses.replace(batch, step_valid=valid)
    for sign in (1.0, -1.0):
        r = torch.randn(S, generator=torch.Generator().manual_seed(0)) + sign * 5.0 * (~valid).float()  # (S,)
        _, stats = compute_advantages(batch, r, cfg_for())
        _, step_adv = combined_advantage(torch.zeros(batch.group_id.numel()), r, batch.step_cu, batch.traj_cu,
                                         batch.group_cu, 1.0, impl="reference")
        assert stats["adv/step_invalid_mean"] == pytest.approx(float(step_adv[~valid].mean()), rel=1e-5)
        assert sign * stats["adv/step_invalid_mean"] > 0
    _, stats = compute_advantages(dataclasses.replace(batch, step_valid=torch.ones(S, dtype=torch.bool)), r, cfg_for())
    assert "adv/step_invalid_mean" not in stats


def test_oracle_step_rewards_are_the_labels_and_leave_the_prm_alone(setup):
    """--step-reward-source oracle (a diagnostic): r = 1 for labelled-good steps, 0 otherwise (unlabelled
    too), through the same E6-E7 path; the PRM takes no step; its credit AUC is then perfect."""
    tok, policy, batch = setup
    labelled = copy.copy(batch)
    labelled.step_optimal = torch.tensor([1, 0, -1] * batch.num_steps.sum().item(), dtype=torch.int8)[:batch.step_cu.numel() - 1]
    policy, prm = copy.deepcopy(policy), copy.deepcopy(policy)
    prm_before = [p.detach().clone() for p in prm.parameters()]
    popt, ropt = torch.optim.AdamW(policy.parameters(), lr=1e-3), torch.optim.AdamW(prm.parameters(), lr=1e-3)
    cfg = cfg_for(step_reward_source="oracle")
    _, want_stats = compute_advantages(labelled, (labelled.step_optimal == 1).float(), cfg)
    stats = istar_update(policy, prm, popt, ropt, labelled, cfg, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(prm_before, prm.parameters())) and "prm/dpo_loss" not in stats
    assert stats["credit/prm_auc"] == 1.0 and stats["adv/step_std"] == want_stats["adv/step_std"]
    with pytest.raises(ValueError, match="--step-reward-source oracle"):
        from config import validate
        validate(cfg_for(step_reward_source="oracle", env="webshop"))


@st.composite
def ppo_case(draw):
    lens = draw(st.lists(st.integers(1, 5), min_size=1, max_size=8))
    step_cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    T = int(step_cu[-1])
    old = -torch.rand(T, generator=gen) * 3
    new = old + 0.5 * torch.randn(T, generator=gen)
    adv = torch.repeat_interleave(torch.randn(len(lens), generator=gen), torch.tensor(lens))
    return new, old, adv, step_cu


@settings(deadline=None, max_examples=40)
@given(ppo_case())
def test_ppo_clip_loss_matches_its_definition(case):
    new, old, adv, step_cu = case
    # ratio 1: loss = −mean A, nothing clipped
    loss, stats = policy_loss(old.clone(), old, adv, step_cu)
    torch.testing.assert_close(loss, -adv.mean())
    assert stats["policy/clip_frac"] == 0.0
    # the general token-level case against a direct formula
    new = new.clone().requires_grad_(True)
    loss, stats = policy_loss(new, old, adv, step_cu, clip_eps=0.2, dual_clip=0.0)
    ratio = (new - old).exp()
    k3 = (ratio - 1) - (new - old)  # the k3 estimate of KL(π_θold ‖ π_θ) per token, >= 0
    assert math.isclose(stats["policy/approx_kl"], k3.mean().item(), rel_tol=1e-5, abs_tol=1e-7) and stats["policy/approx_kl"] >= 0
    expected = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    torch.testing.assert_close(loss, expected)
    # tokens clipped on the profitable side get no gradient
    loss.backward()
    dead = ((adv > 0) & (ratio > 1.2)) | ((adv < 0) & (ratio < 0.8))
    assert torch.all(new.grad[dead] == 0)
    # dual clip bounds the loss of a negative advantage by −c·A
    loss_dc, _ = policy_loss(new.detach(), old, adv, step_cu, dual_clip=3.0)
    terms = torch.where(adv < 0, torch.minimum(-torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv), -3.0 * adv),
                        -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv))
    torch.testing.assert_close(loss_dc, terms.detach().mean())


def test_step_level_ratio_is_the_product_of_token_ratios():
    old = torch.tensor([-1.0, -2.0, -0.5])
    new = torch.tensor([-0.9, -2.1, -0.3])
    step_cu = torch.tensor([0, 2, 3])
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss, _ = policy_loss(new, old, adv, step_cu, ratio_level="step", dual_clip=0.0)
    rho = torch.tensor([torch.exp(torch.tensor(0.1 - 0.1)), torch.exp(torch.tensor(0.2))])  # step 1: e^0, step 2: e^0.2
    expected = -torch.stack([torch.min(rho[0] * 1, rho[0].clamp(0.8, 1.2)), torch.min(rho[1] * -1, rho[1].clamp(0.8, 1.2) * -1)]).mean()
    torch.testing.assert_close(loss, expected)
    # 1-token steps: step level == token level
    one = torch.arange(4)
    a, _ = policy_loss(new, old, adv, one, ratio_level="step")
    b, _ = policy_loss(new, old, adv, one, ratio_level="token")
    torch.testing.assert_close(a, b)


def test_istar_update_moves_the_policy_and_nan_stops_it(setup):
    tok, policy, batch = setup
    policy, prm = copy.deepcopy(policy), copy.deepcopy(policy)
    cfg = cfg_for()
    popt, ropt = torch.optim.AdamW(policy.parameters(), lr=1e-3), torch.optim.AdamW(prm.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = istar_update(policy, prm, popt, ropt, batch, cfg, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values() if isinstance(v, float) and v == v)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, policy.parameters()))
    bad = copy.copy(batch)
    bad.outcome = batch.outcome.clone()
    bad.outcome[0] = float("nan")
    with pytest.raises(NonFiniteError, match="advantage"):
        istar_update(policy, prm, popt, ropt, bad, dataclasses.replace(cfg, istar=False))
    snapshot = [p.detach().clone() for p in policy.parameters()]
    adv = torch.zeros(int(batch.step_cu[-1]))
    adv[0] = float("inf")
    old = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
    with pytest.raises(NonFiniteError):
        update_policy(policy, popt, batch, old, adv, cfg)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, policy.parameters()))  # nothing applied


def test_istar_update_logs_the_entropy_covariance_under_the_losss_token_weights(setup):
    """policy/logp_adv_cov weights each token as the loss does: equally under token-mean, 1 / (its
    trajectory's tokens) under seq-mean-token-mean; with trajectories of unequal length the two differ."""
    tok, policy, batch = setup
    old = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach().float()  # (T,)
    tok_n = (batch.step_cu[batch.traj_cu[1:]] - batch.step_cu[batch.traj_cu[:-1]]).long()  # (N,)
    assert tok_n.unique().numel() > 1
    got = {}
    for loss_agg, weight in (("token-mean", None), ("seq-mean-token-mean", torch.repeat_interleave(1.0 / tok_n.float(), tok_n))):
        cfg = cfg_for(istar=False, loss_agg=loss_agg)
        token_adv, _ = compute_advantages(batch, None, cfg)  # (T,)
        model = copy.deepcopy(policy)
        stats = istar_update(model, None, torch.optim.AdamW(model.parameters(), lr=1e-3), None, batch, cfg,
                             generator=torch.Generator().manual_seed(0))
        expected = logp_adv_cov(old, token_adv, weight)
        for key in ("policy/logp_adv_cov", "policy/logp_adv_cov_neg"):
            assert stats[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-7)
        got[loss_agg] = stats["policy/logp_adv_cov"]
    assert got["token-mean"] != pytest.approx(got["seq-mean-token-mean"], rel=1e-3)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("ratio_level", ["token", "step"])
def test_micro_batching_does_not_change_the_policy_gradient(setup, ratio_level, loss_agg):
    """Token- (step-) mean over a minibatch: micro-batches are weighted by their tokens (steps)."""
    tok, policy, batch = setup
    old = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
    adv = torch.randn(int(batch.step_cu[-1]), generator=torch.Generator().manual_seed(1))
    grads = []
    for micro_batch, tokens in ((1, 32768), (64, 32768), (64, 2000)):
        model = copy.deepcopy(policy)
        captured = {}

        class Capture(torch.optim.SGD):
            def step(self, closure=None):
                captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

        cfg = cfg_for(micro_batch=micro_batch, micro_batch_tokens=tokens, minibatches=1, ratio_level=ratio_level,
                      entropy_coef=0.0, grad_clip=1e9, loss_agg=loss_agg)
        stats = update_policy(model, Capture(model.parameters(), lr=0.0), batch, old, adv, cfg, generator=torch.Generator().manual_seed(0))
        grads.append((captured, stats))
    (g1, s1), *others = grads
    for g2, s2 in others:
        for name in g2:
            torch.testing.assert_close(g1[name], g2[name], atol=1e-6, rtol=1e-4)
        assert abs(s1["policy/pg_loss"] - s2["policy/pg_loss"]) < 1e-5  # logged stats use the same weights


@settings(deadline=None, max_examples=40)
@given(order=st.permutations(list(range(12))), micro_batch=st.integers(1, 13), tokens=st.integers(1, 5000))
def test_micro_batches_hold_whole_trajectories_within_both_limits(setup, order, micro_batch, tokens):
    _, _, batch = setup
    cfg = cfg_for(micro_batch=micro_batch, micro_batch_tokens=tokens)
    chunks = _chunks(batch, torch.tensor(order), cfg)
    assert torch.cat(chunks).tolist() == order  # a partition, in order
    for c in chunks:
        assert 1 <= c.numel() <= micro_batch
        assert c.numel() == 1 or batch.select(c).input_ids.numel() <= tokens  # (rows, longest row) of the forward


@settings(deadline=None, max_examples=50)
@given(steps=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=5), min_size=1, max_size=7),
       extra=st.integers(0, 5), level=st.sampled_from(["token", "step"]))
def test_seq_mean_gives_every_trajectory_the_same_weight(steps, extra, level):
    """seq-mean-token-mean: the weights of a trajectory's terms sum to 1/n_mb whatever its length."""
    class Part:
        pass
    part = Part()
    part.traj_cu = torch.tensor([0] + [sum(len(x) for x in steps[:i + 1]) for i in range(len(steps))])  # (N+1,)
    part.step_cu = torch.tensor([0] + torch.tensor([n for x in steps for n in x]).cumsum(0).tolist())  # (S+1,)
    n_mb = len(steps) + extra  # the minibatch may hold trajectories of other micro-batches
    unit_w, tok_w = _seq_mean_weights(part, level, n_mb)
    units = [sum(x) if level == "token" else len(x) for x in steps]
    assert unit_w.numel() == sum(units) and tok_w.numel() == sum(sum(x) for x in steps)
    for w, per in ((unit_w, units), (tok_w, [sum(x) for x in steps])):
        sums = torch.stack([c.sum() for c in torch.split(w, per)])  # (N,)
        torch.testing.assert_close(sums, torch.full_like(sums, 1 / n_mb))
        assert all(torch.all(c == c[0]) for c in torch.split(w, per))  # equal inside a trajectory


def test_seq_mean_loss_is_the_mean_over_trajectories_of_their_token_means(setup):
    """One minibatch, entropy on: the gradient of update_policy equals that of the direct formula."""
    tok, policy, batch = setup
    old = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask).detach()
    adv = torch.randn(int(batch.step_cu[-1]), generator=torch.Generator().manual_seed(2))
    cfg = cfg_for(micro_batch=5, minibatches=1, entropy_coef=0.01, grad_clip=1e9, loss_agg="seq-mean-token-mean",
                  dual_clip=0.0)
    model, captured = copy.deepcopy(policy), {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    update_policy(model, Capture(model.parameters(), lr=0.0), batch, old, adv, cfg, generator=torch.Generator().manual_seed(0))
    ref = copy.deepcopy(policy)
    logp, ent = token_logprobs(ref, batch.input_ids, batch.attention_mask, batch.action_mask, with_entropy=True)
    tok_cu = batch.step_cu[batch.traj_cu].tolist()  # (N+1,)
    per_traj = []
    for a, b in zip(tok_cu[:-1], tok_cu[1:]):
        pg, _ = policy_loss(logp[a:b], old[a:b], adv[a:b], batch.step_cu, dual_clip=0.0)  # token-mean of one trajectory
        per_traj.append(pg - 0.01 * ent[a:b].mean())
    torch.stack(per_traj).mean().backward()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(captured[n], p.grad, atol=1e-6, rtol=1e-4)
