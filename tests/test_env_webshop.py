"""WebShop env: catalogue, BM25 search, WebShop's reward formula, expert, and invalid actions."""
import dataclasses
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs import make_env
from envs.base import wrap_action
from envs.webshop import PAGE_SIZE, WebShopEnv, fuzzy_match, get_reward, token_set_ratio, type_reward
from envs.webshop_catalog import _CATEGORIES, BM25_B, BM25_K1, get_catalog, tokenize
from model import decode_actions, encode_action
from warmstart import env_tokenizer

seeds = st.integers(0, 2**31 - 1)


def act(env, action):
    return env.step(wrap_action(action))


def assert_expert_wins_from_here(env):
    """The expert wins from wherever earlier actions led (nothing to check if they ended the episode)."""
    while not env.done:
        obs, reward, done, info = act(env, env.expert_action())
        if done:
            assert info["won"]


def buy_target(env, options):
    """Search the target's title, open it, select `options`, buy; returns the last step."""
    target = env.catalog.products[env.target]
    act(env, f"search[{target.title}]")
    act(env, f"click[{target.asin}]")
    for value in options.values():
        act(env, f"click[{value}]")
    return act(env, "click[buy now]")


# -- catalogue and search -----------------------------------------------------------------------
def test_catalog_shape():
    cat = get_catalog()
    assert len(cat) >= 1000 and len({p.category for p in cat.products}) >= 6
    assert len({p.asin for p in cat.products}) == len(cat) == len({p.title for p in cat.products})
    for p in cat.products:
        assert re.fullmatch(r"B0[0-9A-Z]{8}", p.asin) and p.price > 0 and len(p.attributes) >= 2
        # The reward's text fallback must not match by accident: no option value of a product,
        # and no attribute it lacks, may appear in its own title, bullets or description.
        assert not [v for vals in p.options.values() for v in vals if v in p.text], p
        assert not [a for a in _CATEGORIES[p.category]["attributes"] if a not in p.attributes and a in p.text], p
    assert get_catalog() is cat  # built once per process


def test_distinct_values_never_fuzzy_match():
    """Within a category, two different attributes (or non-size option values) never count as
    the same under goal.py's fuzzy rule, so a wrong choice really lowers the reward."""
    for spec in _CATEGORIES.values():
        pools = [spec["attributes"]] + [v for g, v in spec["options"].items() if g != "size"]
        for pool in pools:
            assert not [(a, b) for a in pool for b in pool if a != b and fuzzy_match(a, b)]


def test_target_is_on_first_page_when_searching_its_title():
    cat = get_catalog()
    for i, p in enumerate(cat.products):
        assert i in cat.search(p.title)[:PAGE_SIZE], p.title


@settings(deadline=None, max_examples=25)
@given(words=st.lists(st.sampled_from(sorted(get_catalog().vocab) + ["zzz"]), min_size=1, max_size=5))
def test_bm25_matches_a_naive_loop(words):
    """BM25 from the postings equals the textbook formula summed term by term, per product."""
    cat, query = get_catalog(), " ".join(words)
    docs = [tokenize(p.title + " " + " ".join(p.attributes)) for p in cat.products]
    avgdl, n = sum(map(len, docs)) / len(docs), len(docs)
    ref = np.zeros(n)
    for t in set(words):
        df = sum(t in d for d in docs)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for j, d in enumerate(docs):
            tf = d.count(t)
            ref[j] += idf * tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * len(d) / avgdl))
    np.testing.assert_allclose(cat.scores(query), ref, rtol=1e-12, atol=1e-12)
    hits = cat.search(query)
    assert len(hits) == min(50, int((ref > 0).sum()))
    assert np.all(np.diff(ref[hits]) <= 0)  # best first


# -- reward ------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,expected", [  # values from rapidfuzz 3.14 token_set_ratio(default_process)
    ("slip on", "non slip", 93.333333), ("pack of 2", "pack of 4", 88.888889), ("grey", "heather grey", 100.0),
    ("long sleeve", "short sleeve", 70.588235), ("button closure", "drawstring closure", 66.666667),
    ("machine washable", "Machine-Washable!", 100.0), ("sea salt", "salt and pepper", 66.666667), ("", "x", 0.0)])
def test_token_set_ratio_matches_rapidfuzz(a, b, expected):
    assert token_set_ratio(a, b) == pytest.approx(expected, abs=1e-5)


