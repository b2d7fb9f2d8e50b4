"""The implicit PRM: step rewards (E1), trajectory scores (E2), pairs and the DPO loss (E3), PRIME (E9)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prm import (
    LOG2,
    preference_pairs,
    prime_ce_loss,
    step_rewards,
    token_rewards,
    trajectory_dpo_loss,
    trajectory_scores,
)


@st.composite
def packed(draw):
    """N trajectories of 1..4 steps of 1..6 tokens, random log-probs."""
    n = draw(st.integers(1, 6))
    steps = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    tokens = draw(st.lists(st.integers(1, 6), min_size=sum(steps), max_size=sum(steps)))
    traj_cu = torch.tensor([0] + torch.tensor(steps).cumsum(0).tolist())
    step_cu = torch.tensor([0] + torch.tensor(tokens).cumsum(0).tolist())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    prm_logp = -torch.rand(sum(tokens), generator=gen) * 5
    old_logp = -torch.rand(sum(tokens), generator=gen) * 5
    return prm_logp, old_logp, step_cu, traj_cu


@settings(deadline=None, max_examples=40)
@given(packed(), st.floats(0.01, 1.0))
def test_step_rewards_sum_to_the_trajectory_log_ratio(batch, beta):
    prm_logp, old_logp, step_cu, traj_cu = batch
    r = step_rewards(prm_logp, old_logp, step_cu, beta, impl="reference")  # (S,)
    q = trajectory_scores(r, traj_cu, "sum")  # (N,)
    tok = step_cu[traj_cu]  # token offsets of each trajectory
    for i in range(q.numel()):
        lo, hi = int(tok[i]), int(tok[i + 1])
        expected = beta * (prm_logp[lo:hi].sum() - old_logp[lo:hi].sum())  # paper Eq. 1-2: the trajectory log-ratio
        torch.testing.assert_close(q[i], expected, atol=1e-5, rtol=1e-5)
    mean_q = trajectory_scores(r, traj_cu, "mean")
    torch.testing.assert_close(mean_q, q / (traj_cu[1:] - traj_cu[:-1]))


@settings(deadline=None, max_examples=40)
@given(st.integers(2, 4), st.integers(1, 3), st.integers(0, 2**31), st.floats(0.01, 1.0))
def test_step_reward_drawn_from_the_sampling_policy_averages_minus_beta_kl(vocab, length, seed, beta):
    """E1's bound: over every action y of ``length`` tokens, weighted by π_θold(y), E[r_φ] =
    −β·KL(π_θold ‖ π_φ) ≤ 0, so a policy cannot raise its own mean step reward; against a frozen
    reference (--prm-reference start) no such bound holds (README Results, Locks). Token k of an
    action is drawn from its own categorical here, so the KL is the sum of the positions' KLs."""
    gen = torch.Generator().manual_seed(seed)
    old = torch.log_softmax(2 * torch.randn(length, vocab, generator=gen), -1)  # (L, V) log π_θold per position
    prm = torch.log_softmax(2 * torch.randn(length, vocab, generator=gen), -1)  # (L, V) log π_φ
    actions = torch.cartesian_prod(*[torch.arange(vocab)] * length).reshape(-1, length)  # (V^L, L) every action
    pos = torch.arange(length).expand_as(actions)  # (V^L, L)
    old_logp, prm_logp = old[pos, actions].reshape(-1), prm[pos, actions].reshape(-1)  # (T,) = (V^L·L,)
    step_cu = torch.arange(0, old_logp.numel() + 1, length)  # one step per action
    r = step_rewards(prm_logp, old_logp, step_cu, beta, impl="reference")  # (V^L,)
    p_old = old[pos, actions].sum(1).exp()  # (V^L,) π_θold of each action; sums to 1
    kl = (old.exp() * (old - prm)).sum()  # KL(π_θold ‖ π_φ) of the whole action
    torch.testing.assert_close((p_old * r).sum(), -beta * kl, atol=1e-5, rtol=1e-4)
    assert float((p_old * r).sum()) <= 1e-6


