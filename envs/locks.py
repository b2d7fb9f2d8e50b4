"""Locks: a row of locked doors and one sparse outcome, a diagnostic of step-level credit (not in the paper).

The agent walks past ``max_steps`` doors (default 6; train.py's ``--max-steps``). Each door shows a
carving (circle, square, triangle or star) and the agent tries one key (copper, silver, gold or iron). A fixed rule, the
same for every task and never told to the agent, says which key opens which carving
(``OPENS``). Nothing tells the agent whether a key worked: the next observation is the next door.
After the last door the episode ends with reward +1 if every door opened, else 0 (minus 0.1 per
invalid action, paper.md E8, as in every env here).

Why it exists: it isolates the problem iStar's step rewards address (paper.md "Method"). Every
episode has the same length, so a step's position says nothing about the outcome (the shortcut the
implicit PRM learns on Sokoban, README Results), and every step is labelled (``info["optimal"]``:
the key opened its door), so ``credit.py`` can score the step rewards and advantages against the
truth and ``--step-reward-source oracle`` gives perfect step credit. A lost episode holds right and
wrong keys alike and episode-level credit (A^E) pushes all of them down; step credit can single out
the wrong ones. With a warm start that picks the right key at probability p per door, about p^6 of
the episodes win (p = 0.75: 18%), and what RL has to learn is to pick it always.

A task is a seed: it fixes the sequence of carvings (uniform, independent). ``expert_action`` is the
key that opens the current door; ``random_action`` a uniformly random key. An unparsable action or
an unknown key is invalid: the door stays shut (the episode is lost) and the agent moves on.
``info["score"]`` is the fraction of doors opened; ``info["won"]`` that all opened.
"""
from __future__ import annotations

import numpy as np

from envs.base import Env

CARVINGS = ("circle", "square", "triangle", "star")
KEYS = ("copper", "silver", "gold", "iron")
OPENS = {"circle": "silver", "square": "iron", "triangle": "copper", "star": "gold"}  # carving -> its key


class LocksEnv(Env):
    name = "locks"

    def __init__(self, max_steps: int = 6) -> None:
        """``max_steps`` doors (train.py's ``--max-steps``), one step each."""
        super().__init__()
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise ValueError(f"LocksEnv(max_steps=...): expected the number of doors, an int >= 1, got {max_steps!r}")
        self.max_steps = max_steps
        self.system_prompt = (
            f"You walk along a corridor of {max_steps} locked doors. Each door has a carving: "
            f"{', '.join(CARVINGS)}. At each door you try one key: {', '.join(KEYS)}. "
            "The carving decides which key opens the door, but nobody tells you whether a key worked. "
            "After the last door you get +1 if every door opened, else 0. "
            "Reply with the key, e.g. <action>copper</action>.")

    def _observation(self) -> str:
        return f"Door {self.steps + 1} of {self.max_steps}: a {self.carvings[self.steps]} is carved on it."

    def _reset(self, seed: int) -> str:
        rng = np.random.default_rng(seed)
        self.carvings = [CARVINGS[i] for i in rng.integers(len(CARVINGS), size=self.max_steps)]
        self.opened = 0
        return self._observation()

    def _step(self, action: str | None) -> tuple[str, float, bool, dict]:
        door = self.steps - 1  # the base class has already counted this step
        key = action.lower() if action else None
        valid = key in KEYS
        right = valid and OPENS[self.carvings[door]] == key
        self.opened += right
        done = self.steps == self.max_steps
        won = done and self.opened == self.max_steps
        obs = "The corridor ends." if done else self._observation()
        return obs, float(won), done, {"valid_action": valid, "won": won, "score": self.opened / self.max_steps,
                                       "optimal": right}

    def expert_action(self) -> str:
        return OPENS[self.carvings[self.steps]]

    def random_action(self, rng: np.random.Generator) -> str:
        return str(rng.choice(KEYS))
