"""Sokoban as a text game: the VisualSokoban task of the paper, with gym-sokoban's rooms and rewards.

The paper (paper.md "Environments as used") trains on VisualSokoban: gym-sokoban rooms of 6×6 with
1 box, generator search depth 30, at most 15 steps. This file rebuilds that game with numpy only:

* Room generation (gym-sokoban ``room_utils.generate_room``): a random walk carves floor out of a
  walled room; the player and the targets are dropped on random floor cells; every target starts
  with a box on it (the solved state); then *reverse playing* (a depth-first search, ttl
  ``search_depth``) lets the player pull boxes away, and the room with the best score
  ``box_swaps · Σ_boxes |box − its target|₁`` (with no target covered) becomes the puzzle. Pulls
  are reversed pushes, so every puzzle is solvable.
* A breadth-first solver over (player, boxes) is the expert: it returns a shortest action list.
* Rewards (gym-sokoban ``SokobanEnv._calc_reward``, the same numbers as paper.md):
      −0.1  every step (``penalty_for_step``)
      +1    a box pushed onto a target (``reward_box_on_target``)
      −1    a box pushed off a target (``penalty_box_off_target``)
      +10   all boxes on targets; the episode ends, ``won=True`` (``reward_finished``)
  An unparsable action changes nothing and earns −0.2: the step penalty of gym-sokoban's no-op
  (verl-agent maps it to the "still" action) plus the invalid-action penalty 0.1
  (``Env.invalid_penalty``, paper.md E8). Had it cost only the −0.1 of a move, every failed
  episode would return the same whether its actions were valid or not, and RL would have no
  reason to keep the answer format (a policy drifting to empty ``<action></action>`` answers
  was seen at 1e-4 on the CPU before this penalty).
* Text observation, with the paper's symbols: ``#`` wall, ``_`` floor, ``O`` target, ``X`` box,
  ``√`` box on target, ``P`` player, ``S`` player on target; then ``Steps left: k``.

References:
  1) iStar paper: https://arxiv.org/abs/2509.19199
  2) gym-sokoban (rooms, reverse playing, rewards, tiny-world colours):
     https://github.com/mpSchrader/gym-sokoban/blob/master/gym_sokoban/envs/room_utils.py
     https://github.com/mpSchrader/gym-sokoban/blob/master/gym_sokoban/envs/sokoban_env.py
  3) verl-agent's Sokoban (text symbols, search depth, 4 actions, player walk after generation):
     https://github.com/langfengQ/verl-agent (agent_system/environments/env_package/sokoban)

Deviations from the paper / gym-sokoban:
  1. Text observations, not images (the policy here is a small text LM); ``render_rgb`` still
     draws the image, in gym-sokoban's tiny-world colours, one flat colour per tile.
  2. Randomness is a numpy ``Generator`` seeded with ``[attempt, seed]``; a room that fails
     (too little floor, reverse-play score 0, shortest solution longer than ``max_steps``) is
     retried with the next attempt, so one seed is one puzzle on any machine. gym-sokoban retries
     with the global ``random`` state and never checks the solution length.
  3. Reverse play follows verl-agent: four pull-moves (a move that pulls the box behind the player
     if there is one) and ``last_pull`` passed down the search, so ``box_swaps`` counts changes of
     the pulled box. Upstream gym-sokoban also tries plain moves and passes the parent's
     ``last_pull`` (so ``box_swaps`` there counts every pull).
  4. After reverse play the player takes up to 3 random steps (verl-agent's
     ``add_random_player_movement``; off with ``player_walk=False``), else the player would always
     start next to a box.
  5. Actions are the four directions of verl-agent's action space, each gym-sokoban's "push"
     action (push if a box is ahead, else move). "push up", "move up", "push-up" and case variants
     all mean "up"; "move" does not forbid pushing as gym-sokoban's move actions would.
  6. Walking into a wall, or pushing a box into a wall or another box, is a VALID action that does
     not move anything and costs the −0.1 step penalty, as gym-sokoban's no-op moves do. Only text
     that does not name a direction is invalid (``valid_action=False``).

Run ``python -m envs.sokoban`` to print a puzzle, play the expert, and time stepping and generation.
"""
from __future__ import annotations

import functools

import numpy as np

from envs.base import Env