@settings(deadline=None, max_examples=20)
@given(packed())
def test_prm_equal_to_old_policy_gives_zero_rewards_and_log2(batch):
    _, old_logp, step_cu, traj_cu = batch
    r = step_rewards(old_logp.clone(), old_logp, step_cu, impl="reference")
    assert torch.equal(r, torch.zeros_like(r))
    q = trajectory_scores(r, traj_cu)
    n = q.numel()
    won = torch.arange(n) % 2 == 0
    pairs = preference_pairs(won, won.float(), torch.tensor([0, n]))
    if pairs.numel():
        loss, stats = trajectory_dpo_loss(q, pairs)
        assert math.isclose(loss.item(), LOG2, rel_tol=1e-6)
        assert stats["prm/margin"] == 0.0
        assert stats["prm/acc"] == 0.0  # a tie is not a correct ranking: accuracy counts Q⁺ > Q⁻ strictly


def test_pairs_are_positive_times_negative_inside_each_group():
    won = torch.tensor([1, 0, 0, 1, 1, 1, 0]).bool()
    outcome = torch.tensor([1.0, 0.2, 0.0, 1.0, 1.0, 1.0, 0.5])
    group_cu = torch.tensor([0, 3, 5, 7])  # groups: {0,1,2}, {3,4} all positive, {5,6}
    pairs = preference_pairs(won, outcome, group_cu)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 2), (5, 6)]
    graded = preference_pairs(won, outcome, group_cu, rule="graded")
    assert sorted(map(tuple, graded.tolist())) == [(0, 1), (0, 2), (1, 2), (5, 6)]
    with pytest.raises(ValueError, match="pair_rule"):
        preference_pairs(won, outcome, group_cu, rule="all")


def test_no_pairs_gives_zero_loss_and_no_nan():
    q = torch.randn(4, requires_grad=True)
    pairs = preference_pairs(torch.ones(4).bool(), torch.ones(4), torch.tensor([0, 2, 4]))
    loss, stats = trajectory_dpo_loss(q, pairs)
    loss.backward()
    assert loss.item() == 0.0 and stats["prm/num_pairs"] == 0
    assert torch.equal(q.grad, torch.zeros(4))


@settings(deadline=None, max_examples=30)
@given(st.integers(2, 8), st.integers(0, 2**31))
def test_dpo_gradient_is_the_analytic_one(n, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, requires_grad=True)
    won = torch.arange(n) < n // 2  # at least one positive and one negative
    pairs = preference_pairs(won, won.float(), torch.tensor([0, n]))
    loss, stats = trajectory_dpo_loss(q, pairs)
    loss.backward()
    margin = (q[pairs[:, 0]] - q[pairs[:, 1]]).detach()
    coeff = -(1 - torch.sigmoid(margin)) / pairs.shape[0]  # d/dm of −log σ(m), averaged
    expected = torch.zeros(n).index_add(0, pairs[:, 0], coeff).index_add(0, pairs[:, 1], -coeff)
    torch.testing.assert_close(q.grad, expected)
    assert 0.0 <= stats["prm/acc"] <= 1.0


def test_prime_token_rewards_and_ce_loss():
    prm_logp, old_logp = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -1.0])
    r = token_rewards(prm_logp, old_logp, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([0.05, 0.0, 0.05]))
    q = trajectory_scores(r, torch.tensor([0, 2, 3]))  # token offsets of 2 trajectories
    torch.testing.assert_close(q, torch.tensor([0.05, 0.05]))
    loss, stats = prime_ce_loss(q, torch.tensor([True, False]))
    expected = -(torch.log(torch.sigmoid(q[0])) + torch.log(1 - torch.sigmoid(q[1]))) / 2
    torch.testing.assert_close(loss, expected)
