"""Replay an evaluation episode of a trained run with the implicit step reward of every step.

    python train.py --show runs/sokoban-rloo-istar-s0 [--seed K]

Loads the run's latest policy and PRM (``load_run``: RUN_DIR/policy and RUN_DIR/prm, which train.py
writes at the end of a run, or its checkpoint.pt when that is newer: a run in flight, or one stopped
before its end), plays one held-out task greedily, and prints each step's action, env reward and
implicit reward r_φ = β · Σ_k (log π_φ − log π_θ) over the action's tokens (paper Eq. 1, paper.md E1),
with the policy itself as the reference (a run with ``--prm-reference start``: its frozen π_0, from
checkpoint.pt), and the env's ground-truth label of the step where it has
one (Sokoban: "optimal move" = one step along a shortest solution, "into a dead end" = the move left
the level unsolvable; credit.py). For Sokoban it also saves a PNG strip of the states with
r_φ above each frame (RUN_DIR/replay.png), so a reader can see which moves the PRM credits.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from config import Config, saved_config
from credit import safe_move_labels
from model import load_model, token_logprobs
from prm import step_rewards
from rollout import pack, rollout
from train import build_models, env_factory
from warmstart import EVAL_SEED_BASE


def load_run(run_dir: Path, device="cpu"):
    """(config, policy, PRM, tokenizer, which weights) of a train.py run: the final models (RUN_DIR/policy
    and /prm, written when a run ends), or the checkpoint when it is newer than them or they are absent
    (a run in flight, stopped early, or resumed after it ended)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise SystemExit(f"{run_dir}: no train.py run there (no config.json)")
    cfg = Config(**saved_config(run_dir / "config.json"))
    final, ckpt = [run_dir / "policy", run_dir / "prm"], run_dir / "checkpoint.pt"
    written = max((f.stat().st_mtime for d in final if d.is_dir() for f in d.iterdir()), default=0.0)
    if all(d.is_dir() for d in final) and not (ckpt.is_file() and ckpt.stat().st_mtime > written):
        (policy, tokenizer), (prm, _) = (load_model(str(d), device) for d in final)
        return cfg, policy.eval(), prm.eval(), tokenizer, "the final policy"
    if not ckpt.is_file():
        raise SystemExit(f"{run_dir}: neither a final policy ({final[0]}) nor a checkpoint.pt: the run "
                         f"stopped before its first checkpoint")
    tokenizer, policy, prm, _, _ = build_models(cfg, env_factory(cfg), device, run_dir)  # the run's architecture
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    policy.load_state_dict(state["policy"])
    prm.load_state_dict(state["prm"])
    return cfg, policy.eval(), prm.eval(), tokenizer, f"the checkpoint of iteration {state['iteration']}"


@torch.no_grad()
def replay_episode(run_dir: Path, cli_cfg: Config) -> list[dict]:
    cfg, policy, prm, tokenizer, which = load_run(run_dir)
    make = env_factory(cfg)  # the run's env settings (step limit, carvings, IDs, system prompt)
    seed = EVAL_SEED_BASE + cli_cfg.seed  # --seed K picks the K-th held-out task
    traj = rollout(policy, tokenizer, make, [seed], 1, temperature=0.0,
                   max_action_tokens=cfg.max_action_tokens, max_context=cfg.max_context,
                   max_history_steps=cfg.history_steps or None, engine=cfg.rollout_engine,
                   generator=torch.Generator().manual_seed(0), device="cpu")[0]
    batch = pack([traj], "cpu", tokenizer.pad_token_id)
    reference = policy
    if cfg.prm_reference == "start":  # E1 against the run's frozen π_0, which only checkpoint.pt holds
        reference = copy.deepcopy(policy)
        reference.load_state_dict(torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)["ref"])
    old_logp = token_logprobs(reference, batch.input_ids, batch.attention_mask, batch.action_mask)  # (T,)
    prm_logp = token_logprobs(prm, batch.input_ids, batch.attention_mask, batch.action_mask)  # (T,)
    r = step_rewards(prm_logp, old_logp, batch.step_cu, cfg.beta)  # (S,) E1
    safe = safe_move_labels(batch).tolist()  # (S,) 1 kept the level solvable, 0 led into a dead end, -1 unknown
    steps = []
    print(f"{run_dir}, {which}; {cfg.env} task seed {seed}: won={traj.won} return={traj.outcome:.2f}\n")
    print(traj.observations[0])
    for t, (action, obs) in enumerate(zip(traj.actions, traj.observations[1:])):
        label = {1: True, 0: False}.get(traj.step_optimal[t])  # the env's ground truth (credit.py); None = unknown
        steps.append({"step": t + 1, "action": action, "env_reward": traj.step_rewards[t], "implicit_reward": r[t].item(),
                      "optimal": label, "fatal": {1: False, 0: True}.get(safe[t])})
        mark = "" if label is None else ("   optimal move" if label else "   not optimal")
        mark += "   into a dead end" if safe[t] == 0 else ""
        print(f"\n--- step {t + 1}: {action!r}   env reward {traj.step_rewards[t]:+.2f}   r_phi {r[t].item():+.4f}{mark}")
        print(obs)
    (run_dir / "replay.json").write_text(json.dumps({"seed": seed, "won": traj.won, "steps": steps}, indent=1))
    if cfg.env == "sokoban":
        print("saved", save_sokoban_strip(run_dir / "replay.png", make, seed, traj.actions, r.tolist()))
    return steps


def save_sokoban_strip(path: Path, make, seed: int, actions: list[str], rewards: list[float]) -> Path:
    """The episode's states side by side, each titled with the action that led to it and its r_φ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = make()
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
