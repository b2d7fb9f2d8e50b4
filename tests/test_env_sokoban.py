"""Sokoban env (envs/sokoban.py): generated puzzles are solvable within the step limit, the BFS
expert is shortest, rewards follow gym-sokoban's numbers, bad text is an invalid action, and the
image shows the same board as the text."""
import copy
from collections import deque

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from envs import make_env, wrap_action
from envs.sokoban import DIRECTIONS, PALETTE, SYMBOLS, SokobanEnv

seeds = st.integers(0, 2**40)


def _env_bfs_length(env):
    """Shortest solution length found by BFS through env.step itself (independent of envs.sokoban.solve)."""
    start = copy.deepcopy(env)
    start.max_steps = 10**9  # the step limit must not end the search
    seen, queue = {start.grid_text()}, deque([(start, 0)])
    while queue:
        node, depth = queue.popleft()
        for action in DIRECTIONS:
            child = copy.deepcopy(node)
            _, _, _, info = child.step(wrap_action(action))
            if info["won"]:
                return depth + 1
            if child.grid_text() not in seen:
                seen.add(child.grid_text())
                queue.append((child, depth + 1))
    return None


# -- generation + expert ------------------------------------------------------------------------------
@settings(deadline=None, max_examples=30)
@given(seed=seeds, rows=st.integers(5, 7), cols=st.integers(5, 7), num_boxes=st.integers(1, 2))
@example(seed=0, rows=6, cols=6, num_boxes=1)
def test_generated_puzzle_is_won_by_expert_with_formula_return(seed, rows, cols, num_boxes):
    env = SokobanEnv(dim_room=(rows, cols), num_boxes=num_boxes)
    obs = env.reset(seed=seed)
    grid = env.grid_text().split("\n")
    assert len(grid) == rows and all(len(r.split(" ")) == cols for r in grid)
    assert env.grid_text() in obs and "Steps left: 15" in obs
    cells = env.grid_text().split()
    assert cells.count("X") == num_boxes and cells.count("√") == 0  # generation leaves every box off target
    assert cells.count("O") + cells.count("S") == num_boxes
    plan = env.solve()
    assert plan is not None and 1 <= len(plan) <= env.max_steps
    total, done, steps = 0.0, False, 0
    while not done:
        obs, reward, done, info = env.step(wrap_action(env.expert_action(), think="follow the plan"))
        total, steps = total + reward, steps + 1
        assert info["valid_action"]
    assert info["won"] and info["score"] == 1.0 and info["boxes_on_target"] == num_boxes
    assert steps == len(plan)
    # gym-sokoban: -0.1 per step, +1/-1 per box on/off (telescopes to +num_boxes from 0), +10 at the end.
    assert total == pytest.approx(-0.1 * steps + num_boxes + 10.0)


def test_generation_rejects_puzzles_longer_than_max_steps():
    # With a 3-move limit most rooms need more moves; those must be retried, not handed out.
    env = SokobanEnv(max_steps=3)
    for seed in range(40):
        env.reset(seed=seed)
        assert 1 <= len(env.solve()) <= 3


def test_defaults_are_the_papers_and_registered():
    env = make_env("sokoban")
    assert isinstance(env, SokobanEnv)
    assert (env.dim_room, env.num_boxes, env.max_steps, env.search_depth) == ((6, 6), 1, 15, 30)
    assert "<action>up</action>" in env.system_prompt and "√" in env.system_prompt


@settings(deadline=None, max_examples=15)
@given(seed=seeds)
def test_bfs_expert_is_shortest(seed):
    env = SokobanEnv()
    env.reset(seed=seed)
    assert len(env.solve()) == _env_bfs_length(env)


def test_pinned_level_shortest_solution():
    env = SokobanEnv()
    env.set_level("""
        # # # # # # #
        # _ _ O _ _ #
        # _ X _ _ _ #
        # P _ _ _ _ #
        # # # # # # #""")
    # Two equally short ways exist (push up then right, or right then up); both take 5 moves.
    assert len(env.solve()) == 5 == _env_bfs_length(env)


@settings(deadline=None, max_examples=20)
@given(seed=seeds, walk_seed=st.integers(0, 2**32), k=st.integers(1, 6))
def test_expert_replans_from_any_state(seed, walk_seed, k):
    env = SokobanEnv(max_steps=100)
    env.reset(seed=seed)
    before, rng = len(env.solve()), np.random.default_rng(walk_seed)
    pushed = False
    for _ in range(k):
        boxes = _box_cells(env)
        _, _, done, _ = env.step(wrap_action(env.random_action(rng)))
        pushed |= _box_cells(env) != boxes
        if done:
            return
    plan = env.solve()
    if not pushed:  # walking only: the player can walk back, so the puzzle is no longer than k + before
        assert plan is not None and len(plan) <= before + k
    if plan:  # following the expert shortens the remaining solution by exactly one move
        env.step(wrap_action(env.expert_action()))
        assert len(env.solve()) == len(plan) - 1


