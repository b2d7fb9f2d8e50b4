"""The whole loop learns: warm start -> rollouts -> istar_update raises the success of a tiny model.

Every other test checks a piece against its definition; this one checks the direction of the
whole: a sign error in an advantage, a ratio or a loss would leave those green and this red.
The task is a 2-step corridor with a sparse outcome reward (1 iff both answers are "left"), so
the step-level credit of iStar has two steps to share one reward between.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from config import Config
from envs.base import Env, wrap_action
from istar import istar_update
from model import build_default_model, build_tokenizer, clone_model
from rollout import pack, rollout
from warmstart import warm_start


class Corridor(Env):
    name, max_steps = "corridor", 2
    system_prompt = "Walk the corridor: answer <action>left</action> or <action>right</action>."

    def _reset(self, seed):
        self.i, self.ok = 0, True
        return "You are at the door. Which way?"

    def _step(self, action):
        self.ok = self.ok and action == "left"
        self.i += 1
        done = self.i == 2
        obs = "The end." if done else "Another door. Which way?"
        return obs, float(done and self.ok), done, {"valid_action": action in ("left", "right"), "won": done and self.ok}

    def expert_action(self):
        return "left"

    def random_action(self, rng):
        return str(rng.choice(["left", "right"]))


TEXTS = [Corridor.system_prompt, "You are at the door. Which way?", "Another door. Which way?", "The end.",
         wrap_action("left"), wrap_action("right")] * 5


def _cfg(algo, istar):
    # demos: "left" with probability 0.2 + 0.8 / 2 = 0.6 per step, so about 36% of episodes win
    return Config(model_size="tiny", warmstart_episodes=256, warmstart_random_frac=0.8, warmstart_epochs=4,
                  warmstart_lr=3e-3, max_context=256, kernels="reference", lr=1e-3, prm_lr=1e-3, algo=algo,
                  istar=istar, minibatches=2, micro_batch=64)


@pytest.fixture(scope="module")
def start():
    tok = build_tokenizer(TEXTS, vocab_size=300)
    policy = build_default_model(tok, "tiny", seed=0)
    warm_start(policy, tok, Corridor, _cfg("rloo", True), "cpu")
    return tok, policy


def _success(policy, tok, n=128):
    trajs = rollout(policy, tok, Corridor, list(range(n)), 1, temperature=1.0, max_action_tokens=8, seed=123)
    return float(np.mean([t.won for t in trajs]))


@pytest.mark.parametrize("algo,istar", [("rloo", True), ("grpo", False), ("rloo", False)])
def test_training_raises_success(start, algo, istar):
    tok, warm = start
    cfg = _cfg(algo, istar)
    policy, prm = copy.deepcopy(warm), clone_model(warm)
    popt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    ropt = torch.optim.AdamW(prm.parameters(), lr=cfg.prm_lr)
    before = _success(policy, tok)
    assert 0.15 < before < 0.6  # the warm start leaves room to learn
    gen = torch.Generator().manual_seed(0)
    for it in range(10):  # 4 tasks x 8 rollouts per iteration
        trajs = rollout(policy, tok, Corridor, list(range(4 * it, 4 * it + 4)), 8, max_action_tokens=8, seed=it)
        stats = istar_update(policy, prm, popt, ropt, pack(trajs, "cpu", tok.pad_token_id), cfg, generator=gen)
        assert np.isfinite(stats["policy/pg_loss"])
    after = _success(policy, tok)
    assert after >= before + 0.25, (before, after)
