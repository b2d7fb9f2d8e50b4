"""Properties of the episode- and step-level advantages (paper.md E4-E7), against naive loops."""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from advantage import (
    combined_advantage,
    episode_advantage,
    grpo_advantage,
    merged_advantage,
    reinforce_pp_advantage,
    rloo_advantage,
    scale_step_rewards,
)

ALGOS = ["rloo", "grpo", "reinforce++"]


@st.composite
def groups(draw, max_groups=5, max_size=6):
    """Outcome rewards (N,) in contiguous groups (group_cu) of size 1..max_size, with ties likely."""
    sizes = draw(st.lists(st.integers(1, max_size), min_size=1, max_size=max_groups))
    # multiples of 1/8 (and the shifts below) are exact in fp32, so shift tests test the code, not rounding
    values = st.one_of(st.sampled_from([0.0, 1.0, -0.5]), st.integers(-80, 80).map(lambda k: k / 8))
    outcome = torch.tensor(draw(st.lists(values, min_size=sum(sizes), max_size=sum(sizes))), dtype=torch.float32)
    group_cu = torch.tensor([0] + list(torch.tensor(sizes).cumsum(0).tolist()), dtype=torch.int64)
    return outcome, group_cu


@st.composite
def step_batch(draw):
    """A packed batch: groups of trajectories with 1..4 steps of 1..5 tokens each."""
    outcome, group_cu = draw(groups(max_groups=4, max_size=4))
    n = outcome.numel()
    steps = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    tokens = draw(st.lists(st.integers(1, 5), min_size=sum(steps), max_size=sum(steps)))
    traj_cu = torch.tensor([0] + torch.tensor(steps).cumsum(0).tolist())
    step_cu = torch.tensor([0] + torch.tensor(tokens).cumsum(0).tolist())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    step_reward = torch.randn(sum(steps), generator=gen)
    return outcome, step_reward, step_cu, traj_cu, group_cu


def naive_groups(group_cu):
    return [list(range(int(group_cu[g]), int(group_cu[g + 1]))) for g in range(group_cu.numel() - 1)]


def naive_std(xs):
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@settings(deadline=None, max_examples=60)
@given(groups())
@example((torch.tensor([3.0]), torch.tensor([0, 1])))
def test_episode_advantages_match_naive_loops(data):
    outcome, group_cu = data
    R = outcome.tolist()
    rloo, grpo = [0.0] * len(R), [0.0] * len(R)
    for idx in naive_groups(group_cu):
        vals = [R[i] for i in idx]
        mean, std = sum(vals) / len(vals), naive_std(vals)
        for i in idx:
            others = [R[j] for j in idx if j != i]
            rloo[i] = R[i] - sum(others) / len(others) if others else 0.0  # leave-one-out baseline
            grpo[i] = (R[i] - mean) / (std + 1e-6)
    torch.testing.assert_close(rloo_advantage(outcome, group_cu), torch.tensor(rloo), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grpo_advantage(outcome, group_cu), torch.tensor(grpo), atol=1e-3, rtol=1e-3)


@settings(deadline=None, max_examples=40)
@given(groups(), st.integers(-800, 800).map(lambda k: k / 8))
def test_shift_invariance_and_ties(data, shift):
    outcome, group_cu = data
    for algo in ALGOS:
        a = episode_advantage(outcome, group_cu, algo)
        b = episode_advantage(outcome + shift, group_cu, algo)
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)
    # every reward equal -> exactly 0 everywhere, never NaN (10.6 and -1.7 do not round exactly in fp32)
    for algo in ALGOS:
        for value in (0.7, 10.6, -1.7, -1.5):
            assert torch.equal(episode_advantage(torch.full_like(outcome, value), group_cu, algo), torch.zeros_like(outcome))
    # groups tied at different values: still exactly 0 (REINFORCE++ whitens the zeros, not residues)
    tied = torch.tensor([10.6, -1.7, -1.5, 0.3, 7.0])[torch.arange(group_cu.numel() - 1) % 5]
    tied = torch.repeat_interleave(tied, group_cu[1:] - group_cu[:-1])
    for algo in ALGOS:
        assert torch.equal(episode_advantage(tied, group_cu, algo), torch.zeros_like(tied))


def test_group_of_one_gets_zero_and_rloo_scaling():
    group_cu = torch.tensor([0, 1, 4])
    outcome = torch.tensor([5.0, 1.0, 0.0, 0.0])
    for algo in ("rloo", "grpo"):
        assert episode_advantage(outcome, group_cu, algo)[0] == 0.0
    # RLOO = G/(G-1) (R - mean): G=3, mean 1/3 -> 1.5 * 2/3 = 1
    torch.testing.assert_close(rloo_advantage(outcome, group_cu)[1], torch.tensor(1.0))