def _box_cells(env):
    return {i for i, c in enumerate(env.grid_text().split()) if c in "X√"}


# -- seeding ------------------------------------------------------------------------------------------------
def test_same_seed_same_puzzle_different_seeds_differ():
    a, b = SokobanEnv(), SokobanEnv()
    first = a.reset(seed=7)
    b.reset(seed=3)
    b.step("<action>left</action>")
    assert b.reset(seed=7) == first and a.reset(seed=7) == first
    assert len({a.reset(seed=s) for s in range(20)}) >= 18


def test_seed_zero_golden_puzzle():
    # Pins the numpy Generator stream: the same seed must give this puzzle on any machine.
    assert SokobanEnv().reset(seed=0).split("\n")[1:7] == [
        "# # # # # #", "# # # _ _ #", "# # # _ O #", "# # # # X #", "# # P _ _ #", "# # # # # #"]


# -- actions and rewards -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "up", "x" * 100_000, "<action>上</action>", None, "<action>jump</action>",
                                  "<action></action>", "<action>up down</action>", "<action>push</action>",
                                  "<ACTION>north</ACTION>", 42])
def test_invalid_action_changes_nothing_and_costs_the_step_and_the_penalty(text):
    env = SokobanEnv()
    env.reset(seed=11)
    before = env.grid_text()
    obs, reward, done, info = env.step(text)
    assert env.grid_text() == before and before in obs
    assert reward == pytest.approx(-0.1 - 0.1) and not done  # a no-op step (gym-sokoban) + the invalid penalty (E8)
    assert reward < env.step(wrap_action("up"))[1]  # always worse than any move that pushes nothing off a target
    assert info["valid_action"] is False and info["won"] is False and info["score"] == 0.0


@pytest.mark.parametrize("text", ["<action>up</action>", "<action> UP </action>", "<action>Push Up</action>",
                                  "<action>push-up</action>", "<action>move up</action>", "<action>Move_Up</action>",
                                  "<think>the box is above</think><action>up</action>"])
def test_action_spellings_all_mean_up(text):
    env = SokobanEnv()
    env.set_level("# # # # #\n# _ O _ #\n# _ _ _ #\n# X P _ #\n# # # # #")
    _, reward, _, info = env.step(text)
    assert info["valid_action"] and info["moved"] and reward == pytest.approx(-0.1)
    assert env.grid_text().split("\n")[2] == "# _ P _ #"


def test_wall_bump_and_blocked_pushes_are_valid_no_ops():
    env = SokobanEnv()
    env.set_level("# # # # # #\n# P X _ # #\n# _ X _ O #\n# _ _ _ O #\n# # # # # #")
    for action in ("up", "left"):  # walls
        before = env.grid_text()
        _, reward, done, info = env.step(wrap_action(action))
        assert info["valid_action"] and not info["moved"] and env.grid_text() == before
        assert reward == pytest.approx(-0.1) and not done
    env.step(wrap_action("right"))  # pushes the top box against the inner wall
    before = env.grid_text()
    _, reward, _, info = env.step(wrap_action("right"))  # box into wall
    assert info["valid_action"] and not info["moved"] and env.grid_text() == before and reward == pytest.approx(-0.1)
    env.set_level("# # # # #\n# P _ _ #\n# X _ O #\n# X _ O #\n# _ _ _ #\n# # # # #")
    before = env.grid_text()
    _, reward, _, info = env.step(wrap_action("down"))  # box into box
    assert info["valid_action"] and not info["moved"] and env.grid_text() == before and reward == pytest.approx(-0.1)


def test_box_on_and_off_target_rewards_and_win():
    env = SokobanEnv()
    env.set_level("# # # # # # # #\n# P √ _ X O _ #\n# # # # # # # #")
    _, reward, _, info = env.step(wrap_action("right"))  # box pushed off its target
    assert reward == pytest.approx(-1.1) and info["boxes_on_target"] == 0 and info["score"] == 0.0
    env.set_level("# # # # # #\n# P X _ O #\n# # # # # #")
    _, r1, d1, _ = env.step(wrap_action("right"))
    obs, r2, d2, info = env.step(wrap_action("right"))  # onto the target: +1, all on targets: +10
    assert (r1, d1) == (pytest.approx(-0.1), False)
    assert r2 == pytest.approx(10.9) and d2 and info["won"] and info["score"] == 1.0 and "√" in obs


def test_max_steps_ends_without_win_and_step_after_done_raises():
    env = SokobanEnv(max_steps=4)
    env.set_level("# # # # # #\n# P X _ O #\n# # # # # #")
    for i in range(4):
        obs, reward, done, info = env.step(wrap_action("left"))  # wall bump every time
        assert done == (i == 3) and not info["won"] and reward == pytest.approx(-0.1)
    assert "Steps left: 0" in obs
    with pytest.raises(RuntimeError):
        env.step(wrap_action("right"))
    with pytest.raises(RuntimeError):
        env.expert_action()