@settings(deadline=None, max_examples=40)
@given(seed=seeds)
def test_buying_the_target_with_its_options_scores_one(seed):
    env = WebShopEnv()
    env.reset(seed)
    obs, reward, done, info = buy_target(env, env.goal.goal_options)
    assert done and reward == 1.0 and info["won"] and info["score"] == 1.0


@settings(deadline=None, max_examples=40)
@given(seed=seeds)
def test_reward_pieces(seed):
    """R = r_type · (N_att + N_opt + 1[price ≤ u]) / (|U_att| + |U_opt| + 1), piece by piece."""
    env = WebShopEnv()
    env.reset(seed)
    goal, p = env.goal, env.catalog.products[env.target]
    n_att, n_opt = len(goal.attributes), len(goal.goal_options)
    denom = n_att + n_opt + 1
    assert get_reward(p, goal, goal.goal_options)[0] == 1.0
    if n_opt:  # one wrong option value: N_opt drops by one (catalogue values never fuzzy-match)
        g = next(iter(goal.goal_options))
        wrong = next(v for v in p.options[g] if v != goal.goal_options[g])
        r, parts = get_reward(p, goal, {**goal.goal_options, g: wrong})
        assert r == pytest.approx((denom - 1) / denom) and parts["r_option"] == pytest.approx((n_opt - 1) / n_opt)
        assert get_reward(p, goal, {})[0] == pytest.approx((n_att + 1) / denom)  # nothing selected
        # ... and through the env: the purchase scores less and is not a win.
        _, reward, done, info = buy_target(env, {**goal.goal_options, g: wrong})
        assert done and reward == pytest.approx((denom - 1) / denom) and not info["won"]
    over = dataclasses.replace(goal, price_upper=p.price - 0.01)  # over budget: the price term is 0
    r, parts = get_reward(p, over, goal.goal_options)
    assert r == pytest.approx((denom - 1) / denom) and parts["r_price"] == 0.0
    missing = [a for a in _CATEGORIES[p.category]["attributes"] if a not in p.attributes]
    more = dataclasses.replace(goal, attributes=goal.attributes + (missing[0],))  # one attribute it lacks
    assert get_reward(p, more, goal.goal_options)[0] == pytest.approx((denom) / (denom + 1))


def test_type_reward_branches():
    cat = get_catalog()
    env = WebShopEnv()
    env.reset(0)
    goal, p = env.goal, cat.products[env.target]
    same_type = next(q for q in cat.products if q.query == p.query and q.asin != p.asin)
    assert type_reward(same_type, goal)["r_type"] == 1.0
    # A product sharing no title noun and no category level with the goal scores 0 whatever else.
    alien = next(q for q in cat.products if q.category != p.category and not (q.nouns & goal.nouns))
    assert type_reward(alien, goal)["r_type"] == 0.0
    assert get_reward(alien, goal, {})[0] == 0.0


# -- expert, determinism, random actions ---------------------------------------------------------
@settings(deadline=None, max_examples=60)
@given(seed=seeds)
def test_expert_wins_every_task(seed):
    env = make_env("webshop")
    env.reset(seed)
    while not env.done:
        obs, reward, done, info = act(env, env.expert_action())
        assert info["valid_action"]
    assert info["won"] and reward == 1.0 and env.steps == 3 + len(env.goal.goal_options)  # search, click, options, buy


@pytest.fixture(scope="module")
def env_tok():
    return env_tokenizer(lambda: make_env("webshop"), 1024, n_seeds=20)


def test_tokenizer_words_are_the_catalogue_ids(env_tok):
    env = make_env("webshop")
    words = env.tokenizer_words()
    assert len(set(words)) == len(words) == len(env.catalog) and all(re.fullmatch(r"B0[A-Z0-9]{8}", w) for w in words)
    assert len(env_tok) == 1024 + len(words)  # the env's default tokenizer holds each ID as one token


@settings(deadline=None, max_examples=20)
@given(seed=seeds)
def test_a_click_copies_one_token_from_the_results_page(env_tok, seed):
    # the expert's click on a product is the page's token for that ID: copying it is one token
    env = make_env("webshop")
    env.reset(seed)
    obs, *_ = act(env, env.expert_action())  # the search: obs is the results page
    click = env.expert_action()
    asin = re.fullmatch(r"click\[(.+)\]", click).group(1)
    a_ids, o_ids = encode_action(env_tok, wrap_action(click)), env_tok.encode(obs, add_special_tokens=False)
    id_tok = env_tok.convert_tokens_to_ids(asin)
    assert a_ids.count(id_tok) == 1 and o_ids.count(id_tok) == 1
    assert decode_actions(env_tok, [a_ids]) == [wrap_action(click)]