@settings(deadline=None, max_examples=30)
@given(groups(), st.floats(0.01, 100))
def test_grpo_scale_invariance(data, c):
    outcome, group_cu = data
    a = grpo_advantage(outcome, group_cu)
    b = grpo_advantage(outcome * c, group_cu)
    # ε breaks exact invariance only when a group's std is ~ε: require groups with real spread
    spread = torch.tensor([naive_std(outcome[i].tolist()) > 1e-2 or len(i) == 1 for i in naive_groups(group_cu)])
    if spread.all():
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_reinforce_pp_whitens_over_the_batch():
    outcome = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0, 1.0])
    adv = reinforce_pp_advantage(outcome, torch.tensor([0, 3, 6]))
    assert abs(adv.mean().item()) < 1e-6 and abs(adv.std().item() - 1.0) < 1e-5


def naive_combined(outcome_adv, step_reward, step_cu, traj_cu, group_cu, alpha):
    """E6 + E7 by hand: pool all steps of all trajectories of a group, standardise, broadcast."""
    token_adv = [0.0] * int(step_cu[-1])
    r = step_reward.tolist()
    for idx in naive_groups(group_cu):
        steps = [s for i in idx for s in range(int(traj_cu[i]), int(traj_cu[i + 1]))]
        vals = [r[s] for s in steps]
        mean, std = sum(vals) / len(vals), naive_std(vals)
        for i in idx:
            for s in range(int(traj_cu[i]), int(traj_cu[i + 1])):
                for t in range(int(step_cu[s]), int(step_cu[s + 1])):
                    token_adv[t] = float(outcome_adv[i]) + alpha * (r[s] - mean) / (std + 1e-6)
    return torch.tensor(token_adv)


@settings(deadline=None, max_examples=40)
@given(step_batch(), st.sampled_from(ALGOS), st.floats(0.0, 2.0))
def test_combined_advantage_matches_naive_and_alpha_zero_is_base(batch, algo, alpha):
    outcome, step_reward, step_cu, traj_cu, group_cu = batch
    episode_adv = episode_advantage(outcome, group_cu, algo)
    token_adv, step_adv = combined_advantage(episode_adv, step_reward, step_cu, traj_cu, group_cu, alpha, impl="reference")
    ref = naive_combined(episode_adv, step_reward, step_cu, traj_cu, group_cu, alpha)
    torch.testing.assert_close(token_adv, ref, atol=1e-3, rtol=1e-3)
    # α = 0: exactly the base algorithm, broadcast to every action token of the trajectory (E7)
    token_adv0, _ = combined_advantage(episode_adv, step_reward, step_cu, traj_cu, group_cu, 0.0, impl="reference")
    tokens_per_traj = step_cu[traj_cu[1:]] - step_cu[traj_cu[:-1]]
    assert torch.equal(token_adv0, torch.repeat_interleave(episode_adv, tokens_per_traj))
    assert step_adv.shape == step_reward.shape and torch.isfinite(step_adv).all()


def naive_merged(outcome, step_reward, step_cu, traj_cu, group_cu, alpha, algo):
    """The "merged rewards" ablation by hand: m = R_i + α·r_{i,t} per step, the group's steps pooled,
    RLOO's leave-one-out / GRPO's standardisation / REINFORCE++'s centring then batch whitening."""
    R, r = outcome.tolist(), step_reward.tolist()
    step_adv = [0.0] * len(r)
    for idx in naive_groups(group_cu):
        steps = [(i, s) for i in idx for s in range(int(traj_cu[i]), int(traj_cu[i + 1]))]
        m = {s: R[i] + alpha * r[s] for i, s in steps}
        mean, std = sum(m.values()) / len(m), naive_std(list(m.values()))
        for _, s in steps:
            others = [m[o] for _, o in steps if o != s]
            step_adv[s] = {"rloo": m[s] - sum(others) / len(others) if others else 0.0,
                           "grpo": (m[s] - mean) / (std + 1e-6), "reinforce++": m[s] - mean}[algo]
    if algo == "reinforce++":
        mean, std = sum(step_adv) / len(step_adv), naive_std(step_adv)
        step_adv = [(a - mean) / (std + 1e-6) for a in step_adv]
    return torch.tensor([step_adv[s] for s in range(len(r)) for _ in range(int(step_cu[s]), int(step_cu[s + 1]))])