def test_random_action_is_a_direction_and_covers_all():
    env, rng = SokobanEnv(), np.random.default_rng(0)
    assert {env.random_action(rng) for _ in range(200)} == set(DIRECTIONS)
    with pytest.raises(TypeError, match="rng"):
        env.random_action(3)


# -- rendering ------------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=20)
@given(seed=seeds, walk_seed=st.integers(0, 2**32), k=st.integers(0, 8), scale=st.integers(1, 8))
def test_render_rgb_matches_grid(seed, walk_seed, k, scale):
    env, rng = SokobanEnv(max_steps=50), np.random.default_rng(walk_seed)
    env.reset(seed=seed)
    for _ in range(k):
        if env.step(wrap_action(env.random_action(rng)))[2]:  # a lucky walk may win
            break
    image = env.render_rgb(scale=scale)
    rows = [r.split(" ") for r in env.grid_text().split("\n")]
    assert image.dtype == np.uint8 and image.shape == (len(rows) * scale, len(rows[0]) * scale, 3)
    assert len({tuple(c) for c in PALETTE}) == len(SYMBOLS)  # one distinct colour per tile type
    colour_to_symbol = {tuple(c): s for c, s in zip(PALETTE.tolist(), SYMBOLS)}
    tiles = image.reshape(len(rows), scale, len(rows[0]), scale, 3)
    assert (tiles == tiles[:, :1, :, :1]).all()  # every tile is one flat colour
    decoded = [[colour_to_symbol[tuple(tiles[r, 0, c, 0].tolist())] for c in range(len(rows[0]))]
               for r in range(len(rows))]
    assert decoded == rows


# -- bad programmer input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [({"dim_room": (6,)}, "dim_room"), ({"dim_room": (2, 6)}, "dim_room"),
                                          ({"num_boxes": 0}, "num_boxes"), ({"max_steps": 0}, "max_steps"),
                                          ({"search_depth": 1.5}, "search_depth"),
                                          ({"dim_room": (4, 4), "num_boxes": 3}, "room")])
def test_bad_constructor_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SokobanEnv(**kwargs)


@pytest.mark.parametrize("grid", ["# # #\n# P #", "#####\n#P_X#\n#####", "#####\n#PXO_\n#####",
                                  "######\n#PXO?#\n######", "#####\n#S√_#\n#####"])
def test_bad_levels_are_rejected(grid):
    with pytest.raises(ValueError, match="set_level"):
        SokobanEnv().set_level(grid)


def test_bad_render_scale_and_seed():
    env = SokobanEnv()
    env.reset(seed=1)
    with pytest.raises(ValueError, match="scale"):
        env.render_rgb(scale=0)
    with pytest.raises(TypeError, match="seed"):
        env.reset(seed="1")


# -- ground-truth step labels (info["optimal"], credit.py) --------------------------------------------------
@settings(deadline=None, max_examples=20)
@given(seed=seeds, walk_seed=st.integers(0, 2**32), expert_p=st.floats(0, 1))
def test_optimal_label_is_one_step_along_a_shortest_solution(seed, walk_seed, expert_p):
    """Along a random mix of expert and random moves, info["optimal"] is True exactly when the BFS
    solution got one move shorter, None exactly in a dead end, and the expert's move is always True."""
    env, rng = SokobanEnv(max_steps=30), np.random.default_rng(walk_seed)
    env.reset(seed=seed)
    while not env.done:
        plan = env.solve()
        expert = rng.random() < expert_p
        move = env.expert_action() if expert else env.random_action(rng)
        _, _, _, info = env.step(wrap_action(move))
        if plan is None:
            assert info["optimal"] is None
            continue
        after = env.solve()
        assert info["optimal"] == (after is not None and len(after) == len(plan) - 1)
        if expert:
            assert info["optimal"] is True


def test_optimal_labels_of_wall_bumps_invalid_text_and_dead_ends():
    env = SokobanEnv()
    env.set_level("# # # # # #\n# P X _ O #\n# _ _ _ _ #\n# # # # # #")
    assert env.step(wrap_action("up"))[3]["optimal"] is False  # wall bump: no progress
    assert env.step("no move here")[3]["optimal"] is False  # invalid: no progress
    assert env.step(wrap_action("right"))[3]["optimal"] is True
    env.set_level("# # # # # #\n# P _ _ O #\n# X _ _ _ #\n# # # # # #")  # the box sits in a corner: no solution
    assert env.step(wrap_action("right"))[3]["optimal"] is None
    for name in ("webshop", "sotopia"):  # envs without labels say None, never omit the key
        other = make_env(name)
        other.reset(seed=0)
        assert other.step("<action>nothing</action>")[3]["optimal"] is None
