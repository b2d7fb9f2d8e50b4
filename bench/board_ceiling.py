"""What the Sokoban demonstrations allow: how well the expert's move can be predicted from the board.

`bench.warmstart_probe` reports the warm-started policy's mean probability of the expert's move on
held-out states (warmstart.expert_prob). This script gives that number its scale:

1. Ties. For every state of ``--probe-episodes`` held-out expert episodes (the probe's own seeds,
   ``PROBE_SEED_BASE + k``), how many of the four moves take one step along a shortest solution
   (the env's ground-truth ``info["optimal"]``, tried on a copy of the env). One everywhere means the
   expert's move is a function of the board and a policy can approach probability 1.
2. A reference learner, no language model. A 2-layer MLP on the one-hot board (``env.tile_codes()``:
   H × W cells × 7 tile kinds), trained with cross-entropy on the states of the warm start's own
   demonstrations (``DEMO_SEED_BASE + k``, k < ``--episodes``: the episodes train.py's warm start
   learns from) and scored like the probe: the mean probability of the expert's move on the
   held-out states.
3. ``--transformer``: the warm start's own model and training, with only the context changed. The
   default small Llama (built as train.py builds it, with the env's tokenizer) is trained like
   warmstart.warm_start (same demonstrations, NLL of the action tokens, AdamW, the cosine schedule,
   ``warmstart_epochs`` passes, the states of 16 episodes per step: the same number of steps and of
   move predictions) on rows [user: the current observation][assistant: the expert's action], with
   ``--context system`` the env's system prompt before them, and scored like the probe
   (warmstart.expert_prob: the probability of the whole action text).

The MLP sees only the current board, already aligned cell by cell; the policy sees a ~360-token text
context (system prompt, first observation, two past steps, each board a 1-D token sequence, the
current one the last of up to four) and has to find the board in it. The gap between the two is
what the language model's input format and size cost; the Llama on the current observation alone
separates the two, and ``--context system`` the prompt from the history (measured: the prompt costs
it all, README "Sokoban"; train.py ``--no-system-prompt`` drops it from the policy's rows).

Run: ``python -m bench.board_ceiling --episodes 1500`` (about a minute on a 2-core CPU);
``python -m bench.board_ceiling --episodes 6000 --transformer [--context system]`` adds the Llama (~27 min on
one thread)
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from config import parse_config
from envs.base import wrap_action
from envs.sokoban import DIRECTIONS, SokobanEnv
from model import build_default_model, encode_action, format_prompts
from warmstart import DEMO_SEED_BASE, PROBE_SEED_BASE, env_tokenizer, expert_prob, pad_rows, sft_step, warmstart_lr

N_TILES = 7  # WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET (SokobanEnv.tile_codes)


def expert_states(seeds, count_ties: bool = False, texts: list | None = None):
    """(boards (n, H, W) int8, expert moves (n,) int64, shortest moves per state (n,) or None) along
    expert episodes on ``seeds``; ``texts``, when given, receives the observation of each state, as
    the policy reads it."""
    env = SokobanEnv()
    boards, moves, ties = [], [], []
    for seed in seeds:
        obs, done = env.reset(int(seed)), False
        while not done:
            if count_ties:  # each move on a copy: does it step along a shortest solution?
                ties.append(sum(bool(copy.deepcopy(env).step(wrap_action(d))[3].get("optimal")) for d in DIRECTIONS))
            move = env.expert_action()
            boards.append(env.tile_codes())
            if texts is not None:
                texts.append(obs)
            moves.append(DIRECTIONS.index(move))
            obs, _, done, _ = env.step(wrap_action(move))
    return np.stack(boards), np.array(moves), (np.array(ties) if count_ties else None)


def one_hot(boards: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(boards).long(), N_TILES).float().flatten(1)  # (n, H·W·7)


def context_rows(tokenizer, system: str, observations: list[str], moves: np.ndarray) -> list[tuple[list[int], list[bool]]]:
    """One row per state: [system turn, if any][user: the observation][assistant: the expert's action],
    the action tokens masked in (warmstart.demo_rows's layout with no history)."""
    prompts = format_prompts(tokenizer, [system] * len(observations), observations)
    actions = [encode_action(tokenizer, wrap_action(DIRECTIONS[m])) for m in moves]
    return [(p + a, [False] * len(p) + [True] * len(a)) for p, a in zip(prompts, actions)]


def transformer_prob(train_obs, train_y, test_obs, test_y, episodes: int, context: str, seed: int) -> list[dict]:
    """Train the default small Llama as warmstart.warm_start does, on rows with ``context`` only
    (module docstring, 3.); return the held-out expert-action probability at six points of training."""
    cfg, _ = parse_config(["--env", "sokoban"])
    env = SokobanEnv()
    tokenizer = env_tokenizer(SokobanEnv, cfg.vocab_size)
    system = env.system_prompt if context == "system" else ""
    train, test = context_rows(tokenizer, system, train_obs, train_y), context_rows(tokenizer, system, test_obs, test_y)
    policy = build_default_model(tokenizer, cfg.model_size, seed=seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.warmstart_lr, weight_decay=0.0)
    per_epoch = -(-episodes // 16)  # the warm start's optimiser steps per pass (16 episodes each)
    total = cfg.warmstart_epochs * per_epoch
    print(f"Llama ({sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M parameters), context {context!r}: "
          f"{len(train[0][0])}-token rows, {total} steps of ~{len(train) / per_epoch:.0f} states")
    gen, t0, out, losses = torch.Generator().manual_seed(seed), time.time(), [], []
    for _ in range(cfg.warmstart_epochs):
        for idx in torch.randperm(len(train), generator=gen).tensor_split(per_epoch):
            ids, am, act = pad_rows([train[i] for i in idx.tolist()], tokenizer.pad_token_id)  # (R, L) each
            lr = warmstart_lr(len(losses), total, cfg.warmstart_lr, cfg.warmstart_schedule)
            losses.append(sft_step(policy.train(), opt, ids, am, act, lr))  # warm_start's step
            if len(losses) % max(1, total // 6) == 0 or len(losses) == total:
                prob = expert_prob(policy.eval(), test, tokenizer.pad_token_id, "cpu")
                out.append({"step": len(losses), "heldout_expert_prob": prob, "loss": float(np.mean(losses[-50:]))})
                print(f"Llama step {len(losses):5d}: held-out expert-action probability {prob:.3f}, "
                      f"loss {out[-1]['loss']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=1500, help="demonstration episodes to train the MLP on (train.py's --warmstart-episodes)")
    p.add_argument("--probe-episodes", type=int, default=64, help="held-out expert episodes scored (bench.warmstart_probe's)")
    p.add_argument("--epochs", type=int, default=60, help="passes of the MLP over the demonstration states")
    p.add_argument("--hidden", type=int, default=512, help="width of the MLP's two hidden layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--transformer", action="store_true", help="also train the default small Llama on --context (module docstring, 3.)")
    p.add_argument("--context", choices=["board", "system"], default="board",
                   help="the Llama's rows: the current observation alone, or after the env's system prompt")
    args = p.parse_args(argv)
    if min(args.episodes, args.probe_episodes, args.epochs, args.hidden) < 1:
        raise SystemExit("bench.board_ceiling: --episodes, --probe-episodes, --epochs and --hidden must be >= 1")
    t0 = time.time()
    train_obs, test_obs = [], []
    train_x, train_y, _ = expert_states(range(DEMO_SEED_BASE, DEMO_SEED_BASE + args.episodes), texts=train_obs)
    test_x, test_y, ties = expert_states(range(PROBE_SEED_BASE, PROBE_SEED_BASE + args.probe_episodes), count_ties=True,
                                         texts=test_obs)
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
    result = {**result, "mean_shortest_moves": float(ties.mean())}
    if args.transformer:
        result["transformer"] = transformer_prob(train_obs, train_y, test_obs, test_y, args.episodes, args.context, args.seed)
    return result


if __name__ == "__main__":
    main()
