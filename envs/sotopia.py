"""SOTOPIA-like social episodes: a private goal, a scripted partner, and a 0-10 goal-completion judge.

SOTOPIA (Zhou et al., 2024) puts two role-players in a social scenario, each with a private goal,
lets them talk in turns (round-robin, at most 20 turns) and afterwards has GPT-4 rate each side
on seven dimensions, among them goal completion (0..10) and relationship (-5..5). iStar trains on
SOTOPIA with reward = the GPT-4o goal score / 10 and calls an episode positive for the PRM's DPO
pairs when the score is > 6 (paper.md "Environments as used" and E3). That reward is
*unverifiable*: no rule checks it, and the PRM only ever sees which trajectories the judge liked.

This file keeps that shape but makes every piece deterministic and cheap:
* A seed gives one scenario (``make_scenario``): ``negotiate`` (buy the partner's used item for at
  most $budget; the seller hides a reservation price, stubbornness and mood), ``persuade`` (get a
  friend to join an activity; the friend hides which reasons matter, which annoy, what favour
  would help and how hard they are to move) or ``favour`` (borrow the partner's thing; the partner
  hides a worry that a matching promise removes, and how much trust the favour needs).
* The agent speaks through a small action language (``SYSTEM_PROMPT``); free text is small talk.
  ``Conversation`` (envs/sotopia_partner.py, rules in its docstring) is the scripted partner: its
  replies depend only on the scenario and what the agent said. Politeness raises the relationship,
  rudeness, flattery, repeating yourself and pushing refused requests lower it; at relationship
  <= -3 the partner walks away. ``ask needs`` (answered only when the relationship is >= 0)
  reveals the partner's secret; the seller concedes part of the gap to each new offer, never
  below its reservation price.
* ``SotopiaEnv.expert_action`` plays a polite strategy that only uses what the agent could see
  (its goal, the list price, the partner's replies): greet, justify, ask, then act on the answer;
  in negotiation it anchors at 60% of the list price and raises evenly towards the budget.
* ``rule_judge(scenario, transcript)`` replays the agent's turns and scores the final state:
  deal price against the budget, favour or agreement granted, progress made, plus 0.2 x
  relationship. Any callable with that signature (an LLM judge, say) can replace it.

Reward: 0 on every turn but the last; the last ``step`` returns score / 10 (the paper's
convention), and the base class subtracts 0.1 per invalid action on top. ``info["won"]`` is
score > 6, ``info["score"]`` the 0-10 score (both set on the final turn only; 0 / False before).

References:
  1) Zhou et al., SOTOPIA: Interactive Evaluation for Social Intelligence in Language Agents,
     ICLR 2024, https://arxiv.org/abs/2310.11667 ; code https://github.com/sotopia-lab/sotopia
     (seven dimensions, goal 0..10, relationship -5..5; max_turn_number=20, max_stale_turn=2).
  2) Liu et al., Agentic RL with Implicit Step Rewards, https://arxiv.org/abs/2509.19199 (paper.md).
  3) He et al., Decoupling Strategy and Generation in Negotiation Dialogues, EMNLP 2018,
     https://arxiv.org/abs/1808.09637 (CraigslistBargain: price negotiation through coarse
     dialogue acts such as offer / accept / reject / inquire, the idea behind our action language).

Deviations from the paper:
  1. Judge: the paper's GPT-4o reads the free-form transcript, so its score cannot be reproduced;
     ours is a deterministic rule judge over the replayed final state (formula in
     ``Conversation.goal_score``, envs/sotopia_partner.py).
     It is pluggable, so an LLM judge can be restored with ``SotopiaEnv(judge=...)``.
  2. Relationship folds into the score as 0.2 x relationship (at most +-1) instead of being a
     separate dimension: it stands in for an LLM judge being swayed by tone, and it keeps a
     rude deal from counting as a win at the budget edge.
  3. The partner is a scripted rule-based agent, not an LLM role-player; scenarios are three
     procedurally generated kinds, not SOTOPIA's 90 hand-written scenarios and 40 characters.
  4. Speech is a 10-verb action language plus free-text small talk, and max_steps = 8 agent turns
     (SOTOPIA: 20 turns of both sides), because our policy is a tiny LM with a small context.

Run ``python -m envs.sotopia`` to print expert and random mean scores and a stepping rate.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from envs.base import Env
from envs.sotopia_partner import CONCERNS, PERSUADE_REASONS, WANTS, Conversation

KINDS = ("negotiate", "persuade", "favour")
ASK_TOPICS = ("price", "needs")
REASONS = ("budget", "flaw", "cash", "fun", "health", "money", "friends", "career", "nature", "family", "work", "exam")
PROMISES = ("pay", "return", "care", "help", "treat", "ride")
BARE_VERBS = ("greet", "compliment", "request", "accept", "reject", "leave")
SMALL_TALK = ("how are you?", "nice weather today.", "long week, huh?", "I like your place.", "whatever.", "you are stupid.")

NAMES = ("Maya", "Omar", "Lena", "Ravi", "Sofia", "Jonas", "Aiko", "Tariq", "Elena", "Kofi", "Ines", "Mateo", "Nora", "Yuki", "Sam", "Priya")
ITEMS = (("bike", 150, 400), ("guitar", 120, 500), ("laptop", 300, 900), ("sofa", 100, 450), ("camera", 200, 700), ("desk", 60, 220))
ACTIVITIES = ("join the beach cleanup", "come to the jazz concert", "take the cooking class", "go on the mountain hike", "join the chess club", "volunteer at the food bank")
THINGS = ("car", "camera", "laptop", "tent", "projector", "drill")

SYSTEM_PROMPT = (
    "You are talking with one person and have a private goal. Each turn write "
    "<think>...</think><action>...</action>. Actions: greet | compliment | ask price | ask needs | "
    "explain <reason> | promise <thing> | offer <dollars> | request | accept | reject | leave. "
    f"Reasons: {', '.join(REASONS)}. Promises: {', '.join(PROMISES)}. `request` asks for what you "
    "want; `accept`/`reject` answer their last price. Any other text is small talk. Be polite: "
    "rudeness, flattery, repeating yourself and pushing make them leave. Score 0-10 at the end."
)


@dataclass(frozen=True)
class Scenario:
    """One task. ``goal``/``setting`` are what the agent is told; the rest is the partner's secret."""

    kind: str
    agent: str
    partner: str
    topic: str  # the item sold, the activity, or the thing borrowed
    setting: str
    goal: str
    mood: int  # the partner's starting relationship, -1..1
    list_price: int = 0  # negotiate: asking price, known to the agent
    budget: int = 0  # negotiate: the agent's private limit
    reservation: int = 0  # negotiate: the seller's hidden floor, <= budget so a deal exists
    stubbornness: float = 0.0  # negotiate: 0.2..0.5, how slowly the seller concedes
    threshold: float = 0.0  # persuade / favour: conviction or trust the partner needs
    key: str = ""  # persuade: the reason that moves the partner most
    minor: str = ""  # persuade: a reason that helps a little
    disliked: str = ""  # persuade: a reason that backfires
    want: str = ""  # persuade: the promise that helps
    need: str = ""  # favour: the agent's own reason, shown in its goal
    concern: str = ""  # favour: the partner's worry, removed by `promise <concern>`
    days: int = 0  # favour: loan length


