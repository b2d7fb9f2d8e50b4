"""Replay an evaluation episode of a trained run with the implicit step reward of every step.

    python train.py --show runs/sokoban-rloo-istar-s0 [--seed K]

Loads the run's saved policy and PRM (train.py writes them to RUN_DIR/policy and RUN_DIR/prm at
the end of a run), plays one held-out task greedily, and prints each step's action, env reward and
implicit reward r_φ = β · Σ_k (log π_φ − log π_θ) over the action's tokens (paper Eq. 1, paper.md E1),
with the policy itself as the reference, and the env's ground-truth label of the step where it has
one (Sokoban: "optimal move" = one step along a shortest solution; credit.py). For Sokoban it also saves a PNG strip of the states with
r_φ above each frame (RUN_DIR/replay.png), so a reader can see which moves the PRM credits.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from config import Config, saved_config
from envs import make_env
from model import load_model, token_logprobs
from prm import step_rewards
from rollout import pack, rollout
from warmstart import EVAL_SEED_BASE


def _load(run_dir: Path, name: str):
    path = run_dir / name
    if not path.is_dir():
        raise FileNotFoundError(f"--show {run_dir}: {path} not found; it is written when a run finishes (train.py)")
    return load_model(str(path))


@torch.no_grad()
def replay_episode(run_dir: Path, cli_cfg: Config) -> list[dict]:
    cfg = Config(**saved_config(run_dir / "config.json"))
    policy, tokenizer = _load(run_dir, "policy")
    prm, _ = _load(run_dir, "prm")
    kwargs = {"max_steps": cfg.max_steps} if cfg.max_steps else {}
    seed = EVAL_SEED_BASE + cli_cfg.seed  # --seed K picks the K-th held-out task
    traj = rollout(policy, tokenizer, lambda: make_env(cfg.env, **kwargs), [seed], 1, temperature=0.0,
                   max_action_tokens=cfg.max_action_tokens, max_context=cfg.max_context,
                   max_history_steps=cfg.history_steps or None, engine=cfg.rollout_engine,
                   generator=torch.Generator().manual_seed(0), device="cpu")[0]
    batch = pack([traj], "cpu", tokenizer.pad_token_id)
    old_logp = token_logprobs(policy, batch.input_ids, batch.attention_mask, batch.action_mask)  # (T,)
    prm_logp = token_logprobs(prm, batch.input_ids, batch.attention_mask, batch.action_mask)  # (T,)
    r = step_rewards(prm_logp, old_logp, batch.step_cu, cfg.beta)  # (S,) E1
    steps = []
    print(f"{cfg.env} task seed {seed}: won={traj.won} return={traj.outcome:.2f}\n")
    print(traj.observations[0])
    for t, (action, obs) in enumerate(zip(traj.actions, traj.observations[1:])):
        label = {1: True, 0: False}.get(traj.step_optimal[t])  # the env's ground truth (credit.py); None = unknown
        steps.append({"step": t + 1, "action": action, "env_reward": traj.step_rewards[t], "implicit_reward": r[t].item(),
                      "optimal": label})
        mark = "" if label is None else ("   optimal move" if label else "   not optimal")
        print(f"\n--- step {t + 1}: {action!r}   env reward {traj.step_rewards[t]:+.2f}   r_phi {r[t].item():+.4f}{mark}")
        print(obs)
    (run_dir / "replay.json").write_text(json.dumps({"seed": seed, "won": traj.won, "steps": steps}, indent=1))
    if cfg.env == "sokoban":
        print("saved", save_sokoban_strip(run_dir / "replay.png", cfg, kwargs, seed, traj.actions, r.tolist()))
    return steps


def save_sokoban_strip(path: Path, cfg: Config, kwargs: dict, seed: int, actions: list[str], rewards: list[float]) -> Path:
    """The episode's states side by side, each titled with the action that led to it and its r_φ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = make_env("sokoban", **kwargs)
    env.reset(seed)
    frames = [env.render_rgb()]
    for action in actions:
        env.step(action)
        frames.append(env.render_rgb())
    fig, axes = plt.subplots(1, len(frames), figsize=(1.8 * len(frames), 2.2))
    for k, (ax, frame) in enumerate(zip(np.atleast_1d(axes), frames)):
        ax.imshow(frame)
        ax.set_axis_off()
        ax.set_title("start" if k == 0 else f"{actions[k - 1][:14]}\nr_φ={rewards[k - 1]:+.3f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
