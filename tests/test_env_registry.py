"""The env registry and the scripted baselines (``envs.scripted_play``, ``python -m envs --baselines``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from envs import EVAL_SEED_BASE, REGISTRY, make_env, scripted_play

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_expert_wins_where_random_play_does_not(name):
    seeds = range(EVAL_SEED_BASE, EVAL_SEED_BASE + 12)
    expert = scripted_play(lambda: make_env(name), "expert", seeds)
    random = scripted_play(lambda: make_env(name), "random", seeds)
    assert expert["success"] >= 0.9, expert
    assert random["success"] < expert["success"] and random["score"] < expert["score"], (random, expert)
    limit = make_env(name).max_steps
    assert 1 <= expert["steps"] <= limit and 1 <= random["steps"] <= limit


def test_scripted_play_is_reproducible_and_rejects_bad_arguments():
    make = lambda: make_env("webshop")  # noqa: E731
    seeds = range(5)
    assert scripted_play(make, "random", seeds, rng_seed=3) == scripted_play(make, "random", seeds, rng_seed=3)
    with pytest.raises(ValueError, match="policy must be 'expert' or 'random'"):
        scripted_play(make, "greedy", seeds)
    with pytest.raises(ValueError, match="seeds is empty"):
        scripted_play(make, "expert", [])


def test_the_cli_prints_expert_and_random_play_on_held_out_tasks():
    out = subprocess.run([sys.executable, "-m", "envs", "sotopia", "--baselines", "4"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[:2] for line in out] == [["sotopia", "expert"], ["sotopia", "random"]]
    expected = scripted_play(lambda: make_env("sotopia"), "expert", range(EVAL_SEED_BASE, EVAL_SEED_BASE + 4))
    assert f"success {expected['success']:.3f}" in out[0] and f"mean score {expected['score']:.3f}" in out[0]
    bad = subprocess.run([sys.executable, "-m", "envs", "sotopia", "--baselines", "-2"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--baselines" in bad.stderr