@settings(deadline=None, max_examples=30)
@given(seed=seeds, n_random=st.integers(1, 4), rng_seed=st.integers(0, 1000))
def test_expert_recovers_from_any_page(seed, n_random, rng_seed):
    """From wherever random valid actions lead, the expert still finds a winning purchase."""
    env, rng = WebShopEnv(max_steps=40), np.random.default_rng(rng_seed)
    env.reset(seed)
    for _ in range(n_random):
        action = env.random_action(rng)
        if action == "click[buy now]":
            continue
        assert act(env, action)[3]["valid_action"]
    while not env.done:
        info = act(env, env.expert_action())[3]
    assert info["won"] and env.steps <= n_random + 10


@settings(deadline=None, max_examples=20)
@given(seed=seeds, rng_seed=st.integers(0, 1000))
def test_same_seed_same_instruction_and_pages(seed, rng_seed):
    runs = []
    for _ in range(2):
        env, rng = WebShopEnv(), np.random.default_rng(rng_seed)
        pages = [env.reset(seed)]
        while not env.done:
            obs, reward, done, info = act(env, env.random_action(rng))
            assert info["valid_action"]  # random actions are always plausible (valid)
            pages.append((obs, reward))
        runs.append(pages)
    assert runs[0] == runs[1]
    assert "price lower than" in runs[0][0] and runs[0][0].startswith("Instruction: i need")


@settings(deadline=None, max_examples=25)
@given(seed=seeds, rng_seed=st.integers(0, 1000))
def test_shuffled_ids_change_only_the_ids(seed, rng_seed):
    """--shuffle-ids: the same task (instruction, results, prices, rewards) under other IDs, drawn
    from the task seed; the same random actions (IDs mapped) lead through the same pages, and the
    expert still wins."""
    plain, shuf = WebShopEnv(max_steps=20), WebShopEnv(max_steps=20, shuffle_ids=True)
    unmask = lambda env, obs: re.sub(r"B0[0-9A-Z]{8}", "ID", obs)  # noqa: E731
    assert unmask(plain, plain.reset(seed)) == unmask(shuf, shuf.reset(seed))
    assert shuf.reset(seed) == shuf.reset(seed) and sorted(shuf.perm) == list(range(len(shuf.catalog)))
    rng = np.random.default_rng(rng_seed)
    for _ in range(6):
        a = plain.random_action(rng)
        m = re.fullmatch(r"click\[(b0\w{8})\]", a, re.IGNORECASE)
        b = f"click[{shuf.shown_id(plain.catalog.by_asin[m.group(1).lower()])}]" if m else a
        o1, r1, d1, i1 = act(plain, a)
        o2, r2, d2, i2 = act(shuf, b)
        assert (unmask(plain, o1), r1, d1, i1) == (unmask(shuf, o2), r2, d2, i2) and plain.state() == shuf.state()
        if d1:
            break
    assert_expert_wins_from_here(shuf)


def test_shuffle_ids_differ_between_tasks_and_reject_bad_input():
    env = WebShopEnv(shuffle_ids=True)
    perms = []
    for s in range(4):
        env.reset(s)
        perms.append(env.perm.copy())
    assert all((perms[0] != p).mean() > 0.9 for p in perms[1:])
    with pytest.raises(ValueError, match="shuffle_ids"):
        WebShopEnv(shuffle_ids="yes")


@settings(deadline=None, max_examples=25)
@given(seed=seeds, rng_seed=st.integers(0, 1000))
def test_numbered_results_change_only_the_item_labels(seed, rng_seed):
    """--numbered-results: the results page labels its items 1..10 and click[k] opens the k-th item
    of the page shown; the same random actions (an ID mapped to its place) lead through the same
    states with the same rewards, and the expert still wins."""
    plain, num = WebShopEnv(max_steps=20), WebShopEnv(max_steps=20, numbered_results=True)
    assert plain.reset(seed) == num.reset(seed)
    rng = np.random.default_rng(rng_seed)
    for _ in range(8):
        if plain.page == "results":
            labels = num.item_labels()
            assert labels == [str(k + 1) for k in range(len(plain.item_labels()))]
            assert all(f" [SEP] {k}: " in num.render() for k in labels)
            assert not re.search(r"B0[0-9A-Z]{8}", num.render())  # no ID left on the results page
        a = plain.random_action(rng)
        ids = [x.lower() for x in plain.item_labels()] if plain.page == "results" else []
        b = f"click[{ids.index(a[6:-1]) + 1}]" if a[6:-1] in ids else a
        o1, r1, d1, i1 = act(plain, a)
        o2, r2, d2, i2 = act(num, b)
        assert (r1, d1, i1) == (r2, d2, i2) and plain.state() == num.state()
        if plain.page != "results":  # the item page and the purchase still name the ID
            assert o1 == o2
        if d1:
            break
    assert_expert_wins_from_here(num)