DIRECTIONS = ("up", "down", "left", "right")  # action index a -> name; gym-sokoban CHANGE_COORDINATES order
_DROW_DCOL = ((-1, 0), (1, 0), (0, -1), (0, 1))
# Every accepted spelling -> action index; parse_action already collapsed whitespace.
_ALIASES = {**{d: a for a, d in enumerate(DIRECTIONS)},
            **{f"{verb}{sep}{d}": a for a, d in enumerate(DIRECTIONS)
               for verb in ("push", "move") for sep in (" ", "-", "_")}}

STEP_PENALTY, BOX_ON_TARGET, BOX_OFF_TARGET, FINISHED = -0.1, 1.0, -1.0, 10.0  # gym-sokoban's numbers

# Tile codes, their text symbols (paper.md) and their colours (gym-sokoban room_to_tiny_world_rgb).
WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET_TILE, PLAYER, PLAYER_ON_TARGET = range(7)
SYMBOLS = "#_OX√PS"
PALETTE = np.array([[0, 0, 0], [243, 248, 238], [254, 126, 125], [142, 121, 56],
                    [254, 95, 56], [160, 212, 56], [219, 212, 56]], dtype=np.uint8)  # (7, 3)

# gym-sokoban's random-walk masks: the ones are carved into floor around the walker.
_MASKS = np.array([[[0, 0, 0], [1, 1, 1], [0, 0, 0]],
                   [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
                   [[0, 0, 0], [1, 1, 0], [0, 1, 0]],
                   [[0, 0, 0], [1, 1, 0], [1, 1, 0]],
                   [[0, 0, 0], [0, 1, 1], [0, 1, 0]]], dtype=np.int8)  # (5, 3, 3)
_MAX_EXPLORED = 300_000  # gym-sokoban's cap on reverse-play states


# -- room generation (pure functions over flat cell indices r * W + c) -----------------------------
def room_topology(rng: np.random.Generator, dim: tuple[int, int], num_steps: int,
                  p_change_directions: float = 0.35) -> np.ndarray:
    """gym-sokoban ``room_topology_generation``: a random walk stamps masks of floor; (H, W) bool."""
    h, w = dim
    level = np.zeros(dim, dtype=np.int32)  # (H, W) stamp counts; int32 so long walks cannot overflow
    direction = _DROW_DCOL[rng.integers(4)]
    pos = [int(rng.integers(1, h)), int(rng.integers(1, w))]
    for _ in range(num_steps):
        if rng.random() < p_change_directions:
            direction = _DROW_DCOL[rng.integers(4)]
        # Clamp to the interior so the 3×3 mask stays inside the room.
        pos = [min(max(pos[0] + direction[0], 1), h - 2), min(max(pos[1] + direction[1], 1), w - 2)]
        level[pos[0] - 1:pos[0] + 2, pos[1] - 1:pos[1] + 2] += _MASKS[rng.integers(len(_MASKS))]
    level[[0, h - 1], :] = 0  # the outer ring is always wall, so moves never leave the grid
    level[:, [0, w - 1]] = 0
    return level > 0


def box_displacement(boxes, targets, width: int) -> int:
    """gym-sokoban ``box_displacement_score``: Σ_k |box_k − target_k|₁ over flat cell indices."""
    return sum(abs(b // width - t // width) + abs(b % width - t % width) for b, t in zip(boxes, targets))


def reverse_play(is_wall: tuple, width: int, player: int, targets: tuple[int, ...], search_depth: int):
    """gym-sokoban ``reverse_playing``: from the solved state, pull boxes away; keep the best room.

    Score of a room = box_swaps · Σ_k |box_k − target_k|₁, and 0 while any target is covered (by a
    box or the player). Returns (score, player, boxes) of the first best room the DFS meets.
    """
    deltas = (-width, width, -1, 1)
    explored: set = set()
    best = [0, player, targets]

    def dfs(p, boxes, box_swaps, last_pull, ttl):
        ttl -= 1
        if ttl <= 0 or len(explored) >= _MAX_EXPLORED:
            return
        key = (p, tuple(sorted(boxes)))
        if key in explored:
            return
        explored.add(key)
        if all(t != p and t not in boxes for t in targets):
            score = box_swaps * box_displacement(boxes, targets, width)
            if score > best[0]:  # strict: the first room with the best score wins, as upstream
                best[:] = [score, p, boxes]
        for d in deltas:
            nxt = p + d
            if is_wall[nxt] or nxt in boxes:
                continue
            pulled, last_next = boxes, last_pull
            if p - d in boxes:  # a box behind the player follows it: a pull
                k = boxes.index(p - d)
                pulled, last_next = boxes[:k] + (p,) + boxes[k + 1:], k
            dfs(nxt, pulled, box_swaps + (last_next != last_pull), last_next, ttl)

    dfs(player, tuple(targets), 0, -1, search_depth)
    return best[0], best[1], best[2]


def random_player_walk(rng: np.random.Generator, is_wall: tuple, width: int, boxes, player: int,
                       move_probability: float, continue_probability: float = 0.5, max_moves: int = 3) -> int:
    """verl-agent ``add_random_player_movement``: up to 3 steps onto free, not yet visited cells."""
    if rng.random() > move_probability:
        return player
    visited = [player]
    for moved in range(1, max_moves + 1):
        free = [player + d for d in (-width, width, -1, 1)
                if not is_wall[player + d] and player + d not in boxes and player + d not in visited]
        if not free:
            break
        player = free[rng.integers(len(free))]
        visited.append(player)
        if moved >= max_moves or rng.random() > continue_probability:
            break
    return player


def solve(is_wall: tuple, width: int, targets: frozenset, player: int, boxes: frozenset,
          max_depth: int | None = None) -> list[int] | None:
    """Breadth-first search over (player, boxes): a shortest list of action indices, [] if solved,
    None if no solution exists (within ``max_depth`` moves when given)."""
    if boxes == targets:
        return []
    deltas = (-width, width, -1, 1)
    start = (player, boxes)
    parent = {start: None}  # state -> (previous state, action index)
    frontier, depth = [start], 0
    while frontier and (max_depth is None or depth < max_depth):
        depth += 1
        next_frontier = []
        for state in frontier:
            p, bx = state
            for a, d in enumerate(deltas):
                q = p + d
                if is_wall[q]:
                    continue
                nb = bx
                if q in bx:  # push: the cell behind the box must be free floor
                    if is_wall[q + d] or q + d in bx:
                        continue
                    nb = (bx - {q}) | {q + d}
                child = (q, nb)
                if child in parent:
                    continue
                parent[child] = (state, a)
                if nb == targets:
                    path = []
                    while parent[child] is not None:
                        child, a = parent[child]
                        path.append(a)
                    return path[::-1]
                next_frontier.append(child)
        frontier = next_frontier
    return None


@functools.lru_cache(maxsize=4096)
def distance_map(is_wall: tuple, width: int, targets: frozenset, player: int, boxes: frozenset,
                 max_states: int = 20_000) -> dict | None:
    """Shortest solution length of every state reachable from (player, boxes): {(player, boxes): moves},
    None for a dead end (no solution). Forward search enumerates the reachable states (the episode
    ends on a solved state, so those are not expanded), then a backward breadth-first pass from the
    solved states over the recorded moves gives each state its distance. Cached per level (a group's
    G episodes share it); None (no map, steps unlabelled) when more than ``max_states`` states are
    reachable, which bounds the cost of a new level to a fraction of a second (the paper's 6×6 rooms
    with one box have a few hundred states)."""
    deltas = (-width, width, -1, 1)
    states, index, preds = [(player, boxes)], {(player, boxes): 0}, [[]]
    k = 0
    while k < len(states):
        p, bx = states[k]
        if bx != targets:
            for d in deltas:
                q = p + d
                if is_wall[q]:
                    continue
                nb = bx
                if q in bx:
                    if is_wall[q + d] or q + d in bx:
                        continue
                    nb = (bx - {q}) | {q + d}
                child = (q, nb)
                if child not in index:
                    if len(states) >= max_states:
                        return None
                    index[child] = len(states)
                    states.append(child)
                    preds.append([])
                preds[index[child]].append(k)
        k += 1
    dist = [None] * len(states)
    frontier = [i for i, (_, bx) in enumerate(states) if bx == targets]
    for i in frontier:
        dist[i] = 0
    depth = 0
    while frontier:
        depth += 1
        nxt = []
        for i in frontier:
            for j in preds[i]:
                if dist[j] is None:
                    dist[j] = depth
                    nxt.append(j)
        frontier = nxt
    return dict(zip(states, dist))


# -- the environment -------------------------------------------------------------------------------
class SokobanEnv(Env):
    """Push every box onto a target within ``max_steps`` moves. See the module docstring."""

    name = "sokoban"
    system_prompt = (
        "You are playing Sokoban. Push every box onto a target.\n"
        "Map symbols: # wall, _ floor, O target, X box, √ box on target, P player, S player on target.\n"
        "Each step you move one cell: up, down, left or right. Moving into a box pushes it one cell if "
        "the cell behind it is floor or a target. You cannot pull boxes or push two boxes at once; "
        "walking into a wall does nothing but still costs a step.\n"
        "Rewards: -0.1 per step, +1 for a box pushed onto a target, -1 for a box pushed off a target, "
        "+10 when all boxes are on targets (the game ends). Anything that is not a move is invalid: nothing moves and it costs -0.2.\n"
        "Reply with optional reasoning in <think>...</think>, then the move, e.g. <action>up</action>."
    )

    def __init__(self, dim_room: tuple[int, int] = (6, 6), num_boxes: int = 1, max_steps: int = 15,
                 search_depth: int = 30, num_gen_steps: int | None = None, player_walk: bool = True,
                 max_attempts: int = 1000) -> None:
        super().__init__()
        if (not isinstance(dim_room, (tuple, list)) or len(dim_room) != 2
                or not all(isinstance(x, (int, np.integer)) and x >= 3 for x in dim_room)):
            raise ValueError(f"SokobanEnv(dim_room=...): expected two ints >= 3 (rows, cols), got {dim_room!r}")
        for arg, value, low in (("num_boxes", num_boxes, 1), ("max_steps", max_steps, 1),
                                ("search_depth", search_depth, 2), ("max_attempts", max_attempts, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"SokobanEnv({arg}=...): expected an int >= {low}, got {value!r}")
        self.dim_room = (int(dim_room[0]), int(dim_room[1]))
        if (self.dim_room[0] - 2) * (self.dim_room[1] - 2) < num_boxes + 2:
            raise ValueError(f"SokobanEnv: a {self.dim_room} room has too few inner cells for "
                             f"{num_boxes} boxes, their targets and the player")
        self.num_boxes, self.max_steps, self.search_depth = int(num_boxes), int(max_steps), int(search_depth)
        # gym-sokoban's default walk length: num_gen_steps = int(1.7 · (H + W)).
        self.num_gen_steps = int(1.7 * sum(self.dim_room)) if num_gen_steps is None else int(num_gen_steps)
        self.player_walk, self.max_attempts = bool(player_walk), int(max_attempts)

    # -- generation ---------------------------------------------------------------------------------
    def _generate(self, seed: int) -> None:
        h, w = self.dim_room
        for attempt in range(self.max_attempts):
            # One Generator per attempt, derived from the seed: reproducible on any machine.
            rng = np.random.default_rng([attempt, seed % (1 << 64)])
            floor = room_topology(rng, self.dim_room, self.num_gen_steps)  # (H, W)
            cells = list(np.flatnonzero(floor))  # row-major, as np.where in gym-sokoban
            if len(cells) <= self.num_boxes + 1:
                continue
            player = int(cells.pop(rng.integers(len(cells))))
            targets = tuple(int(cells.pop(rng.integers(len(cells)))) for _ in range(self.num_boxes))
            is_wall = tuple(bool(x) for x in ~floor.ravel())
            score, player, boxes = reverse_play(is_wall, w, player, targets, self.search_depth)
            if score <= 0:  # gym-sokoban rejects rooms where no pull left every target uncovered
                continue
            if self.player_walk:
                walk_p = 0.8 if box_displacement(boxes, targets, w) == 1 else 0.5  # verl-agent's numbers
                player = random_player_walk(rng, is_wall, w, boxes, player, walk_p)
            plan = solve(is_wall, w, frozenset(targets), player, frozenset(boxes), max_depth=self.max_steps)
            if plan is None:  # needs more moves than the episode allows
                continue
            self._load(is_wall, h, w, frozenset(targets), player, frozenset(boxes))
            self._remember(plan)
            return
        raise RuntimeError(f"SokobanEnv: no puzzle for seed {seed} in {self.max_attempts} attempts "
                           f"(dim_room={self.dim_room}, num_boxes={self.num_boxes}, max_steps={self.max_steps})")

    def _load(self, is_wall, h, w, targets, player, boxes) -> None:
        self._h, self._w, self._is_wall, self._targets = h, w, is_wall, targets
        self._player, self._boxes = player, boxes
        self._start = (player, boxes)  # the key of the level's distance map (step_optimal)
        self._on_target = len(boxes & targets)
        # The fixed layer of the text grid; boxes and the player are drawn over a copy each step.
        self._base_cells = ["#" if is_wall[i] else ("O" if i in targets else "_") for i in range(h * w)]
        self._expert_cache: dict = {}

    def set_level(self, grid: str) -> str:
        """Load a hand-written level in the paper's symbols (cells may be space-separated); returns
        the first observation. The outer ring must be wall; boxes and targets must pair up."""
        rows = [line.replace(" ", "") for line in grid.strip().splitlines() if line.strip()]
        h, w = len(rows), len(rows[0]) if rows else 0
        if h < 3 or w < 3 or any(len(r) != w for r in rows) or any(c not in SYMBOLS for r in rows for c in r):
            raise ValueError(f"set_level(grid=...): expected a rectangle of {SYMBOLS!r} at least 3×3, got {grid!r}")
        cells = "".join(rows)
        if any(cells[i] != "#" for i in range(h * w) if i // w in (0, h - 1) or i % w in (0, w - 1)):
            raise ValueError("set_level(grid=...): the outer ring must be all wall '#'")
        players = [i for i, c in enumerate(cells) if c in "PS"]
        boxes = frozenset(i for i, c in enumerate(cells) if c in "X√")
        targets = frozenset(i for i, c in enumerate(cells) if c in "O√S")
        if len(players) != 1 or not boxes or len(boxes) != len(targets) or boxes == targets:
            raise ValueError("set_level(grid=...): expected one player, as many boxes as targets (>= 1), "
                             f"not already solved; got {len(players)} players, {len(boxes)} boxes, {len(targets)} targets")
        # A hand-written level is not a seed; self.num_boxes (the generator's setting) stays as it was.
        self.seed, self.steps, self.done = None, 0, False
        self._load(tuple(c == "#" for c in cells), h, w, targets, players[0], boxes)
        return self._first_observation()

    # -- the protocol ---------------------------------------------------------------------------------
    def _reset(self, seed: int) -> str:
        self._generate(seed)
        return self._first_observation()

    def _step(self, action: str | None) -> tuple[str, float, bool, dict]:
        a = _ALIASES.get(action.lower()) if action is not None else None
        before = (self._player, self._boxes)
        if a is None:  # no direction named: a no-op step (−0.1), and the base class subtracts the 0.1 penalty
            return self._observation(), STEP_PENALTY, False, self._info(valid=False, won=False, moved=False, before=before)
        d = (-self._w, self._w, -1, 1)[a]
        p, q = self._player, self._player + d
        if not self._is_wall[q]:
            if q not in self._boxes:
                self._player = q
            elif not self._is_wall[q + d] and q + d not in self._boxes:  # push the box one cell
                self._boxes = (self._boxes - {q}) | {q + d}
                self._player = q
        # else: a wall or a blocked box ahead; gym-sokoban's no-op move, still a (valid) step.
        on_target = len(self._boxes & self._targets)
        reward = STEP_PENALTY
        if on_target > self._on_target:  # one push changes the count by at most one
            reward += BOX_ON_TARGET
        elif on_target < self._on_target:
            reward += BOX_OFF_TARGET
        self._on_target = on_target
        won = on_target == len(self._targets)
        if won:
            reward += FINISHED
        return self._observation(), reward, won, self._info(valid=True, won=won, moved=self._player != p, before=before)

    def _info(self, valid: bool, won: bool, moved: bool, before: tuple) -> dict:
        # score: the fraction of boxes on targets (1.0 exactly when won).
        return {"valid_action": valid, "won": won, "moved": moved, "boxes_on_target": self._on_target,
                "score": self._on_target / len(self._targets), "optimal": self.step_optimal(before)}

    def step_optimal(self, before: tuple) -> bool | None:
        """Ground-truth step credit: did the move from state ``before`` to the current state take one
        step along a shortest solution (distance to solved −1)? None when ``before`` is a dead end
        (no move helps) or the level has too many states to map. Diagnostics only (rollout.py records
        it as ``step_optimal``; credit.py scores step rewards and advantages against it): neither the
        policy nor the PRM ever sees it."""
        dist = distance_map(self._is_wall, self._w, self._targets, *self._start)
        if dist is None or dist.get(before) is None:
            return None
        after = dist.get((self._player, self._boxes))
        return after is not None and after == dist[before] - 1

    # -- observations ---------------------------------------------------------------------------------
    def grid_text(self) -> str:
        """The board in the paper's symbols, one row per line, cells separated by spaces (so a
        tokenizer sees one token per cell instead of merging runs such as '###')."""
        cells = self._base_cells.copy()
        for b in self._boxes:
            cells[b] = "√" if b in self._targets else "X"
        cells[self._player] = "S" if self._player in self._targets else "P"
        return "\n".join(" ".join(cells[r * self._w:(r + 1) * self._w]) for r in range(self._h))

    def _observation(self) -> str:
        return f"{self.grid_text()}\nSteps left: {self.max_steps - self.steps}"

    def _first_observation(self) -> str:
        return "Push every box (X) onto a target (O).\n" + self._observation()

    def tile_codes(self) -> np.ndarray:
        """(H, W) int8 tile codes (WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET_TILE, PLAYER, PLAYER_ON_TARGET)."""
        lookup = {c: i for i, c in enumerate(SYMBOLS)}
        return np.array([[lookup[c] for c in row.split(" ")] for row in self.grid_text().split("\n")], dtype=np.int8)

    def render_rgb(self, scale: int = 16) -> np.ndarray:
        """(H·scale, W·scale, 3) uint8 image, one flat colour per tile (gym-sokoban tiny-world colours)."""
        if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 1:
            raise ValueError(f"render_rgb(scale=...): expected an int >= 1, got {scale!r}")
        image = PALETTE[self.tile_codes()]  # (H, W, 3)
        return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)  # (H·scale, W·scale, 3)

    # -- the expert -----------------------------------------------------------------------------------
    def _remember(self, plan: list[int]) -> None:
        """Cache the next action of a shortest plan for every state along it (its suffixes are shortest too)."""
        p, boxes = self._player, self._boxes
        for a in plan:
            self._expert_cache[(p, boxes)] = a
            d = (-self._w, self._w, -1, 1)[a]
            if p + d in boxes:
                boxes = (boxes - {p + d}) | {p + 2 * d}
            p += d

    def solve(self) -> list[str] | None:
        """A shortest list of moves from the current state; [] if solved, None if it is a dead end."""
        plan = solve(self._is_wall, self._w, self._targets, self._player, self._boxes)
        return None if plan is None else [DIRECTIONS[a] for a in plan]

    def expert_action(self) -> str:
        """The next move of a shortest solution from the current state (BFS, cached per state).
        In a dead end (e.g. a box in a corner) no move helps: the first direction not into a wall
        is returned, else "up"."""
        if self.done:
            raise RuntimeError("sokoban: expert_action() called after the episode ended; call reset(seed) first")
        key = (self._player, self._boxes)
        if key not in self._expert_cache:
            plan = solve(self._is_wall, self._w, self._targets, self._player, self._boxes)
            if plan is None:
                free = [a for a, d in enumerate((-self._w, self._w, -1, 1)) if not self._is_wall[self._player + d]]
                return DIRECTIONS[free[0]] if free else DIRECTIONS[0]
            self._remember(plan)
        return DIRECTIONS[self._expert_cache[key]]

    def random_action(self, rng: np.random.Generator) -> str:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"random_action(rng=...): expected a numpy Generator, got {type(rng).__name__}")
        return DIRECTIONS[int(rng.integers(4))]


if __name__ == "__main__":
    import time

    from envs.base import wrap_action

    env = SokobanEnv()
    obs, total, done = env.reset(seed=0), 0.0, False
    print(env.system_prompt, obs, sep="\n")
    while not done:
        obs, reward, done, info = env.step(wrap_action(action := env.expert_action()))
        total += reward
        print(f"{action}: reward {reward:+.1f}")
    print(f"{obs}\nwon={info['won']} return={total:.1f}")

    for dim, boxes in (((6, 6), 1), ((7, 7), 2)):
        env, n = SokobanEnv(dim_room=dim, num_boxes=boxes), 200
        t0 = time.perf_counter()
        for seed in range(n):
            env.reset(seed=seed)
        print(f"reset {dim} {boxes} box(es): {(time.perf_counter() - t0) / n * 1e3:.2f} ms per puzzle (mean of {n})")

    envs = [SokobanEnv() for _ in range(1000)]
    for i, e in enumerate(envs):
        e.reset(seed=i)
    t0 = time.perf_counter()
    for e in envs:
        e.step("<action>up</action>")
    print(f"step: 1000 envs once in {(time.perf_counter() - t0) * 1e3:.1f} ms")
