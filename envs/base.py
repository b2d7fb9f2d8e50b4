"""The protocol every bundled environment follows, and the tolerant action parser.

An environment is a text game played by a language model:

    env = make_env("sokoban")
    obs = env.reset(seed=3)                      # same seed -> same task, on any machine
    obs, reward, done, info = env.step("<think>..</think><action>up</action>")
    info["won"], info["valid_action"], info["score"]

* A task is a seed. A GRPO/iStar group is G rollouts of one seed.
* The action is read from an ``<action>...</action>`` tag, case and whitespace tolerant.
  Anything else (no tag, unknown verb, illegal move) is an *invalid action*: the state does
  not change, ``reward = -invalid_penalty`` (0.1, paper.md E8), ``info["valid_action"] = False``,
  and the episode goes on. Bad model output never raises.
* The rewards returned by ``step`` sum to the episode return; the outcome reward R used by the
  advantages is that return (see each env's docstring for its numbers).
* ``step`` after ``done`` raises ``RuntimeError`` (that is a bug in the caller, not the model).
* ``expert_action()`` returns the bare next correct action (no tag) from the current state;
  ``random_action(rng)`` returns a bare action of the right form chosen at random. Both are used
  for warm-start demonstrations and tests; wrap them with ``wrap_action``.
* Optional ``info["optimal"]`` (True/False, None = unknown): a ground-truth label of the step's
  credit where the env can compute one (Sokoban: the move took one step along a shortest
  solution). Diagnostics only (credit.py); it never reaches the policy, the PRM or the rewards.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

INVALID_PENALTY = 0.1  # paper.md E8: "Invalid actions are penalised 0.1 each"

_ACTION_RE = re.compile(r"<\s*action\s*>(.*?)<\s*/\s*action\s*>", re.IGNORECASE | re.DOTALL)


def parse_action(text: Any, max_len: int = 200) -> str | None:
    """The content of the last ``<action>...</action>`` tag, stripped; None if there is none.

    Tolerant: tag case and inner whitespace do not matter. Strict: no tag, an empty tag, a
    non-string, or an action longer than ``max_len`` characters give None (an invalid action).
    """
    if not isinstance(text, str):
        return None
    found = _ACTION_RE.findall(text)
    if not found:
        return None
    action = " ".join(found[-1].split())
    if not action or len(action) > max_len:
        return None
    return action


def wrap_action(action: str, think: str | None = None) -> str:
    """Format a bare action as the model is asked to write it."""
    prefix = f"<think>{think}</think>" if think else ""
    return f"{prefix}<action>{action}</action>"


class Env:
    """Base class: subclasses implement ``_reset``, ``_step``, ``expert_action``, ``random_action``.

    The base class handles the bookkeeping every env shares: the done flag, the step limit and
    the invalid-action penalty, so a subclass only writes its game.
    """

    name: str = "base"
    max_steps: int = 10
    invalid_penalty: float = INVALID_PENALTY
    system_prompt: str = ""

    def __init__(self) -> None:
        self.done = True
        self.steps = 0
        self.seed: int | None = None

    # -- the protocol -----------------------------------------------------------------------
    def reset(self, seed: int) -> str:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"reset(seed=...): expected an int seed, got {type(seed).__name__}")
        self.seed, self.steps, self.done = int(seed), 0, False
        return self._reset(int(seed))

    def step(self, action_text: str) -> tuple[str, float, bool, dict]:
        if self.done:
            raise RuntimeError(f"{self.name}: step() called after the episode ended; call reset(seed) first")
        self.steps += 1
        action = parse_action(action_text)
        obs, reward, done, info = self._step(action)  # subclass returns valid_action=False for None/illegal
        if not info.get("valid_action", False):
            reward -= self.invalid_penalty
        if self.steps >= self.max_steps:
            done = True
        info.setdefault("won", False)
        info.setdefault("score", 0.0)
        info.setdefault("optimal", None)
        self.done = bool(done)
        return obs, float(reward), self.done, info

    # -- what a subclass writes ---------------------------------------------------------------
    def _reset(self, seed: int) -> str:
        raise NotImplementedError

    def _step(self, action: str | None) -> tuple[str, float, bool, dict]:
        """Apply a parsed action (None = unparsable). Return obs, env reward (before the invalid
        penalty, which the base class subtracts), done, info with ``valid_action``, ``won``, ``score``."""
        raise NotImplementedError

    def expert_action(self) -> str:
        raise NotImplementedError

    def random_action(self, rng: np.random.Generator) -> str:
        raise NotImplementedError

    def tokenizer_words(self) -> list[str]:
        """Names an agent copies verbatim from an observation into an action (e.g. product IDs), which
        the locally built tokenizer keeps as single tokens (model.build_tokenizer's ``words``). A
        pretrained LM's tokenizer (``--model``) is never changed. None by default."""
        return []