def test_numbered_results_take_places_on_the_page_shown_not_ids():
    env = WebShopEnv(numbered_results=True)
    env.reset(3)
    act(env, "search[t-shirt]")
    assert len(env.results) > PAGE_SIZE and "click[<item number>]" in env.render()
    first_id = env.shown_id(int(env.results[0]))
    for bad in (f"click[{first_id}]", "click[0]", "click[11]", "click[-1]", "click[1.0]"):
        obs, _, _, info = act(env, bad)
        assert not info["valid_action"] and env.page == "results", bad
    act(env, "click[next >]")
    act(env, "click[1]")  # the first item of page 2: the 11th result
    assert env.page == "item" and env.item == int(env.results[PAGE_SIZE])
    assert "click[<item number>]" in env.system_prompt and "<item id>" not in env.system_prompt
    assert "<item id>" in WebShopEnv().system_prompt
    with pytest.raises(ValueError, match="numbered_results"):
        WebShopEnv(numbered_results=1)


def test_seeds_give_varied_tasks():
    env = WebShopEnv()
    goals = [(env.reset(s), env.goal.asin) for s in range(100)]
    assert len({g for g, _ in goals}) >= 95 and len({a for _, a in goals}) >= 80


# -- invalid actions and episode end --------------------------------------------------------------
GARBAGE = ["", "no tag at all", "<action></action>", "<action>" + "x" * 5000 + "</action>",
           "<action>検索[日本]</action>", "<action>click[B0ZZZZZZZZ]</action>", "<action>jump[now]</action>",
           "<action>click[]</action>", "<action>search[]</action>", "<action>search[!!!]</action>",
           "<action>click[buy now</action>", "<action>[buy now]</action>", None, 42]


@pytest.mark.parametrize("page_steps", [[], ["search[cotton]"], ["search[cotton]", "click[first]"]],
                         ids=["search", "results", "item"])
@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_invalid_actions_change_nothing(page_steps, garbage):
    env = WebShopEnv()
    obs = env.reset(5)
    for a in page_steps:
        a = f"click[{env.clickables()[-1]}]" if a == "click[first]" else a
        obs = act(env, a)[0]
    before = env.state()
    obs2, reward, done, info = env.step(garbage)
    assert (obs2, env.state(), reward, done, info["valid_action"]) == (obs, before, -0.1, False, False)


def test_wrong_page_actions_are_invalid_and_case_is_ignored():
    env = WebShopEnv()
    env.reset(1)
    assert not env.step("<action>click[buy now]</action>")[3]["valid_action"]  # no such button yet
    obs, _, _, info = env.step("<action>SEARCH[ Cotton   Hoodie ]</action>")
    assert info["valid_action"] and env.page == "results" and env.query == "cotton hoodie"
    assert not act(env, "search[shoes]")[3]["valid_action"]  # no search box on a results page
    first = env.catalog.products[int(env.results[0])].asin
    assert act(env, f"CLICK[{first.lower()}]")[3]["valid_action"] and env.page == "item"


def test_ten_steps_end_the_episode_and_step_after_done_raises():
    env = WebShopEnv()
    env.reset(2)
    act(env, "search[cotton]")
    for i in range(8):
        obs, reward, done, info = act(env, "click[next >]" if i % 2 == 0 else "click[< prev]")
        assert info["valid_action"] and not done
    obs, reward, done, info = act(env, "click[back to search]")
    assert done and env.steps == 10 and reward == 0.0 and info["score"] == 0.0 and not info["won"]
    with pytest.raises(RuntimeError):
        act(env, "search[cotton]")


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="max_steps"):
        WebShopEnv(max_steps=0)
    env = WebShopEnv()
    env.reset(0)
    with pytest.raises(TypeError, match="rng"):
        env.random_action(3)
