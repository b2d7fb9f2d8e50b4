"""Locks env: seeded tasks, the hidden key rule, the sparse outcome, labels, invalid actions, more carvings."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import parse_config
from envs import make_env
from envs.base import INVALID_PENALTY, wrap_action
from envs.locks import CARVINGS, KEYS, OPENS, RULE, SHAPES, LocksEnv
from train import env_factory

seeds = st.integers(0, 2**31 - 1)
carving_counts = st.integers(1, 16).map(lambda k: 4 * k)  # 4, 8, ..., 64


def test_rule_is_a_bijection_between_carvings_and_keys():
    assert sorted(OPENS) == sorted(CARVINGS) and sorted(OPENS.values()) == sorted(KEYS)
    assert all(c not in OPENS[c] and OPENS[c] not in c for c in CARVINGS)  # the words give nothing away


@settings(max_examples=40, deadline=None)
@given(seed=seeds, doors=st.integers(1, 9))
def test_expert_opens_every_door_and_wins_plus_one(seed, doors):
    env = make_env("locks", max_steps=doors)
    obs = env.reset(seed)
    assert obs.startswith(f"Door 1 of {doors}:")
    for k in range(doors):
        obs, reward, done, info = env.step(wrap_action(env.expert_action()))
        assert info["valid_action"] and info["optimal"] and done == (k == doors - 1)
        assert info["score"] == pytest.approx((k + 1) / doors)
        assert reward == (1.0 if done else 0.0) and info["won"] == done
    with pytest.raises(RuntimeError):
        env.step(wrap_action("gold"))


@settings(max_examples=40, deadline=None)
@given(seed=seeds, wrong=st.integers(0, 5), junk=st.sampled_from(["", "banana", "<action>", "gold key", "up"]))
def test_one_wrong_or_invalid_key_loses_the_episode_and_is_labelled(seed, wrong, junk):
    env = make_env("locks")
    env.reset(seed)
    for k in range(6):
        right = env.expert_action()
        if k != wrong:
            info = env.step(wrap_action(right.upper()))[3]  # case does not matter
            assert info["optimal"] and info["valid_action"]
        elif junk:
            _, reward, _, info = env.step(junk if junk.startswith("<") else wrap_action(junk))
            assert not info["valid_action"] and reward == pytest.approx(-INVALID_PENALTY) and info["optimal"] is False
        else:
            other = next(key for key in KEYS if key != right)
            _, reward, _, info = env.step(wrap_action(other))
            assert info["valid_action"] and reward == 0.0 and info["optimal"] is False
    assert env.done and not info["won"] and env.opened == 5 and info["score"] == pytest.approx(5 / 6)


def test_same_seed_same_doors_different_seeds_differ_and_carvings_are_uniform():
    a, b = LocksEnv(), LocksEnv()
    assert a.reset(7) == b.reset(7) and a.carvings == b.carvings
    seen = [c for s in range(2000) for c in (a.reset(s), a.carvings)[1]]
    assert len({tuple((a.reset(s), a.carvings)[1]) for s in range(50)}) > 45
    freq = np.array([seen.count(c) for c in CARVINGS]) / len(seen)
    assert np.allclose(freq, 0.25, atol=0.02)


def test_the_next_observation_never_tells_whether_the_key_worked():
    right, wrong = LocksEnv(), LocksEnv()
    right.reset(3), wrong.reset(3)
    other = next(key for key in KEYS if key != right.expert_action())
    assert right.step(wrap_action(right.expert_action()))[0] == wrong.step(wrap_action(other))[0]


def test_random_action_covers_the_keys_and_bad_arguments_name_themselves():
    env, rng = LocksEnv(), np.random.default_rng(0)
    env.reset(0)
    assert {env.random_action(rng) for _ in range(200)} == set(KEYS)
    for bad in (0, -1, 2.5, True, "6"):
        with pytest.raises(ValueError, match="max_steps"):
            LocksEnv(max_steps=bad)
    env = LocksEnv(max_steps=9)  # train.py's --max-steps: the number of doors
    assert env.reset(1).startswith("Door 1 of 9:") and "corridor of 9 locked doors" in env.system_prompt


def test_preset_and_oracle_step_rewards_accept_locks():
    cfg = parse_config(["--env", "locks", "--step-reward-source", "oracle"])[0]
    assert cfg.model_size == "tiny" and cfg.warmstart_random_frac == 0.25 and cfg.step_reward_source == "oracle"
    with pytest.raises(ValueError, match="step-reward-source"):
        parse_config(["--env", "webshop", "--step-reward-source", "oracle"])


def test_the_larger_rule_extends_the_default_and_each_prefix_is_balanced():
    assert SHAPES[:4] == CARVINGS and all(RULE[c] == OPENS[c] for c in CARVINGS)  # the default rule unchanged
    assert len(SHAPES) == len(set(SHAPES)) == 64 and set(RULE.values()) == set(KEYS)
    for n in range(4, 65, 4):  # every allowed --carvings: each key opens n / 4 carvings
        keys = [RULE[c] for c in SHAPES[:n]]
        assert all(keys.count(k) == n // 4 for k in KEYS), n
    assert all(w not in k and k not in w for w in SHAPES for k in KEYS)  # no word contains or is in a key name
    assert len({c[:1] for c in SHAPES if RULE[c] == "gold"}) > 5  # keys are not sorted by first letter


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=carving_counts, doors=st.integers(1, 9))
def test_more_carvings_the_expert_always_wins_under_the_fixed_rule(seed, n, doors):
    env, again = LocksEnv(max_steps=doors, carvings=n), make_env("locks", max_steps=doors, carvings=n)
    first = env.reset(seed)
    assert first == again.reset(seed) and env.carvings == again.carvings  # a seed fixes the task
    assert set(env.carvings) <= set(SHAPES[:n]) and env.shapes == SHAPES[:n]
    for k in range(doors):
        key = env.expert_action()
        assert key == RULE[env.carvings[k]]  # task-independent: the rule is the table, not the seed
        wrong = next(other for other in KEYS if other != key)
        assert again.step(wrap_action(wrong))[3]["optimal"] is False
        obs, reward, done, info = env.step(wrap_action(key))
        assert info["optimal"] and info["valid_action"] and reward == (1.0 if done else 0.0)
    assert info["won"] and env.opened == doors
    assert f"one of {n} kinds" in env.system_prompt if n > 4 else ", ".join(CARVINGS) in env.system_prompt


def test_more_carvings_are_drawn_uniformly_and_the_default_is_the_four_carving_env():
    env = LocksEnv(carvings=32)
    seen = [c for s in range(3000) for c in (env.reset(s), env.carvings)[1]]
    freq = np.array([seen.count(c) for c in SHAPES[:32]]) / len(seen)
    assert set(seen) == set(SHAPES[:32]) and np.allclose(freq, 1 / 32, atol=0.006)
    a, b = LocksEnv(), LocksEnv(carvings=4)
    assert a.system_prompt == b.system_prompt and a.shapes == CARVINGS
    assert a.reset(7) == "Door 1 of 6: a star is carved on it."  # the text of runs before --carvings, pinned
    assert "Each door has a carving: circle, square, triangle, star. At each door" in a.system_prompt
    for s in range(50):
        assert a.reset(s) == b.reset(s) and a.carvings == b.carvings and set(a.carvings) <= set(CARVINGS)
    assert LocksEnv(carvings=12).reset(5).startswith("Door 1 of 6: ")
    eye = next(s for s in range(500) if (env.reset(s), env.carvings[0])[1] == "eye")  # vowel: "an eye"
    assert env.reset(eye) == "Door 1 of 6: an eye is carved on it."


@pytest.mark.parametrize("bad", [0, 2, 6, 68, -4, 8.0, True, "8", None])
def test_bad_carvings_name_the_argument(bad):
    with pytest.raises(ValueError, match="carvings"):
        LocksEnv(carvings=bad)


def test_carvings_flag_reaches_the_env_and_fails_early_where_it_cannot():
    make = env_factory(parse_config(["--env", "locks", "--carvings", "16", "--max-steps", "3"])[0])
    env = make()
    assert env.shapes == SHAPES[:16] and env.max_steps == 3
    assert env_factory(parse_config(["--env", "locks"])[0])().shapes == CARVINGS  # 0: the env's own 4
    with pytest.raises(ValueError, match="carvings"):  # the env rejects it before the run folder exists
        env_factory(parse_config(["--env", "locks", "--carvings", "10"])[0])
    for argv in (["--env", "sokoban", "--carvings", "8"], ["--env", "locks", "--carvings", "-4"]):
        with pytest.raises(ValueError, match="--carvings"):
            parse_config(argv)
