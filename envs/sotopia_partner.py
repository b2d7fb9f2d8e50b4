"""The scripted social partner of the SOTOPIA-like env: ``Conversation``.

SOTOPIA (Zhou et al., 2024) lets an LLM role-play the other side of a social scenario, with a
private goal of its own. envs/sotopia.py replaces that role-player with this deterministic,
rule-based partner, so an episode's replies and its judge score depend only on the scenario
(``envs.sotopia.Scenario``) and what the agent said. The agent speaks through the action
language of envs/sotopia.py; ``Conversation.say(verb, arg)`` takes one parsed utterance.

The rules:
* Relationship starts at the scenario's mood and stays in SOTOPIA's -5..5. Politeness (a first
  greeting, up to two compliments, a little small talk) raises it; rudeness, flattery, repeating
  yourself, stalled offers and pushing refused requests lower it. At relationship <= ``LEAVE_AT``
  the partner walks away and the conversation is over.
* ``ask needs`` is answered only when the relationship is >= 0, and reveals the partner's secret
  in words the action language uses: the reason that matters and the one that annoys plus the
  promise that helps (persuade), the worry to promise away (favour), or how patient the seller is
  (negotiate).
* Negotiate: to each new offer the seller concedes a fraction
  (1 - stubbornness) x (0.4 + 0.1 x relationship + reasons given) of the gap, clipped to
  0.05..0.85 and halved for an offer that does not rise, never below its reservation price; it
  meets the buyer once the offer reaches that price and the remaining gap is within 3% of the
  list price, and is insulted by offers under half the list price.
* Persuade / favour: reasons and promises add conviction or trust; ``request`` succeeds once
  conviction + half the relationship reaches the partner's threshold (favour also needs the
  worry promised away, or the loan is for one day only). A third refusal ends the conversation.
* ``goal_score`` is the default judge's formula over the final state (see its docstring);
  ``envs.sotopia.rule_judge`` replays a transcript through a fresh ``Conversation`` and calls it.

References:
  1) Zhou et al., SOTOPIA: Interactive Evaluation for Social Intelligence in Language Agents,
     ICLR 2024, https://arxiv.org/abs/2310.11667 ; code https://github.com/sotopia-lab/sotopia
     (goal completion 0..10, relationship -5..5).
  2) He et al., Decoupling Strategy and Generation in Negotiation Dialogues, EMNLP 2018,
     https://arxiv.org/abs/1808.09637 (CraigslistBargain: a seller reacting to coarse dialogue
     acts such as offer / accept / reject / inquire).
  3) Liu et al., Agentic RL with Implicit Step Rewards, https://arxiv.org/abs/2509.19199 (paper.md).

Deviations from the paper (the same as deviations 2 and 3 of envs/sotopia.py):
  1. The partner is a scripted rule-based agent, not an LLM role-player, and its judge is a rule
     over the final state, not GPT-4o reading the transcript.
  2. Relationship folds into the score as ``REL_WEIGHT`` x relationship (at most +-1) instead of
     being a separate dimension: it stands in for an LLM judge being swayed by tone, and it keeps
     a rude deal from counting as a win at the budget edge.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # envs.sotopia imports this module, so import it for annotations only
    from envs.sotopia import Scenario

PERSUADE_REASONS = ("fun", "health", "money", "friends", "career", "nature")  # the reasons a friend weighs
WANTS = {"treat": "if you treat me to lunch", "ride": "if I got a ride", "help": "if you help me with my chores", "pay": "if you pay my ticket"}
CONCERNS = {"return": "you might not return it on time", "care": "you might not take care of it", "pay": "you should pay for the wear", "help": "you could help me move next week"}
LEAVE_AT = -3.0  # the partner walks away at this relationship (SOTOPIA's scale is -5..5)
REL_WEIGHT = 0.2  # score points per relationship point (deviation 2)
RUDE = ("idiot", "stupid", "dumb", "shut up", "hate you", "loser", "whatever", "ridiculous")


class Conversation:
    """The scripted partner: ``say(verb, arg) -> reply``, deterministic given the scenario."""

    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        self.rel = float(scenario.mood)  # relationship, clipped to SOTOPIA's -5..5
        self.over, self.left = False, ""  # left: "", "agent" or "partner"
        self.counts = {"greet": 0, "compliment": 0, "talk": 0, "refusal": 0, "unneeded": 0}
        self.said: set[str] = set()  # reasons already explained
        self.promised: set[str] = set()
        self.revealed = False  # `ask needs` was answered
        self.progress = 0.0  # persuade: conviction; favour: trust
        self.concern_met = False
        self.grant = 0  # persuade / favour: 0 nothing, 1 partial loan, 2 goal granted
        self.ask_price, self.last_offer, self.pending, self.deal = scenario.list_price, 0, None, None
        self.reasoned = 0.0  # negotiate: bonus concession earned by explaining
        self.verbs: list[str] = []  # the agent's verbs so far (the expert reacts to a refused request)

    def opening(self) -> str:
        return {"negotiate": f"Hi, interested in the {self.sc.topic}?", "persuade": "Hey, what's up?",
                "favour": "Hi! What brings you here?"}[self.sc.kind]

    def say(self, verb: str, arg: str | int | None) -> str:
        self.verbs.append(verb)
        reply = getattr(self, "_" + verb)(arg)
        if not self.over and self.rel <= LEAVE_AT:
            self.over, self.left = True, "partner"
            reply += " I've had enough. Bye."
        return reply

    def _bump(self, delta: float) -> None:
        self.rel = min(5.0, max(-5.0, self.rel + delta))

    def effective(self) -> float:
        """Persuade / favour: what the partner weighs when asked, conviction + half the relationship."""
        return self.progress + 0.5 * self.rel

    # -- moves every kind shares -----------------------------------------------------------------
    def _greet(self, _):
        self.counts["greet"] += 1
        if self.counts["greet"] == 1:
            self._bump(1.0)
            return f"Hi {self.sc.agent}, nice to see you."
        self._bump(-0.5)
        return "You already said hi."

    def _compliment(self, _):
        self.counts["compliment"] += 1
        n = self.counts["compliment"]
        self._bump(1.0 if n == 1 else 0.5 if n == 2 else -0.5)  # flattery wears thin fast
        return "Aw, thanks!" if n <= 2 else "Flattery won't work on me."

    def _talk(self, text):
        if any(word in text for word in RUDE):
            self._bump(-2.0)
            return "That's rude."
        self.counts["talk"] += 1
        n = self.counts["talk"]
        self._bump(0.5 if n == 1 else 0.0 if n == 2 else -0.5)  # small talk warms, then wastes time
        return "Ha, sure." if n <= 2 else "Can we get to the point?"

    def _leave(self, _):
        self.over, self.left = True, "agent"
        return "Okay, bye."

    def _ask(self, topic):
        sc = self.sc
        if topic == "price":
            return f"It's ${self.ask_price}." if sc.kind == "negotiate" else "It's not about money."
        if self.rel < 0:  # a cold partner does not open up: greet or compliment first
            return "Why should I tell you?"
        self.revealed = True
        if sc.kind == "negotiate":
            return "I want a fair price. " + ("I'm in no rush." if sc.stubbornness > 0.35 else "I'd like to sell soon.")
        if sc.kind == "persuade":
            return f"I care about {sc.key}, not {sc.disliked}. I'd go {WANTS[sc.want]}."
        return f"I worry {CONCERNS[sc.concern]}."

    def _explain(self, reason):
        sc = self.sc
        if reason in self.said:
            self._bump(-0.5)
            return "You said that already."
        self.said.add(reason)
        if sc.kind == "negotiate":
            if reason in ("budget", "flaw", "cash"):
                self.reasoned = min(0.25, self.reasoned + (0.15 if self.reasoned == 0 else 0.05))
                return "Fair point."
            return "Okay, but the price is the price."
        if sc.kind == "persuade":
            gain = {sc.key: 3.0, sc.minor: 1.5, sc.disliked: -1.0}.get(reason, 0.5 if reason in PERSUADE_REASONS else 0.0)
            self.progress += gain
            if gain < 0:
                self._bump(-0.5)
                return f"I don't care about {reason}."
            return {3.0: "That really matters to me.", 1.5: "Good point.", 0.5: "Maybe."}.get(gain, "How is that relevant?")
        self.progress += 2.0 if reason == sc.need else 0.5  # favour: the true reason earns trust
        return "Oh, I see." if reason == sc.need else "Hm, okay."

    def _promise(self, thing):
        sc = self.sc
        if thing in self.promised:
            return "You promised that already."
        self.promised.add(thing)
        if sc.kind == "negotiate":
            if thing == "pay":
                self.reasoned = min(0.25, self.reasoned + 0.05)
                return "Cash is good."
            return "Not sure how that helps."
        if sc.kind == "persuade":
            self.progress += 1.5 if thing == sc.want else 0.3
            return "Now that would help!" if thing == sc.want else "Okay."
        if thing == sc.concern:
            self.concern_met = True
            self.progress += 1.5
            return "That's exactly my worry, thanks."
        self.progress += 0.25
        self.counts["unneeded"] += 1  # promises owed for nothing cost the agent in the judge
        return "Okay..."

    def _offer(self, price):
        sc = self.sc
        if sc.kind == "favour":
            return self._promise("pay")  # offering money for a loan is promising to pay
        if sc.kind == "persuade":
            return "This isn't about money."
        if price < 0.5 * sc.list_price:
            self._bump(-1.0)
            return f"That's insulting. It's listed at ${sc.list_price}."
        if price >= self.ask_price:
            self.deal, self.over = price, True
            return f"Deal at ${price}!"
        stalled = price <= self.last_offer
        if stalled:
            self._bump(-0.5)  # not raising your offer is pushing
        conc = (1.0 - sc.stubbornness) * (0.4 + 0.1 * self.rel + self.reasoned)
        conc = min(0.85, max(0.05, conc)) * (0.5 if stalled else 1.0)
        new = max(sc.reservation, round(self.ask_price - conc * (self.ask_price - price)))
        self.last_offer = max(self.last_offer, price)
        if price >= sc.reservation and new - price <= 0.03 * sc.list_price:
            self.deal, self.over = price, True  # close enough: the seller meets the buyer
            return f"Fine, deal at ${price}."
        self.ask_price = self.pending = new
        return ("You're not moving. " if stalled else "") + f"I can do ${new}."

    def _request(self, _):
        sc = self.sc
        if sc.kind == "negotiate":
            return "Make me an offer."
        eff = self.effective()
        if eff >= sc.threshold and (sc.kind == "persuade" or self.concern_met):
            self.grant, self.over = 2, True
            return "Okay, I'm in!" if sc.kind == "persuade" else f"Sure, take it for {sc.days} days."
        if sc.kind == "favour" and eff >= sc.threshold:
            self.grant = 1
            return "You can have it for one day only."
        self.counts["refusal"] += 1
        if self.counts["refusal"] >= 2:
            self._bump(-0.5)  # asking again without a new argument is pushing
        if self.counts["refusal"] >= 3:
            self.over, self.left = True, "partner"
            return "Stop asking. Bye."
        return "Almost. Give me one more reason." if eff >= sc.threshold - 1.5 else "I'm not convinced."

    def _accept(self, _):
        if self.pending is None:
            return "There's nothing to accept."
        self.deal, self.over = self.pending, True
        return f"Deal at ${self.pending}!"

    def _reject(self, _):
        if self.pending is None:
            return "There's nothing to reject."
        self.pending = None
        return "Then make me a better offer."

    # -- the default judge's formula ----------------------------------------------------------------
    def goal_score(self) -> float:
        """0..10: goal part by kind (below), plus 0.2 x relationship, clipped.

        negotiate: deal at p <= budget B: 7 + 3 (B - p)/(B - reservation), capped at 10; deal over
        budget: 4 - 20 (p - B)/list, floored at 0; no deal: 1 + 2 x how far the seller came down.
        persuade: agreed 9; otherwise 1 + 4 x min(conviction / threshold, 1).
        favour: full loan 9.5, one-day loan 5, none 1 + 3 x min(trust / threshold, 1); each
        unneeded promise costs 0.75. A partner who walked away leaves a goal part of 0.
        A goal part above 6 needs the goal met: 6 < score holds only if it was.
        """
        sc = self.sc
        if self.left == "partner":
            goal = 0.0
        elif sc.kind == "negotiate":
            if self.deal is not None and self.deal <= sc.budget:
                goal = 7.0 + 3.0 * min(1.0, (sc.budget - self.deal) / max(1, sc.budget - sc.reservation))
            elif self.deal is not None:
                goal = max(0.0, 4.0 - 20.0 * (self.deal - sc.budget) / sc.list_price)
            else:
                goal = 1.0 + 2.0 * min(1.0, (sc.list_price - self.ask_price) / max(1, sc.list_price - sc.budget))
        elif sc.kind == "persuade":
            goal = 9.0 if self.grant == 2 else 1.0 + 4.0 * min(1.0, max(0.0, self.effective() / sc.threshold))
        else:
            base = {2: 9.5, 1: 5.0}.get(self.grant, 1.0 + 3.0 * min(1.0, max(0.0, self.effective() / sc.threshold)))
            goal = base - 0.75 * self.counts["unneeded"]
        return float(min(10.0, max(0.0, goal + REL_WEIGHT * self.rel)))