def make_scenario(seed: int, kinds: Sequence[str] = KINDS) -> Scenario:
    """Same seed (and kinds) -> same scenario on any machine: numpy's PCG64 stream is portable."""
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"make_scenario(kinds=...): expected a non-empty subset of {KINDS}, got {kinds!r}")
    rng = np.random.default_rng(int(seed) % 2**63)  # negative seeds are fine too
    kind = kinds[int(rng.integers(len(kinds)))]
    agent, partner = (NAMES[int(i)] for i in rng.choice(len(NAMES), size=2, replace=False))
    mood = int(rng.integers(-1, 2))
    if kind == "negotiate":
        item, lo, hi = ITEMS[int(rng.integers(len(ITEMS)))]
        price = int(rng.integers(lo, hi + 1))
        reservation = round(price * rng.uniform(0.60, 0.82))
        budget = min(price - 1, reservation + round(price * rng.uniform(0.04, 0.15)))
        return Scenario(kind, agent, partner, item, f"{partner} sells a used {item} listed at ${price}.",
                        f"buy the {item} for at most ${budget}, as cheaply as you can.", mood,
                        list_price=price, budget=budget, reservation=reservation,
                        stubbornness=round(float(rng.uniform(0.2, 0.5)), 3))
    if kind == "persuade":
        activity = ACTIVITIES[int(rng.integers(len(ACTIVITIES)))]
        key, minor, disliked = (PERSUADE_REASONS[int(i)] for i in rng.choice(len(PERSUADE_REASONS), size=3, replace=False))
        want = tuple(WANTS)[int(rng.integers(len(WANTS)))]
        return Scenario(kind, agent, partner, activity, f"You want your friend {partner} to {activity} with you.",
                        f"get {partner} to agree to {activity}.", mood,
                        threshold=round(float(rng.uniform(3.0, 5.0)), 2), key=key, minor=minor, disliked=disliked, want=want)
    thing = THINGS[int(rng.integers(len(THINGS)))]
    need = ("work", "family", "exam")[int(rng.integers(3))]
    days = int(rng.integers(2, 6))
    return Scenario(kind, agent, partner, thing, f"You need {partner}'s {thing} for a while.",
                    f"borrow the {thing} for {days} days (reason: {need}), promising no more than needed.", mood,
                    threshold=round(float(rng.uniform(2.5, 4.5)), 2), need=need, concern=tuple(CONCERNS)[int(rng.integers(len(CONCERNS)))], days=days)