# α is 0 or at least 0.25: with α ~ 1e-8, R + α·r differs from R below fp32's resolution and GRPO
# would standardise rounding noise (as it would for outcomes that differ by that little)
@settings(deadline=None, max_examples=40)
@given(step_batch(), st.sampled_from(ALGOS), st.one_of(st.just(0.0), st.floats(0.25, 2.0)))
def test_merged_rewards_match_naive_and_one_step_alpha_zero_is_base(batch, algo, alpha):
    outcome, step_reward, step_cu, traj_cu, group_cu = batch
    token_adv, step_adv = merged_advantage(outcome, step_reward, step_cu, traj_cu, group_cu, alpha, algo)
    torch.testing.assert_close(token_adv, naive_merged(outcome, step_reward, step_cu, traj_cu, group_cu, alpha, algo), atol=1e-3, rtol=1e-3)
    assert step_adv.shape == step_reward.shape and torch.isfinite(token_adv).all()
    # one step per trajectory and α = 0: merging changes nothing, the base algorithm exactly (E5)
    n = outcome.numel()
    one = torch.arange(n + 1)
    token0, _ = merged_advantage(outcome, step_reward[:n], one, one, group_cu, 0.0, algo)
    torch.testing.assert_close(token0, episode_advantage(outcome, group_cu, algo), atol=1e-6, rtol=1e-6)


def test_merged_rewards_let_the_larger_signal_drown_the_other_where_e7_keeps_both():
    """Why the paper combines advantages (E7) rather than rewards: one normalisation of R + α·r is
    ruled by whichever varies more. With step rewards 1000× the outcome's spread GRPO's merged
    advantage is the standardised step reward alone (the outcome's sign is lost); E7 keeps A^E whole."""
    outcome = torch.tensor([1.0, 0.0])  # one group: a win and a loss
    step_cu, traj_cu, group_cu = torch.arange(5), torch.tensor([0, 2, 4]), torch.tensor([0, 2])
    r = torch.tensor([-1.0, -0.5, 0.5, 1.0])  # the PRM prefers the lost trajectory's steps
    merged, _ = merged_advantage(outcome, 1000.0 * r, step_cu, traj_cu, group_cu, 1.0, "grpo")
    torch.testing.assert_close(merged, (r - r.mean()) / r.std(), atol=2e-3, rtol=0)
    assert (merged[:2] < 0).all()  # the won trajectory's steps are pushed down
    episode_adv = grpo_advantage(outcome, group_cu)
    token_adv, step_adv = combined_advantage(episode_adv, 1000.0 * r, step_cu, traj_cu, group_cu, 1.0, impl="reference")
    torch.testing.assert_close(token_adv - step_adv, torch.repeat_interleave(episode_adv, torch.tensor([2, 2])))
    torch.testing.assert_close(step_adv, (r - r.mean()) / r.std(), atol=1e-5, rtol=0)  # E6 cancels the 1000


def test_step_reward_scaling_e4_replaces_the_standardisation():
    r = torch.tensor([0.5, -2.0, 1.0])
    out = scale_step_rewards(r)
    assert out.abs().max() <= 1.0 and torch.allclose(out * (2.0 + 1e-6), r)
    # E4 mode: A^S is the scaled reward itself, so the scale matters (E6 would cancel it)
    episode_adv = torch.tensor([1.0, -1.0])
    step_cu, traj_cu, group_cu = torch.tensor([0, 2, 3, 4]), torch.tensor([0, 2, 3]), torch.tensor([0, 2])
    token_adv, step_adv = combined_advantage(episode_adv, out, step_cu, traj_cu, group_cu, 0.5, standardise=False)
    assert torch.equal(step_adv, out)
    torch.testing.assert_close(token_adv, torch.tensor([1 + 0.5 * out[0], 1 + 0.5 * out[0], 1 + 0.5 * out[1], -1 + 0.5 * out[2]]))


def test_bad_input_is_rejected_with_a_named_argument():
    with pytest.raises(ValueError, match="outcome"):
        episode_advantage(torch.zeros(0), torch.tensor([0]), "rloo")
    with pytest.raises(ValueError, match="group_cu"):
        episode_advantage(torch.zeros(3), torch.tensor([0, 2]), "grpo")
    with pytest.raises(ValueError, match="group_cu"):
        episode_advantage(torch.zeros(3), torch.tensor([0, 0, 3]), "grpo")
    with pytest.raises(ValueError, match="algo"):
        episode_advantage(torch.zeros(3), torch.tensor([0, 3]), "ppo")
    with pytest.raises(ValueError, match="step_reward"):
        combined_advantage(torch.zeros(1), torch.zeros(0), torch.tensor([0]), torch.tensor([0, 0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="step_reward"):
        merged_advantage(torch.zeros(1), torch.zeros(0), torch.tensor([0]), torch.tensor([0, 0]), torch.tensor([0, 1]))
