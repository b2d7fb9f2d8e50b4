"""WebShop: find and buy the product an instruction describes (paper.md "Environments as used").

    env = WebShopEnv()
    obs = env.reset(seed=7)        # "Instruction: i need a ... [SEP] Search page [SEP] Actions: search[<query>]"
    obs, r, done, info = env.step("<action>search[cotton t-shirt machine washable]</action>")
    obs, r, done, info = env.step("<action>click[B0J1RQU63V]</action>")      # open an item
    obs, r, done, info = env.step("<action>click[large]</action>")           # select an option
    obs, r, done, info = env.step("<action>click[buy now]</action>")         # r = info["score"]

Pages, as in WebShop's text env: search (the only page with a search box) -> results (10 of the
top 50 BM25 hits, `click[next >]` / `click[< prev]`) -> item (title, price, attributes, option
groups, `click[<option value>]`, `click[description]`, `click[features]`, `click[buy now]`);
`click[< prev]` goes up one page and `click[back to search]` to the search page. Action text is
case-insensitive. Buying ends the episode with the reward below; after `max_steps` = 10 (paper)
steps without a purchase the episode ends with reward 0. Invalid actions (no tag, unknown verb,
a click on something not on the page, a search without a search box) change nothing and cost
0.1 (subtracted by envs.base.Env).

Reward at purchase (WebShop `get_reward`, web_agent_site/engine/goal.py, reference 2):
    R = r_type · (N_att + N_opt + 1[price ≤ u]) / (|U_att| + |U_opt| + 1)      ∈ [0, 1]
Where:
    U_att   the goal's attributes; N_att how many of them match the bought product: a
            token-set fuzzy ratio > 85 with one of its attributes, or the attribute appears in
            its title, bullet points or description;
    U_opt   the goal's option values; N_opt how many *selected* options match a goal value
            (exactly for "size", by fuzzy ratio > 85 otherwise, or by appearing in the text);
    u       the goal's price upper bound;
    r_type  1 if the product type matches (same query, ≥ 2 shared category-path levels, or
            title-noun overlap > 0.2), else 0.5; then 0.1 if the noun overlap < 0.1 and 0 if it
            is 0. Noun overlap = |nouns(bought title) ∩ nouns(goal title)| / |nouns(goal title)|.
Success (`info["won"]`) is R = 1, as in verl-agent; `info["score"]` = R.

References:
  1) Yao et al. 2022, WebShop: https://arxiv.org/abs/2207.01206
  2) https://github.com/princeton-nlp/WebShop (goal.py: get_reward, get_synthetic_goals, PRICE_RANGE)
  3) verl-agent's WebShop wrapper (success = reward 1): https://github.com/langfengQ/verl-agent
  4) rapidfuzz token_set_ratio (what thefuzz calls): https://github.com/rapidfuzz/RapidFuzz

Deviations from WebShop:
  1. A generated catalogue (envs/webshop_catalog.py) of 1,200 products, not 1.18M scraped ones;
     goals are drawn like WebShop's synthetic goals: one product, 1-3 of its attributes, one value
     per option group, and the same price-bound rule.
  2. No spaCy (nouns are known by construction) and no colour normalisation (our colours are
     already canonical); token_set_ratio is re-implemented below with rapidfuzz's definition.
  3. Pages are rendered as short text lines with the available actions listed, no HTML; the
     "reviews" subpage and the rating are omitted.
  4. An invalid action returns the unchanged page (WebShop does the same) plus the base penalty.
  5. Every page repeats the instruction (as WebShop's text observations do) and ends with the
     actions it accepts, so a small-context policy sees what it may click.
  6. Optional (``shuffle_ids=True``, ``--shuffle-ids``): each task shows the products under a
     permutation of the catalogue's IDs, drawn from the task seed. Goals, pages and rewards are
     unchanged; an ID then says nothing about its product outside one episode, so a policy can only
     click by copying an ID from the page, not by recalling one it memorised from demonstrations.
  7. Optional (``numbered_results=True``, ``--numbered-results``): the results page labels its items
     1-10 instead of by ID, and ``click[k]`` opens the k-th item of the page shown. Everything else
     is unchanged (the item page and the purchase still name the ID). For a policy that cannot copy
     a token from its context: the default model, trained from scratch, never learned to copy an ID
     (README Results, WebShop), while a pretrained LM does so already.

Run `python -m envs.webshop 7` to print the expert's episode for task seed 7.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from envs.base import Env
from envs.webshop_catalog import Catalog, Product, get_catalog, tokenize

EXACT_MATCH_OPTS = ("size",)                # goal.py: options matched exactly, not fuzzily
PRICE_RANGE = [10.0 * i for i in range(1, 100)]  # goal.py: price bounds are multiples of $10
FUZZY_THRESHOLD = 85                        # goal.py: token_set_ratio(...) > 85 counts as a match
PAGE_SIZE = 10                              # WebShop shows 10 results per page


@dataclass(frozen=True)
class Goal:
    """What the instruction asks for (WebShop's goal dict)."""

    asin: str                      # the product the goal was drawn from (one of possibly many winners)
    query: str                     # its product type
    product_category: str
    name: str                      # its title
    nouns: frozenset[str]
    attributes: tuple[str, ...]    # U_att
    goal_options: dict[str, str]   # group -> value; U_opt = its values
    price_upper: float             # u
    instruction: str


# -- reward (goal.py) -------------------------------------------------------------------------
def _lcs(a: str, b: str) -> int:
    """Length of the longest common subsequence (the Indel distance is |a| + |b| − 2·LCS)."""
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@functools.lru_cache(maxsize=65536)
def token_set_ratio(s1: str, s2: str) -> float:
    """rapidfuzz's token_set_ratio (with its default_process, as thefuzz calls it) in [0, 100].

    Tokens are compared as sets: 100 when one set contains the other; otherwise the best
    Indel similarity among "sect" / "sect + a-only" / "sect + b-only" (sorted tokens joined).
    """
    a, b = set(tokenize(s1)), set(tokenize(s2))
    if not a or not b:
        return 0.0
    sect, ab, ba = " ".join(sorted(a & b)), " ".join(sorted(a - b)), " ".join(sorted(b - a))
    if sect and (not ab or not ba):
        return 100.0
    # Strings "sect ab" and "sect ba" share the prefix, so their Indel distance is that of ab, ba.
    sep = 1 if sect else 0
    len_sab, len_sba = len(sect) + sep + len(ab), len(sect) + sep + len(ba)
    dist = len(ab) + len(ba) - 2 * _lcs(ab, ba)
    best = 100.0 * (1.0 - dist / (len_sab + len_sba))
    if sect:  # "sect" against "sect ab": the distance is the appended part
        best = max(best, 100.0 * (1.0 - (sep + len(ab)) / (len(sect) + len_sab)),
                   100.0 * (1.0 - (sep + len(ba)) / (len(sect) + len_sba)))
    return best


def fuzzy_match(a: str, b: str) -> bool:
    """goal.py's `fuzz.token_set_ratio(a, b) > 85`; thefuzz rounds the score to an int first."""
    return round(token_set_ratio(a, b)) > FUZZY_THRESHOLD


def type_reward(product: Product, goal: Goal) -> dict:
    """r_type (goal.py get_type_reward): is the bought product the right kind of thing?"""
    query_match = product.query == goal.query
    bought_path = {x.strip() for x in product.product_category.split("›")}
    goal_path = {x.strip() for x in goal.product_category.split("›")}
    category_match = len(bought_path & goal_path) >= 2
    title_score = len(product.nouns & goal.nouns) / len(goal.nouns) if goal.nouns else 0.2
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return dict(r_type=r_type, query_match=query_match, category_match=category_match, title_score=title_score)


def attribute_reward(product: Product, goal: Goal) -> tuple[float, int]:
    """(r_att, N_att) (goal.py get_attribute_reward): fuzzy match, else found in the text."""
    n = 0
    for g_attr in goal.attributes:
        if any(fuzzy_match(p_attr, g_attr) for p_attr in product.attributes) \
                or g_attr in product.text:
            n += 1
    return n / len(goal.attributes), n


def option_matches(product: Product, group: str, value: str, goal_values: list[str]) -> bool:
    """Does the selected `group: value` of `product` hit one of the goal's option values?"""
    if group.lower() in EXACT_MATCH_OPTS:
        hit = value in goal_values
    else:
        hit = any(fuzzy_match(g, value) for g in goal_values)
    return hit or value in product.text  # goal.py: "look for option in other components"


def option_reward(product: Product, goal: Goal, selected: dict[str, str]) -> tuple[float | None, int]:
    """(r_opt, N_opt) (goal.py get_option_reward): counts selected options, over |U_opt|."""
    goal_values = list(goal.goal_options.values())
    n = sum(option_matches(product, g, v, goal_values) for g, v in selected.items())
    return (n / len(goal_values) if goal_values else None), n


def get_reward(product: Product, goal: Goal, selected: dict[str, str]) -> tuple[float, dict]:
    """R = r_type · (N_att + N_opt + 1[price ≤ u]) / (|U_att| + |U_opt| + 1), and its pieces."""
    t = type_reward(product, goal)
    r_price = float(product.price <= goal.price_upper)
    r_att, n_att = attribute_reward(product, goal)
    r_opt, n_opt = option_reward(product, goal, selected)
    total = (n_att + n_opt + r_price) / (len(goal.attributes) + len(goal.goal_options) + 1)
    return total * t["r_type"], dict(t, r_att=r_att, r_option=r_opt, r_price=r_price)


def make_goal(catalog: Catalog, rng: np.random.Generator) -> Goal:
    """A WebShop-style synthetic goal: a target product, some of its attributes, one value per
    option group, and a price bound u drawn as in goal.py (larger of two of the next 4 tens)."""
    p = catalog.products[int(rng.integers(len(catalog)))]
    k = int(rng.integers(1, min(3, len(p.attributes)) + 1))
    attrs = tuple(p.attributes[i] for i in sorted(rng.choice(len(p.attributes), size=k, replace=False)))
    options = {g: vals[int(rng.integers(len(vals)))] for g, vals in p.options.items()}
    price_range = [x for x in PRICE_RANGE if x > p.price][:4]
    upper = float(max(rng.choice(price_range, size=2, replace=False)))
    article = "an" if p.phrase[0] in "aeiou" else "a"
    text = f"i need {article} {p.phrase} with {' and '.join(attrs)}"
    text += "".join(f", and {g}: {v}" for g, v in options.items())
    text += f", and price lower than {upper:.2f} dollars"
    return Goal(p.asin, p.query, p.product_category, p.title, p.nouns, attrs, options, upper, text)


# -- the environment --------------------------------------------------------------------------
class WebShopEnv(Env):
    """WebShop over the synthetic catalogue; a task seed picks the goal, the catalogue is fixed."""

    name = "webshop"
    max_steps = 10  # paper: WebShop episodes have at most 10 steps
    system_prompt = (
        "You are shopping on WebShop. Find and buy the product that fits the instruction. "
        "Actions: search[<query>] on the search page; click[<item id>], click[<option value>], "
        "click[buy now], click[next >], click[< prev], click[back to search], click[description], "
        "click[features] when listed on the page. Think inside <think></think>, then write exactly "
        "one action inside <action></action>."
    )

    def __init__(self, max_steps: int = 10, catalog_seed: int = 0, products_per_category: int = 200,
                 shuffle_ids: bool = False, numbered_results: bool = False) -> None:
        super().__init__()
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"WebShopEnv(max_steps=...): expected an int >= 1, got {max_steps!r}")
        if not isinstance(shuffle_ids, bool):
            raise ValueError(f"WebShopEnv(shuffle_ids=...): expected a bool, got {shuffle_ids!r}")
        if not isinstance(numbered_results, bool):
            raise ValueError(f"WebShopEnv(numbered_results=...): expected a bool, got {numbered_results!r}")
        self.max_steps, self.shuffle_ids, self.numbered_results = max_steps, shuffle_ids, numbered_results
        if numbered_results:
            self.system_prompt = self.system_prompt.replace("click[<item id>]", "click[<item number>]")
        self.catalog = get_catalog(catalog_seed, products_per_category)  # cached: shared by all envs
        self.goal: Goal | None = None

    def tokenizer_words(self) -> list[str]:
        """Every product ID of the catalogue: a click copies one from the results page."""
        return [p.asin for p in self.catalog.products]

    def shown_id(self, i: int) -> str:
        """The ID product ``i`` is shown (and clicked) under in this episode: its own, or with
        ``shuffle_ids`` the catalogue ID of product ``perm[i]``."""
        return self.catalog.products[int(self.perm[i])].asin

    # -- state ----------------------------------------------------------------------------------
    def _reset(self, seed: int) -> str:
        self.goal = make_goal(self.catalog, np.random.default_rng(seed))
        self.target = self.catalog.by_asin[self.goal.asin.lower()]  # the goal's own product index
        n = len(self.catalog)
        # shown ID of product i = catalogue ID of product perm[i]; identity unless shuffle_ids (a separate
        # random stream, so a task's goal and pages are the same with or without it)
        self.perm = np.random.default_rng([seed, 1]).permutation(n) if self.shuffle_ids else np.arange(n)  # (n,)
        self.page = "search"               # search | results | item | description | features | done
        self.query = ""
        self.results = np.zeros(0, np.int64)  # (<= 50,) product indices of the last search
        self.page_no = 0                    # 0-based results page
        self.item: int | None = None        # product index on the item page
        self.selected: dict[str, str] = {}  # option group -> selected value
        self._winnable: dict[int, dict[str, str] | None] = {}  # expert cache: idx -> winning options
        return self.render()

    @property
    def instruction(self) -> str:
        return self.goal.instruction if self.goal else ""

    def state(self) -> tuple:
        """Everything an action can change (tests compare it around invalid actions)."""
        return (self.page, self.query, tuple(self.results.tolist()), self.page_no, self.item,
                tuple(sorted(self.selected.items())))

    def _page_items(self) -> np.ndarray:
        return self.results[self.page_no * PAGE_SIZE:(self.page_no + 1) * PAGE_SIZE]  # (<= 10,)

    def item_labels(self) -> list[str]:
        """What the results page calls its items (and ``click[...]`` takes): their shown IDs, or with
        ``numbered_results`` their places 1..10 on the page."""
        items = self._page_items()
        if self.numbered_results:
            return [str(k + 1) for k in range(len(items))]
        return [self.shown_id(int(i)) for i in items]

    def clickables(self) -> list[str]:
        """The lowercase names `click[...]` accepts on the current page (none on the search page)."""
        if self.page == "results":
            n_pages = math.ceil(len(self.results) / PAGE_SIZE)
            return (["back to search"] + (["< prev"] if self.page_no > 0 else [])
                    + (["next >"] if self.page_no + 1 < n_pages else [])
                    + [label.lower() for label in self.item_labels()])
        if self.page == "item":
            opts = [v for vals in self.catalog.products[self.item].options.values() for v in vals]
            return ["back to search", "< prev", "description", "features", "buy now"] + opts
        if self.page in ("description", "features"):
            return ["back to search", "< prev"]
        return []

    def available_actions(self) -> list[str]:
        return ["search[<query>]"] if self.page == "search" else [f"click[{c}]" for c in self.clickables()]

    def render(self) -> str:
        """The current page as short text: instruction, page content, then the actions."""
        if self.goal is None:
            raise RuntimeError("webshop: render() before reset(seed)")
        lines = [f"Instruction: {self.instruction}"]
        if self.page == "search":
            lines += ["Search page", "Actions: search[<query>]"]
        elif self.page == "results":
            n, n_pages = len(self.results), max(1, math.ceil(len(self.results) / PAGE_SIZE))
            lines.append(f"Results for '{self.query}': page {self.page_no + 1} of {n_pages} ({n} results)")
            for label, i in zip(self.item_labels(), self._page_items()):
                p = self.catalog.products[i]
                lines.append(f"{label}: {p.title}, ${p.price:.2f}")
            extra = [c for c in self.clickables() if c in ("next >", "< prev", "back to search")]
            item = "click[<item number>]" if self.numbered_results else "click[<item id>]"
            lines.append("Actions: " + ", ".join(([item] if n else []) + [f"click[{c}]" for c in extra]))
        elif self.page == "item":
            p = self.catalog.products[self.item]
            lines += [f"{self.shown_id(self.item)}: {p.title}", f"Price: ${p.price:.2f}", "Attributes: " + ", ".join(p.attributes)]
            lines += [f"{g}: " + " | ".join(vals) for g, vals in p.options.items()]
            chosen = ", ".join(f"{g} {v}" for g, v in self.selected.items()) or "none"
            lines.append(f"Selected: {chosen}")
            lines.append("Actions: " + ("click[<option value>], " if p.options else "")
                         + "click[buy now], click[description], click[features], click[< prev], click[back to search]")
        elif self.page in ("description", "features"):
            p = self.catalog.products[self.item]
            body = p.description if self.page == "description" else "; ".join(p.features)
            lines += [f"{self.page.capitalize()}: {body}", "Actions: click[< prev], click[back to search]"]
        return " [SEP] ".join(lines)

    # -- dynamics -------------------------------------------------------------------------------
    def _step(self, action: str | None) -> tuple[str, float, bool, dict]:
        verb, arg = _split_action(action)
        if verb == "search" and self.page == "search" and tokenize(arg):  # a box, and words to look for
            self.query, self.results, self.page_no, self.page = arg, self.catalog.search(arg), 0, "results"
        elif verb == "click" and arg in self.clickables():
            if arg == "buy now":
                return self._buy()
            self._click(arg)
        else:  # unknown verb, no search box, empty query, or a click on something not on the page
            return self.render(), 0.0, False, dict(valid_action=False, won=False, score=0.0)
        return self.render(), 0.0, False, dict(valid_action=True, won=False, score=0.0)

    def _click(self, arg: str) -> None:
        """Apply a click already known to be on the page."""
        if arg == "back to search":
            self.page, self.query, self.results, self.page_no = "search", "", self.results[:0], 0
            self.item, self.selected = None, {}
        elif arg == "next >":
            self.page_no += 1
        elif arg == "< prev":
            if self.page == "results":
                self.page_no -= 1
            elif self.page == "item":
                self.page, self.item, self.selected = "results", None, {}
            else:  # description / features go back to their item
                self.page = "item"
        elif arg in ("description", "features"):
            self.page = arg
        elif self.page == "results":  # an item, by its label on the page: its shown id or its place
            labels = [label.lower() for label in self.item_labels()]
            self.page, self.item, self.selected = "item", int(self._page_items()[labels.index(arg)]), {}
        else:  # an option value: option values are distinct across one product's groups
            group = next(g for g, vals in self.catalog.products[self.item].options.items() if arg in vals)
            self.selected[group] = arg

    def _buy(self) -> tuple[str, float, bool, dict]:
        p = self.catalog.products[self.item]
        score, parts = get_reward(p, self.goal, self.selected)
        self.page = "done"
        chosen = ", ".join(f"{g} {v}" for g, v in self.selected.items()) or "no options"
        obs = f"Thank you for shopping with us! [SEP] You bought {self.shown_id(self.item)} ({chosen}) [SEP] Score: {score:.3f}"
        info = dict(valid_action=True, won=score == 1.0, score=score, asin=p.asin, **parts)  # the catalogue's ID
        return obs, score, True, info

    # -- demonstrations ---------------------------------------------------------------------------
    def _winning_options(self, idx: int) -> dict[str, str] | None:
        """Options that make buying product `idx` score 1, or None if no choice does."""
        if idx not in self._winnable:
            p, goal_values = self.catalog.products[idx], list(self.goal.goal_options.values())
            # Select only groups that can hit a goal value: extra groups add nothing to N_opt.
            best = {}
            for g, vals in p.options.items():
                hits = [v for v in vals if option_matches(p, g, v, goal_values)]
                if hits:
                    best[g] = hits[0]
            self._winnable[idx] = best if get_reward(p, self.goal, best)[0] == 1.0 else None
        return self._winnable[idx]

    def _page_winner(self) -> int | None:
        """Place on the current results page (0-based) of its first winning item, or None."""
        return next((k for k, i in enumerate(self._page_items()) if self._winning_options(int(i)) is not None), None)

    def _winner_page_offset(self) -> int | None:
        """Signed offset from the current results page to the nearest page holding a winner."""
        pages = {k // PAGE_SIZE for k, i in enumerate(self.results) if self._winning_options(int(i)) is not None}
        return min((p - self.page_no for p in pages), key=abs, default=None)

    def expert_query(self) -> str:
        """The instruction's product words and attributes; the target's full title if that query
        has no winning product on its first page (a unique title always ranks its product there)."""
        q = " ".join((self.catalog.products[self.target].phrase,) + self.goal.attributes)
        hits = self.catalog.search(q)[:PAGE_SIZE]
        return q if any(self._winning_options(int(i)) is not None for i in hits) else self.goal.name

    def expert_action(self) -> str:
        """Next action of a shortest winning path: search, click a winner, select options, buy.

        Restarting ("back to search", then the expert query, whose first page holds a winner)
        takes 2 steps to reach a results page with a winner; going up or paging is chosen only
        when it is no longer than that.
        """
        if self.goal is None or self.done:
            raise RuntimeError("webshop: expert_action() needs a running episode; call reset(seed) first")
        if self.page == "search":
            return f"search[{self.expert_query()}]"
        if self.page == "results":
            win, off = self._page_winner(), self._winner_page_offset()
            if win is not None:
                return f"click[{self.item_labels()[win]}]"
            if off is not None and abs(off) <= 2:
                return "click[next >]" if off > 0 else "click[< prev]"
            return "click[back to search]"
        best = self._winning_options(self.item)
        if self.page == "item" and best is not None:
            if get_reward(self.catalog.products[self.item], self.goal, self.selected)[0] == 1.0:
                return "click[buy now]"
            g = next(g for g, v in best.items() if self.selected.get(g) != v)
            return f"click[{best[g]}]"
        # A subpage ("< prev" leads to its item), or a non-winning item ("< prev" leads to results).
        off = self._winner_page_offset()
        if best is not None or (off is not None and abs(off) + (self.page != "item") <= 1):
            return "click[< prev]"
        return "click[back to search]"

    def random_action(self, rng: np.random.Generator) -> str:
        """A random plausible action: a search with 1-4 instruction words, or a listed clickable."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"random_action(rng=...): expected a numpy Generator, got {type(rng).__name__}")
        if self.page == "search":
            words = tokenize(self.instruction) or ["shop"]
            k = int(rng.integers(1, min(4, len(words)) + 1))
            return "search[" + " ".join(words[i] for i in rng.choice(len(words), size=k, replace=False)) + "]"
        clicks = self.clickables()
        return f"click[{clicks[int(rng.integers(len(clicks)))]}]"


def _split_action(action: str | None) -> tuple[str | None, str]:
    """'Search[ Foo ]' -> ('search', 'foo'); anything else -> (None, '')."""
    if not action:
        return None, ""
    text = action.strip().lower()
    open_, close = text.find("["), text.rfind("]")
    if open_ <= 0 or close != len(text) - 1:
        return None, ""
    verb, arg = text[:open_].strip(), " ".join(text[open_ + 1:close].split())
    return (verb, arg) if verb in ("search", "click") else (None, "")


if __name__ == "__main__":  # python -m envs.webshop [seed]: print one expert episode
    import sys

    demo = WebShopEnv()
    print(demo.reset(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    while not demo.done:
        move = demo.expert_action()
        page, reward, _, _ = demo.step(f"<action>{move}</action>")
        print(f"\n> {move}   (reward {reward:+.2f})\n{page}")
