"""What the Sokoban demonstrations allow: how well the expert's move can be predicted from the board.

`bench.warmstart_probe` reports the warm-started policy's mean probability of the expert's move on
held-out states (warmstart.expert_prob). This script gives that number its scale, with no language
model involved:

1. Ties. For every state of ``--probe-episodes`` held-out expert episodes (the probe's own seeds,
   ``PROBE_SEED_BASE + k``), how many of the four moves take one step along a shortest solution
   (the env's ground-truth ``info["optimal"]``, tried on a copy of the env). One everywhere means the
   expert's move is a function of the board and a policy can approach probability 1.
2. A reference learner. A 2-layer MLP on the one-hot board (``env.tile_codes()``: H × W cells × 7
   tile kinds), trained with cross-entropy on the states of the warm start's own demonstrations
   (``DEMO_SEED_BASE + k``, k < ``--episodes``: the episodes train.py's warm start learns from) and
   scored like the probe: the mean probability of the expert's move on the held-out states.

The MLP sees only the current board, already aligned cell by cell; the policy sees a ~360-token text
context (system prompt, two past steps, the board as a 1-D token sequence) and has to find the board
in it. So the gap between the two is what the language model's input format and size cost.

Run: ``python -m bench.board_ceiling --episodes 1500`` (about a minute on a 2-core CPU)
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from envs.base import wrap_action
from envs.sokoban import DIRECTIONS, SokobanEnv
from warmstart import DEMO_SEED_BASE, PROBE_SEED_BASE

N_TILES = 7  # WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET (SokobanEnv.tile_codes)


def expert_states(seeds, count_ties: bool = False):
    """(boards (n, H, W) int8, expert moves (n,) int64, shortest moves per state (n,) or None) along
    expert episodes on ``seeds``."""
    env = SokobanEnv()
    boards, moves, ties = [], [], []
    for seed in seeds:
        env.reset(int(seed))
        done = False
        while not done:
            if count_ties:  # each move on a copy: does it step along a shortest solution?
                ties.append(sum(bool(copy.deepcopy(env).step(wrap_action(d))[3].get("optimal")) for d in DIRECTIONS))
            move = env.expert_action()
            boards.append(env.tile_codes())
            moves.append(DIRECTIONS.index(move))
            _, _, done, _ = env.step(wrap_action(move))
    return np.stack(boards), np.array(moves), (np.array(ties) if count_ties else None)


def one_hot(boards: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(boards).long(), N_TILES).float().flatten(1)  # (n, H·W·7)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=1500, help="demonstration episodes to train the MLP on (train.py's --warmstart-episodes)")
    p.add_argument("--probe-episodes", type=int, default=64, help="held-out expert episodes scored (bench.warmstart_probe's)")
    p.add_argument("--epochs", type=int, default=60, help="passes of the MLP over the demonstration states")
    p.add_argument("--hidden", type=int, default=512, help="width of the MLP's two hidden layers")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.episodes, args.probe_episodes, args.epochs, args.hidden) < 1:
        raise SystemExit("bench.board_ceiling: --episodes, --probe-episodes, --epochs and --hidden must be >= 1")
    t0 = time.time()
    train_x, train_y, _ = expert_states(range(DEMO_SEED_BASE, DEMO_SEED_BASE + args.episodes))
    test_x, test_y, ties = expert_states(range(PROBE_SEED_BASE, PROBE_SEED_BASE + args.probe_episodes), count_ties=True)
    print(f"{len(train_y)} demonstration states, {len(test_y)} held-out states ({time.time() - t0:.0f} s)")
    print(f"shortest moves per held-out state: mean {ties.mean():.3f}, counts of 0/1/2/3/4: "
          f"{np.bincount(ties, minlength=5).tolist()}; a policy uniform over them gives the expert's move "
          f"{np.mean(1 / np.maximum(ties, 1)):.3f}")
    xtr, xte = one_hot(train_x), one_hot(test_x)  # (n, H·W·7)
    ytr, yte = torch.from_numpy(train_y), torch.from_numpy(test_y)  # (n,)
    torch.manual_seed(args.seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(xtr.shape[1], args.hidden), torch.nn.ReLU(),
                              torch.nn.Linear(args.hidden, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 4))
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=0.01)
    result = {}
    for epoch in range(1, args.epochs + 1):
        for idx in torch.randperm(len(ytr)).split(128):
            loss = torch.nn.functional.cross_entropy(mlp(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % 10 == 0 or epoch == args.epochs:
            with torch.no_grad():
                prob = mlp(xte).softmax(-1)[torch.arange(len(yte)), yte].mean().item()  # as warmstart.expert_prob
                train_prob = mlp(xtr).softmax(-1)[torch.arange(len(ytr)), ytr].mean().item()
            result = {"epoch": epoch, "heldout_expert_prob": prob, "train_expert_prob": train_prob}
            print(f"MLP epoch {epoch:3d}: expert-move probability, demonstrations {train_prob:.3f}, held-out {prob:.3f}")
    return {**result, "mean_shortest_moves": float(ties.mean())}


if __name__ == "__main__":
    main()
