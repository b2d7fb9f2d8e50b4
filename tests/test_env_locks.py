"""Locks env: seeded tasks, the hidden key rule, the sparse outcome, labels, invalid actions."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import parse_config
from envs import make_env
from envs.base import INVALID_PENALTY, wrap_action
from envs.locks import CARVINGS, KEYS, OPENS, LocksEnv

seeds = st.integers(0, 2**31 - 1)


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
