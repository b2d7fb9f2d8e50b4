"""credit.py: the within-group AUC against a brute-force count, and the credit/* metrics."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from credit import credit_stats, logp_adv_cov, safe_move_labels, surprise_corr, within_group_auc, within_group_corr, within_group_gap
from prm import step_rewards
from rollout import Trajectory, pack


def brute_auc(score, label, group):
    wins = pairs = 0.0
    for i in range(len(score)):
        for j in range(len(score)):
            if label[i] == 1 and label[j] == 0 and group[i] == group[j]:
                pairs += 1
                wins += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
    return wins, int(pairs)


steps = st.lists(st.tuples(st.integers(-3, 3).map(lambda x: x / 2), st.integers(-1, 1), st.integers(0, 3)), max_size=60)


def _columns(steps):
    """(score, label, group) lists of a drawn list of steps."""
    return tuple(list(x) for x in zip(*steps)) if steps else ([], [], [])


def _tensors(score, label, group, dtype=torch.float32):
    return torch.tensor(score, dtype=dtype), torch.tensor(label, dtype=torch.int8), torch.tensor(group, dtype=torch.long)


@settings(deadline=None, max_examples=200)
@given(steps=steps, shift=st.floats(-100, 100))
def test_within_group_auc_equals_the_brute_force_count_and_ignores_other_groups(steps, shift):
    score, label, group = _columns(steps)
    wins, pairs = within_group_auc(*_tensors(score, label, group))
    ref_wins, ref_pairs = brute_auc(score, label, group)
    assert pairs == ref_pairs and wins == pytest.approx(ref_wins)
    # shifting one group's scores changes nothing: steps of different groups are never compared
    moved = [s + shift if g == 0 else s for s, g in zip(score, group)]
    assert within_group_auc(*_tensors(moved, label, group)) == (wins, pairs)


@settings(deadline=None, max_examples=200)
@given(steps=steps, shift=st.floats(-100, 100))
def test_within_group_gap_is_the_mean_pair_difference_and_ignores_other_groups(steps, shift):
    score, label, group = _columns(steps)
    total, pairs = within_group_gap(*_tensors(score, label, group))
    diffs = [score[i] - score[j] for i in range(len(score)) for j in range(len(score))
             if label[i] == 1 and label[j] == 0 and group[i] == group[j]]
    assert pairs == len(diffs) and total == pytest.approx(sum(diffs), abs=1e-9)
    moved = [s + shift if g == 0 else s for s, g in zip(score, group)]  # a group's offset cancels in its pairs
    assert within_group_gap(*_tensors(moved, label, group, torch.float64))[0] == pytest.approx(total, abs=1e-6)


def _batch(labels_per_traj, groups):
    trajs = []
    for labels, g in zip(labels_per_traj, groups):
        n = len(labels)
        trajs.append(Trajectory(task_seed=g, group_id=g, rows=[[1] * (2 * n + 1)], action_masks=[[False] + [True] * (2 * n)],
                                logp=[0.0] * (2 * n), step_lengths=[2] * n, step_rewards=[0.0] * n,
                                step_valid=[True] * n, step_optimal=labels))
    return pack(trajs)


def _per_token(batch, episode_adv, step_adv):
    """(T,) A^E + A^S of every step, given to each of its action tokens (E7)."""
    steps_per_traj = (batch.traj_cu[1:] - batch.traj_cu[:-1]).long()
    per_step = torch.repeat_interleave(episode_adv, steps_per_traj) + step_adv  # (S,)
    return torch.repeat_interleave(per_step, (batch.step_cu[1:] - batch.step_cu[:-1]).long())


def test_credit_stats_of_perfect_noisy_and_unlabelled_step_scores():
    batch = _batch([[1, 1, 0], [0, 0], [1, 0], [1, -1]], groups=[0, 0, 1, 1])
    label = batch.step_optimal.float()  # (S,)
    episode_adv = torch.tensor([1.0, -1.0, 0.0, 0.0])  # group 0: the better trajectory has more good steps
    base = credit_stats(batch, episode_adv)
    assert base["credit/optimal_frac"] == pytest.approx(4 / 8)
    assert base["credit/adv_auc"] == base["credit/episode_auc"] and "credit/prm_auc" not in base
    # episode credit: group 0 pairs (2 good x 3 bad): good of traj 0 beat traj 1's bad (4 wins), tie with its own (2 x ½);
    # group 1 (2 good x 1 bad): all tied -> 1
    assert base["credit/episode_auc"] == pytest.approx((4 + 1 + 1) / 8)
    perfect = credit_stats(batch, episode_adv, implicit_reward=label, token_adv=_per_token(batch, episode_adv, 100.0 * label))
    assert perfect["credit/prm_auc"] == 1.0 and perfect["credit/adv_auc"] == 1.0
    # gaps: group 0's 4 pairs across its trajectories differ by 2 in A^E, its other 2 and group 1's 2 by 0: 8 / 8;
    # a 0/1 label differs by 1 in every pair, so A^E + 100·label adds 100
    assert base["credit/episode_gap"] == pytest.approx(1.0) and base["credit/adv_gap"] == base["credit/episode_gap"]
    assert perfect["credit/prm_gap"] == 1.0
    assert perfect["credit/adv_gap"] == pytest.approx(base["credit/episode_gap"] + 100.0)
    inverted = credit_stats(batch, episode_adv, implicit_reward=-label, token_adv=_per_token(batch, episode_adv, -label))
    assert inverted["credit/prm_auc"] == 0.0
    unlabelled = _batch([[-1, -1], [-1]], groups=[0, 0])
    assert credit_stats(unlabelled, torch.zeros(2)) == {}


def _safe_reference(labels):
    """safe_move_labels of one trajectory's labels, step by step."""
    out = []
    for t, y in enumerate(labels):
        nxt = labels[t + 1] if t + 1 < len(labels) else None
        out.append(1 if y == 1 or (y == 0 and nxt is not None and nxt >= 0) else 0 if y == 0 and nxt == -1 else -1)
    return out