_OFFER_RE = re.compile(r"^offer \$?(\d{1,6})(?:\.\d{1,2})?$")


def parse_utterance(action: str | None) -> tuple[str, str | int | None] | None:
    """Bare action -> (verb, argument); ("talk", text) for free text; None if a verb is malformed.

    Strict on verbs (a tiny LM learns a fixed form faster than it learns our tolerance), free on
    everything else: text that does not start with a verb is small talk, not an error.
    """
    if action is None:
        return None
    text = " ".join(action.split()).lower()
    if not text:
        return None
    verb, _, arg = text.partition(" ")
    if verb in BARE_VERBS:
        return (verb, None) if not arg else None
    if verb == "offer":
        m = _OFFER_RE.match(text)
        return ("offer", int(m.group(1))) if m and int(m.group(1)) > 0 else None
    table = {"ask": ASK_TOPICS, "explain": REASONS, "promise": PROMISES}.get(verb)
    if table is not None:
        return (verb, arg) if arg in table else None
    return ("talk", text)


Judge = Callable[[Scenario, Sequence[tuple[str, str]]], float]


def rule_judge(scenario: Scenario, transcript: Sequence[tuple[str, str]]) -> float:
    """The default judge: replay the agent's turns through the partner and score the final state.

    ``transcript`` is a sequence of (role, text) with role "agent" or "partner"; agent texts are
    the bare actions as spoken. A custom judge gets the same two arguments and returns 0..10.
    """
    conv = Conversation(scenario)
    for role, text in transcript:
        if role == "agent":
            utterance = parse_utterance(text)
            if utterance is None:
                raise ValueError(f"rule_judge: transcript has an unparsable agent turn {text!r}")
            conv.say(*utterance)
    return conv.goal_score()


