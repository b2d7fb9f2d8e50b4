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

``carvings`` (train.py's ``--carvings``; default 4, the env above exactly) sets how many distinct
carvings the doors draw from: a multiple of 4 up to 64, the first ``carvings`` words of ``SHAPES``.
Their rule is ``RULE``, fixed and the same for every task: the 4 carvings above keep ``OPENS``, and
each further block of 4 words opens with one of each key in a shuffled order (drawn once, written
out below), so every key opens the same number of carvings and nothing in a word tells its key.
More carvings make the rule a larger lookup table, each entry seen at fewer doors per batch: the
regime where episode-level credit is noisier per entry than step-level credit. With more than 4
carvings the system prompt says how many there are instead of listing them (shorter contexts).
"""
from __future__ import annotations

import numpy as np

from envs.base import Env

CARVINGS = ("circle", "square", "triangle", "star")
KEYS = ("copper", "silver", "gold", "iron")
OPENS = {"circle": "silver", "square": "iron", "triangle": "copper", "star": "gold"}  # carving -> its key
# carvings 5-64 (``carvings`` > 4), in blocks of 4: each block one of each key, in an order drawn once by
# np.random.default_rng(20261205).permutation(4) per block and written out (no word hints at its key)
MORE_OPENS = {
    "moon": "copper", "sun": "gold", "tree": "iron", "fish": "silver",
    "bird": "iron", "horse": "silver", "snake": "copper", "crown": "gold",
    "sword": "gold", "shield": "iron", "anchor": "silver", "bell": "copper",
    "candle": "gold", "feather": "iron", "flower": "silver", "leaf": "copper",
    "wave": "gold", "flame": "silver", "eye": "iron", "hand": "copper",
    "skull": "iron", "spiral": "gold", "arrow": "copper", "cross": "silver",
    "ring": "iron", "heart": "gold", "diamond": "silver", "hexagon": "copper",
    "owl": "silver", "wolf": "gold", "bear": "copper", "deer": "iron",
    "lion": "copper", "eagle": "silver", "frog": "iron", "spider": "gold",
    "rose": "copper", "oak": "gold", "wheel": "iron", "tower": "silver",
    "ship": "copper", "castle": "gold", "hammer": "silver", "axe": "iron",
    "bow": "gold", "cup": "copper", "book": "silver", "lamp": "iron",
    "cloud": "iron", "rain": "silver", "snow": "gold", "thorn": "copper",
    "apple": "iron", "pear": "silver", "shell": "copper", "mask": "gold",
    "harp": "copper", "drum": "gold", "boat": "iron", "fox": "silver",
}
RULE = {**OPENS, **MORE_OPENS}  # every carving -> its key; LocksEnv(carvings=n) uses the first n
SHAPES = tuple(RULE)  # CARVINGS first, then MORE_OPENS in order


class LocksEnv(Env):
    name = "locks"

    def __init__(self, max_steps: int = 6, carvings: int = len(CARVINGS)) -> None:
        """``max_steps`` doors (train.py's ``--max-steps``), one step each; ``carvings`` distinct carvings
        (train.py's ``--carvings``), a multiple of 4 from 4 to 64: the first ``carvings`` of ``SHAPES``."""
        super().__init__()
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise ValueError(f"LocksEnv(max_steps=...): expected the number of doors, an int >= 1, got {max_steps!r}")
        if (not isinstance(carvings, int) or isinstance(carvings, bool) or not len(KEYS) <= carvings <= len(SHAPES)
                or carvings % len(KEYS)):
            raise ValueError(f"LocksEnv(carvings=...): expected the number of distinct carvings, a multiple of {len(KEYS)} "
                             f"from {len(KEYS)} to {len(SHAPES)}, got {carvings!r}")
        self.max_steps = max_steps
        self.shapes = SHAPES[:carvings]  # the carvings doors can show (self.carvings: this task's, door by door)
        carved = ", ".join(CARVINGS) if carvings == len(CARVINGS) else f"one of {carvings} kinds"
        self.system_prompt = (
            f"You walk along a corridor of {max_steps} locked doors. Each door has a carving: "
            f"{carved}. At each door you try one key: {', '.join(KEYS)}. "
            "The carving decides which key opens the door, but nobody tells you whether a key worked. "
            "After the last door you get +1 if every door opened, else 0. "
            "Reply with the key, e.g. <action>copper</action>.")

    def _observation(self) -> str:
        carving = self.carvings[self.steps]
        article = "an" if carving[0] in "aeiou" else "a"
        return f"Door {self.steps + 1} of {self.max_steps}: {article} {carving} is carved on it."

    def _reset(self, seed: int) -> str:
        rng = np.random.default_rng(seed)
        self.carvings = [self.shapes[i] for i in rng.integers(len(self.shapes), size=self.max_steps)]
        self.opened = 0
        return self._observation()

    def _step(self, action: str | None) -> tuple[str, float, bool, dict]:
        door = self.steps - 1  # the base class has already counted this step
        key = action.lower() if action else None
        valid = key in KEYS
        right = valid and RULE[self.carvings[door]] == key
        self.opened += right
        done = self.steps == self.max_steps
        won = done and self.opened == self.max_steps
        obs = "The corridor ends." if done else self._observation()
        return obs, float(won), done, {"valid_action": valid, "won": won, "score": self.opened / self.max_steps,
                                       "optimal": right}

    def expert_action(self) -> str:
        return RULE[self.carvings[self.steps]]

    def random_action(self, rng: np.random.Generator) -> str:
        return str(rng.choice(KEYS))