@settings(deadline=None, max_examples=200)
@given(trajs=st.lists(st.lists(st.integers(-1, 1), min_size=1, max_size=8), min_size=1, max_size=6))
def test_safe_move_labels_follow_each_trajectory_and_never_cross_into_the_next(trajs):
    batch = _batch(trajs, groups=list(range(len(trajs))))
    assert safe_move_labels(batch).tolist() == [x for labels in trajs for x in _safe_reference(labels)]


def test_safe_move_labels_on_sokoban_mark_exactly_the_moves_into_a_dead_end():
    """On the real env: a step's derived label is 1 when the board after it is solvable, 0 when it is
    not (checked by BFS), for every step whose fate the labels can tell."""
    import numpy as np
    from envs.base import wrap_action
    from envs.sokoban import SokobanEnv
    rng, trajs, truth = np.random.default_rng(0), [], []
    for seed in range(20):
        env = SokobanEnv(max_steps=15)
        env.reset(seed=seed)
        labels, solvable = [], []
        while not env.done:
            move = env.expert_action() if rng.random() < 0.2 else env.random_action(rng)
            info = env.step(wrap_action(move))[3]
            labels.append(-1 if info["optimal"] is None else int(info["optimal"]))
            solvable.append(env.solve() is not None)  # [] when won
        trajs.append(labels)
        truth += solvable
    safe = safe_move_labels(_batch(trajs, groups=list(range(len(trajs))))).tolist()
    known = [(s, t) for s, t in zip(safe, truth) if s >= 0]
    assert 0 < sum(s == 0 for s, _ in known) < len(known)  # the walks made both kinds of move
    assert all(s == int(t) for s, t in known)