def check_score(value: object, judge: object) -> float:
    """A judge's output as a float in [0, 10]: finite numbers are clipped, anything else raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"SotopiaEnv judge {judge!r} must return a number in [0, 10], got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"SotopiaEnv judge {judge!r} must return a finite number in [0, 10], got {value!r}")
    return min(10.0, max(0.0, float(value)))


class SotopiaEnv(Env):
    """Two-party social episode against the scripted partner; the judge scores the end state."""

    name = "sotopia"
    system_prompt = SYSTEM_PROMPT

    def __init__(self, max_steps: int = 8, judge: Judge | None = None, kinds: Sequence[str] = KINDS) -> None:
        super().__init__()
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"SotopiaEnv(max_steps=...): expected an int >= 1, got {max_steps!r}")
        if judge is not None and not callable(judge):
            raise TypeError(f"SotopiaEnv(judge=...): expected a callable (scenario, transcript) -> float in [0, 10], got {type(judge).__name__}")
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"SotopiaEnv(kinds=...): expected a non-empty subset of {KINDS}, got {kinds!r}")
        self.max_steps, self.kinds = max_steps, kinds
        self.judge: Judge = judge if judge is not None else rule_judge

    # -- the protocol ---------------------------------------------------------------------------------
    def _reset(self, seed: int) -> str:
        self.scenario = make_scenario(seed, self.kinds)
        self.conv = Conversation(self.scenario)
        opening = self.conv.opening()
        self.transcript: list[tuple[str, str]] = [("partner", opening)]
        return f'{self.scenario.setting} {self.scenario.partner}: "{opening}" Goal: {self.scenario.goal} [turn 1/{self.max_steps}]'

    def _step(self, action: str | None) -> tuple[str, float, bool, dict]:
        utterance = parse_utterance(action)
        if utterance is not None:
            reply = self.conv.say(*utterance)
            self.transcript += [("agent", " ".join(action.split())), ("partner", reply)]
            head = f'{self.scenario.partner}: "{reply}"'
        else:  # invalid: the conversation does not move (the base class charges the penalty)
            head = "Invalid action: use exactly one form from the action list."
        done = self.conv.over or self.steps >= self.max_steps
        info: dict = {"valid_action": utterance is not None, "kind": self.scenario.kind}
        reward = 0.0
        if done:
            score = check_score(self.judge(self.scenario, tuple(self.transcript)), self.judge)
            info.update(score=score, won=score > 6.0, outcome=self._outcome())  # paper: positive if > 6
            reward = score / 10.0  # the paper's reward: judge goal score / 10
        tail = "[conversation over]" if done else f"[turn {self.steps + 1}/{self.max_steps}]"
        return f"{head} Goal: {self.scenario.goal} {tail}", reward, done, info

    def _outcome(self) -> str:
        c, kind = self.conv, self.scenario.kind
        if kind == "negotiate":
            text = f"deal at ${c.deal}" if c.deal is not None else "no deal"
        else:
            text = {2: "agreed" if kind == "persuade" else "lent", 1: "lent for one day"}.get(c.grant, "refused")
        return text + ("; partner left" if c.left == "partner" else "")

    # -- demonstrations -------------------------------------------------------------------------------
    def expert_action(self) -> str:
        """A polite, reasoned strategy that reads only what the agent could have seen."""
        c, sc = self.conv, self.scenario
        if c.counts["greet"] == 0:
            return "greet"
        if c.rel < 0 and c.counts["compliment"] < 2:
            return "compliment"
        if sc.kind == "negotiate":
            return self._expert_offer()
        # Refused ("Almost..."): make two strengthening moves before asking again, turns allowing.
        refused = "request" in c.verbs and c.verbs[::-1].index("request") < 2 and self.max_steps - self.steps > 1
        if refused and c.counts["compliment"] < 2 and c.verbs[-1] != "compliment":
            return "compliment"
        if sc.kind == "favour" and sc.need not in c.said:
            return f"explain {sc.need}"
        if not c.revealed:
            return "ask needs"
        if sc.kind == "persuade":
            for move in (f"explain {sc.key}", f"promise {sc.want}"):  # both were named in their answer
                if move.split()[1] not in c.said | c.promised:
                    return move
        elif sc.concern not in c.promised:
            return f"promise {sc.concern}"
        if refused:  # one more reason, never the one they said they dislike
            spare = [r for r in PERSUADE_REASONS if r not in c.said and r != sc.disliked]
            if spare:
                return f"explain {spare[0]}"
        return "request"

    def _expert_offer(self) -> str:
        """Anchor at 60% of the list price, justify it, then raise evenly towards the budget."""
        c, sc = self.conv, self.scenario
        turns_left = self.max_steps - self.steps  # including the one about to be played
        if c.last_offer == 0:
            return f"offer {round(0.6 * sc.list_price)}"
        if "budget" not in c.said:
            return "explain budget"
        if c.pending is not None and c.pending <= sc.budget and (turns_left <= 1 or c.pending - c.last_offer <= 0.05 * sc.list_price):
            return "accept"
        if turns_left <= 1:
            return f"offer {sc.budget}"
        target = min(sc.budget, c.pending if c.pending is not None else sc.budget)
        step = (target - c.last_offer) / max(1, turns_left - 1)
        return f"offer {min(sc.budget, max(c.last_offer + 1, round(c.last_offer + step)))}"

    def random_action(self, rng: np.random.Generator) -> str:
        """A random utterance of the action language (all forms valid; talk may be rude)."""
        form = ("greet", "compliment", "request", "accept", "reject", "leave", "ask", "explain", "promise", "offer", "talk")[int(rng.integers(11))]
        if form in BARE_VERBS:
            return form
        if form == "offer":
            base = self.scenario.list_price or 100
            return f"offer {max(1, round(base * rng.uniform(0.4, 1.1)))}"
        pool = {"ask": ASK_TOPICS, "explain": REASONS, "promise": PROMISES, "talk": SMALL_TALK}[form]
        word = pool[int(rng.integers(len(pool)))]
        return word if form == "talk" else f"{form} {word}"


if __name__ == "__main__":
    import time

    from envs import scripted_play

    for policy in ("expert", "random"):
        r = scripted_play(SotopiaEnv, policy, range(300))
        print(f"{policy:6s} mean score {r['score']:.2f}  win rate {r['success']:.2f}  (300 seeds)")
    # Stepping rate: 1,000 envs reset, then each stepped once with a typical utterance.
    envs = [SotopiaEnv() for _ in range(1000)]
    for i, e in enumerate(envs):
        e.reset(i)
    start = time.perf_counter()
    for e in envs:
        e.step("<think>be nice</think><action>greet</action>")
    print(f"1,000 envs stepped once in {1e3 * (time.perf_counter() - start):.1f} ms")