def test_safe_auc_scores_the_moves_into_a_dead_end():
    # group 0: traj 0 walks into a dead end at its second step (0 then -1); traj 1 detours but stays solvable
    batch = _batch([[1, 0, -1, -1], [0, 1, 0]], groups=[0, 0])
    stats = credit_stats(batch, torch.tensor([-1.0, 1.0]))
    assert stats["credit/fatal_frac"] == pytest.approx(1 / 4)  # 4 moves of known fate: 3 safe, 1 fatal
    # safe moves: traj 0 step 0 (A -1, ties the fatal move), traj 1 steps 0-1 (A 1, beat it): (0.5 + 2) / 3
    assert stats["credit/episode_safe_auc"] == pytest.approx(2.5 / 3) == stats["credit/adv_safe_auc"]
    fatal_low = torch.tensor([0.0, -5.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # r_φ singles out the fatal move
    with_prm = credit_stats(batch, torch.tensor([-1.0, 1.0]), fatal_low, _per_token(batch, torch.tensor([-1.0, 1.0]), fatal_low))
    assert with_prm["credit/prm_safe_auc"] == 1.0 and with_prm["credit/prm_safe_gap"] == pytest.approx(5.0)
    no_fatal = credit_stats(_batch([[1, 0], [0, 1]], groups=[0, 0]), torch.zeros(2))  # a last step's fate is unknown
    assert no_fatal["credit/fatal_frac"] == 0.0 and "credit/episode_safe_auc" not in no_fatal


def test_probes_count_the_lost_episodes_decided_by_a_move_into_a_dead_end():
    from bench.common import fatal_moves
    batch = _batch([[1, 0, -1, -1], [0, 1, 0], [1, 1, 1, 0, -1], [1]], groups=[0, 0, 1, 1])
    batch.won = torch.tensor([False, False, False, True])  # lost: a fatal 2nd move, no fatal move, a fatal 4th move
    assert fatal_moves([batch]) == "lost episodes: 3, 2 of them after a move into a dead end, made at step 2 / 4 / 4 (quartiles)"
    assert fatal_moves([_batch([[1, 0]], groups=[0])]) == ""  # no dead end: nothing to say


def test_token_granularity_sums_rewards_and_averages_advantages_per_step():
    batch = _batch([[1, 0]], groups=[0])  # two steps of two tokens each
    token_r = torch.tensor([3.0, -2.0, 0.5, 0.0])  # step sums 1.0 (good) and 0.5 (bad): good wins
    token_a = torch.tensor([0.0, 0.0, 1.0, -0.5])  # the step means of the token advantages: 0 (good), 0.25 (bad): bad wins
    stats = credit_stats(batch, torch.zeros(1), token_r, token_a, granularity="token")
    assert stats["credit/prm_auc"] == 1.0 and stats["credit/adv_auc"] == 0.0


def test_within_group_auc_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="within_group_auc"):
        within_group_auc(torch.zeros(3), torch.zeros(2, dtype=torch.int8), torch.zeros(3, dtype=torch.long))


def test_prm_probe_learns_credit_that_follows_the_preferences(sokoban_setup):
    """bench.prm_probe.probe on a batch whose good steps are exactly the steps of won trajectories:
    the untrained PRM (r_φ = 0) scores every pair as a tie, the trained one ranks good steps higher
    (it only learns Q(won) > Q(lost), and Q is the sum of the step rewards)."""
    import copy

    from bench.prm_probe import probe
    from config import Config
    from istar import recompute_old_logp

    tok, policy, batch = sokoban_setup
    batch = copy.copy(batch)  # the fixture is shared: label a shallow copy
    batch.step_optimal = torch.repeat_interleave(batch.won.to(torch.int8), batch.num_steps)  # (S,)
    cfg = Config(model_size="tiny", kernels="reference", micro_batch=64)
    old_logp = recompute_old_logp(policy, batch, cfg)
    rows = probe(policy, [(batch, old_logp), (batch, old_logp)], cfg, prm_lr=3e-3, epochs=3)
    assert [r["pass"] for r in rows] == [0, 1, 2, 3] and rows[0]["prm_auc"] == 0.5
    assert rows[-1]["acc"] == 1.0 and rows[-1]["prm_auc"] > 0.7
    assert rows[-1]["episode_auc"] == 1.0  # here A^E alone already separates the labels perfectly


def test_prm_probe_traj_and_policy_auc_match_a_brute_force_count(sokoban_setup, monkeypatch):
    """bench.prm_probe.held_out_stats: traj_auc counts only (good, bad) pairs of one trajectory,
    index_auc only pairs of one group at the same step index, and policy_auc scores log π_θold of
    each whole action within its group, each against a direct count."""
    import copy

    import bench.prm_probe as probe_mod
    from config import Config
    from istar import recompute_old_logp
    from prm import trajectory_scores

    tok, policy, batch = sokoban_setup
    batch = copy.copy(batch)
    S = int(batch.num_steps.sum())
    gen = torch.Generator().manual_seed(1)
    batch.step_optimal = torch.randint(-1, 2, (S,), generator=gen).to(torch.int8)  # (S,) good, bad and unlabelled
    reward = torch.randn(S, generator=gen)  # (S,) a known r_φ
    monkeypatch.setattr(probe_mod, "score_with_prm", lambda *a, **k: reward)
    cfg = Config(model_size="tiny", kernels="reference", micro_batch=64)
    old_logp = recompute_old_logp(policy, batch, cfg)
    stats = probe_mod.held_out_stats(policy, batch, old_logp, cfg)

    steps = batch.num_steps.tolist()
    traj = [i for i, n in enumerate(steps) for _ in range(n)]
    group = torch.repeat_interleave(batch.group_id, batch.num_steps.long()).tolist()
    step_old = trajectory_scores(old_logp, batch.step_cu, "sum")  # (S,)
    label = batch.step_optimal.tolist()

    def count(score, same):
        wins = pairs = 0
        for i in range(S):
            for j in range(S):
                if label[i] == 1 and label[j] == 0 and same[i] == same[j]:
                    pairs += 1
                    wins += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
        return wins / pairs

    index = [k for n in steps for k in range(n)]
    assert stats["traj_auc"] == pytest.approx(count(reward.tolist(), traj))
    assert stats["policy_auc"] == pytest.approx(count(step_old.tolist(), group))
    assert stats["index_auc"] == pytest.approx(count(reward.tolist(), list(zip(group, index))))


@settings(deadline=None, max_examples=200)
@given(steps=steps, scale=st.sampled_from([-3.0, -0.5, 0.25, 2.0]), shift=st.floats(-100, 100))
def test_within_group_corr_is_pearson_of_the_group_centred_values(steps, scale, shift):
    x, _, group = _columns(steps)
    gen = torch.Generator().manual_seed(len(x))
    y = torch.randn(len(x), generator=gen, dtype=torch.float64)  # (S,)
    xt, _, g = _tensors(x, [0] * len(x), group, torch.float64)
    sxy, sxx, syy = within_group_corr(xt, y, g)
    centre = lambda v: v - torch.tensor([float(v[g == k].mean()) for k in g], dtype=v.dtype)  # noqa: E731  step by step
    assert sxy == pytest.approx(float((centre(xt) * centre(y)).sum()), abs=1e-9)
    assert sxx == pytest.approx(float((centre(xt) ** 2).sum()), abs=1e-9)
    if sxx > 1e-9:  # y = scale·x + a constant per group: correlation ±1
        offset = torch.where(g == 0, shift, -shift).double()  # (S,)
        a, b, c = within_group_corr(xt, scale * xt + offset, g)
        assert a / (b * c) ** 0.5 == pytest.approx(1.0 if scale > 0 else -1.0, abs=1e-6)


@pytest.mark.parametrize("granularity", ["step", "token"])
def test_surprise_corr_is_plus_one_for_a_flatter_prm_and_minus_one_for_a_sharper_one(granularity):
    """A PRM whose log-probs are λ·log π_θold (λ < 1: flatter than the sampling policy) gives by E1
    r = β·(λ − 1)·Σ log π_θold = β·(1 − λ)·surprisal: correlation +1; λ > 1 (sharper) gives −1."""
    batch = _batch([[1, 1, 0], [0, 0], [1, 0], [1, -1], [0]], groups=[0, 0, 1, 1, 1])
    old_logp = -torch.rand(int(batch.step_cu[-1]), generator=torch.Generator().manual_seed(0)) * 3  # (T,)
    for lam, sign in ((0.5, 1.0), (1.5, -1.0)):
        if granularity == "token":
            reward = 0.05 * (lam * old_logp - old_logp)  # (T,) token rewards
        else:
            reward = step_rewards(lam * old_logp, old_logp, batch.step_cu, 0.05)  # (S,) E1
        got = surprise_corr(batch, reward, old_logp, granularity)["prm/surprise_corr"]
        assert got == pytest.approx(sign, abs=1e-5)
    assert surprise_corr(batch, torch.zeros(batch.num_steps.sum().item()), old_logp) == {}  # r_φ = 0: no correlation


@settings(deadline=None, max_examples=100)
@given(k=st.integers(2, 24), seed=st.integers(0, 10_000), temp=st.sampled_from([0.3, 1.0, 4.0]))
def test_logp_adv_cov_is_minus_the_entropy_change_of_a_softmax_moved_by_the_advantage(k, seed, temp):
    """Cui et al.'s first-order law, which the metric reads: logits z moved by η·A change the entropy
    of softmax(z) by −η·Cov_π(log π, A). A "batch" holding each of the k actions once, weighted by
    its probability, makes the metric that covariance; the entropy change is measured in fp64."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(k, generator=gen, dtype=torch.float64) * temp  # (K,) logits, peaked to flat
    adv = torch.randn(k, generator=gen, dtype=torch.float64)  # (K,) A of each action
    logp = torch.log_softmax(z, 0)  # (K,)
    entropy = lambda logits: float(-(torch.softmax(logits, 0) * torch.log_softmax(logits, 0)).sum())  # noqa: E731
    eta = 1e-6
    change = (entropy(z + eta * adv) - entropy(z - eta * adv)) / (2 * eta)  # dH/dη at η = 0
    stats = logp_adv_cov(logp, adv, weight=logp.exp())
    assert stats["policy/logp_adv_cov"] == pytest.approx(-change, rel=1e-5, abs=1e-8)


@settings(deadline=None, max_examples=200)
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000), weighted=st.booleans(), shift=st.floats(-50, 50))
def test_logp_adv_cov_is_the_weighted_covariance_and_its_negative_part(n, seed, weighted, shift):
    """Against the two-pass formula, token by token: Σ w (x − x̄)(a − ā) / Σ w with weighted means;
    the part from tokens with A < 0 plus the part from the others is the whole; a constant added to
    log π (not to A: it moves which tokens are negative) changes nothing."""
    gen = torch.Generator().manual_seed(seed)
    x = -torch.rand(n, generator=gen, dtype=torch.float64) * 5  # (T,) log π_θold
    a = torch.randn(n, generator=gen, dtype=torch.float64).round(decimals=1)  # (T,) A, some exactly 0
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1 if weighted else torch.ones(n, dtype=torch.float64)
    xm, am = float((w * x).sum() / w.sum()), float((w * a).sum() / w.sum())
    terms = [float(w[i] * (x[i] - xm) * (a[i] - am) / w.sum()) for i in range(n)]  # (T,) one by one
    got = logp_adv_cov(x.float(), a.float(), w if weighted else None)
    assert got["policy/logp_adv_cov"] == pytest.approx(sum(terms), abs=1e-5)
    assert got["policy/logp_adv_cov_neg"] == pytest.approx(sum(t for t, ai in zip(terms, a.tolist()) if ai < 0), abs=1e-5)
    moved = logp_adv_cov(x.float() + shift, a.float(), w if weighted else None)
    assert moved["policy/logp_adv_cov"] == pytest.approx(got["policy/logp_adv_cov"], abs=1e-4)
    assert logp_adv_cov(torch.zeros(0), torch.zeros(0)) == {}
