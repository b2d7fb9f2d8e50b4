"""Warm start of the small default model: behaviour cloning of a noisy expert.

The paper starts RL from instruction-tuned LLMs (Qwen2.5-7B-Instruct) that already play the games
a little (paper table 1: 14-21% success before RL). Our default model is built from scratch and
knows nothing, so RL from it would only ever see failures and no preference pairs. We give it a
short supervised warm start instead: the env's expert plays, each action replaced by a random one
with probability `warmstart_random_frac`, and the model is trained with cross-entropy on those
(noisy) actions, in exactly the layout the rollouts use: the chat format (model.format_prompt /
format_observation / encode_action) and the same history windows (rollout.window_rows, e.g. the
Sokoban preset's prompt + last 2 steps), so every demonstrated action is trained in the context
the policy will act in. The result succeeds sometimes but far from always (target
10-40% on held-out tasks), which is the regime where group-relative RL and iStar's preference
pairs have signal. Skipped automatically when --model loads a pretrained LM.

The Sokoban preset sets ``warmstart_random_frac = 0``: with 30% random labels the small model
hardly learned to read the board in 1,000 SFT steps (held-out expert-action probability 0.25 →
0.29), on the expert's moves alone it passed 0.40 by step 300 and still started imperfect (27%
sampled success, random moves 25%; docs/results.md, Sokoban). It also sets ``warmstart_episodes = 6000``: more
data, not more passes, is what the small model needed (expert-action probability 0.497 after 1,125
steps vs 0.329 from 1,500 episodes; held-out greedy success 39% vs 31% for random moves).

The learning rate warms up over the first twentieth of the steps and decays (cosine) to a tenth of
``warmstart_lr`` (``warmstart_lr()``; ``--warmstart-schedule constant`` keeps it fixed, as runs before
2026-12-05 did): on the default Sokoban warm start it reached expert-action probability 0.329
against the constant schedule's 0.290 (docs/results.md, Sokoban).

Success alone can mislead: on Sokoban uniformly random moves win ~22% of the levels, and with 30%
random labels a warm start of ~150-300 steps taught the answer format but left the move itself
uniform, at that same success (docs/results.md, Sokoban, "Read this first"). ``expert_prob`` measures what the policy
knows instead: its probability of the expert's action along held-out expert episodes (train.py
logs it as ``eval/expert_prob``; ``python -m bench.warmstart_probe`` per SFT step).

Warm starts are cached (``cached_warm_start``, ``--warmstart-cache``): a run whose warm-start
settings equal an earlier or concurrent run's loads that policy instead of training again, so the
variants of one seed in a sweep start RL from the identical policy. The warm start's seed is
``cfg.start_seed`` (``--init-seed``, default ``--seed``): one ``--init-seed`` for every seed of a
sweep starts all its runs from one policy, as the paper's seeds start from one pretrained LLM.

Demonstration seeds come from their own range (≥ 2**31 + 2·10**6), disjoint from the training
tasks (< 2**31) and the held-out evaluation tasks (2**31 … 2**31 + eval_tasks).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from config import LEGACY_DEFAULTS
from envs import EVAL_SEED_BASE, wrap_action
from model import build_tokenizer, encode_action, format_observation, format_prompt, token_logprobs
from rollout import window_rows

DEMO_SEED_BASE = EVAL_SEED_BASE + 2 * 10**6  # demonstrations: their own range
PROBE_SEED_BASE = EVAL_SEED_BASE + 10**6  # expert probe (``expert_prob``): held-out states of expert play


def play_noisy_expert(env, seed: int, random_frac: float, rng: np.random.Generator):
    """One episode: (first observation, [(action text, next observation)], won)."""
    first = env.reset(seed)
    turns, done, info = [], False, {}
    while not done:
        bare = env.random_action(rng) if rng.random() < random_frac else env.expert_action()
        action = wrap_action(bare)
        obs, _, done, info = env.step(action)
        turns.append((action, obs))
    return first, turns, bool(info.get("won", False))


def env_corpus(make, seeds, random_frac: float = 0.3) -> list[str]:
    """Text the env produces (system prompt, observations, actions): what the tokenizer is trained on."""
    env, rng = make(), np.random.default_rng(0)
    texts = [env.system_prompt]
    for seed in seeds:
        first, turns, _ = play_noisy_expert(env, int(seed), random_frac, rng)
        texts.append(first)
        texts.extend(t for turn in turns for t in turn)
    return texts


def env_tokenizer(make, vocab_size: int, n_seeds: int = 200):
    """The default model's tokenizer for an env: a BPE of ``vocab_size`` tokens trained on ``env_corpus``
    of ``n_seeds`` task seeds that neither training nor evaluation draws, plus the env's
    ``tokenizer_words`` as whole tokens (model.build_tokenizer)."""
    seeds = range(EVAL_SEED_BASE + 10**6, EVAL_SEED_BASE + 10**6 + n_seeds)
    return build_tokenizer(env_corpus(make, seeds), vocab_size, words=make().tokenizer_words())


def demo_rows(tokenizer, system: str, first: str, turns, max_context: int, max_action_tokens: int,
              max_history_steps: int | None) -> list[tuple[list[int], list[bool]]]:
    """Rows (token ids, action mask) of one demonstration, windowed exactly as ``rollout`` windows an
    episode (rollout.window_rows): the policy is trained in the contexts it will act in."""
    steps = [(encode_action(tokenizer, action), format_observation(tokenizer, obs) if i + 1 < len(turns) else None)
             for i, (action, obs) in enumerate(turns)]  # the observation after the last action is never context
    rows, masks = window_rows(format_prompt(tokenizer, system, first), steps, max_context, max_action_tokens,
                              max_history_steps)
    return list(zip(rows, masks))


def pad_rows(rows, pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (token ids, action mask) -> right-padded input_ids, attention_mask, action_mask, each (R, L)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (R, L)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)  # (R, L)
    action_mask = torch.zeros(len(rows), width, dtype=torch.bool)  # (R, L)
    for r, (ids, mask) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
        action_mask[r, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    return input_ids.to(device), attention_mask.to(device), action_mask.to(device)


def expert_rows(tokenizer, make, cfg, episodes: int) -> list[tuple[list[int], list[bool]]]:
    """Rows of ``episodes`` episodes of the env's expert (no random actions) on the probe seeds
    (``PROBE_SEED_BASE + k``: tasks no demonstration, training batch or evaluation uses), windowed
    as rollouts are."""
    env, rng = make(), np.random.default_rng(0)
    rows = []
    for k in range(episodes):
        first, turns, _ = play_noisy_expert(env, PROBE_SEED_BASE + k, 0.0, rng)
        rows += demo_rows(tokenizer, env.system_prompt, first, turns, cfg.max_context, cfg.max_action_tokens,
                          cfg.history_steps or None)
    return rows


def _action_forward(policy, rows, pad_id: int, device, chunk: int, with_entropy: bool = False):
    """Per chunk of ``rows``: the log-probs (T,) of its action tokens, row-major; the policy's
    next-token entropy at the same tokens (T,) or None; and the lengths of its actions (every
    contiguous run of action tokens in a row is one action)."""
    for lo in range(0, len(rows), chunk):
        part = rows[lo:lo + chunk]
        ids, am, act = pad_rows(part, pad_id, device)  # (R, L) each
        out = token_logprobs(policy, ids, am, act, with_entropy=with_entropy)
        logp, entropy = out if with_entropy else (out, None)  # (T,), (T,) or None
        yield logp.float().cpu(), None if entropy is None else entropy.float().cpu(), [n for _, mask in part for n in _true_runs(mask)]


@torch.no_grad()
def action_probs(policy, rows, pad_id: int, device, chunk: int = 64) -> list[float]:
    """π(action | its context) = exp(Σ of its tokens' log-probs) of every action in ``rows``, row-major."""
    return [s.sum().exp().item() for logp, _, runs in _action_forward(policy, rows, pad_id, device, chunk) for s in logp.split(runs)]


@torch.no_grad()
def expert_probe(policy, rows, pad_id: int, device, chunk: int = 64) -> tuple[float, float]:
    """Two numbers from one forward over expert ``rows`` (fixed contexts, whatever states the policy
    itself would visit): the mean over the expert's actions of π(expert action | its context), how
    much of the policy's mass is on what the expert does (Sokoban: ~0.25 for a policy that ignores the
    board, the expert's own move being one of four); and the policy's mean next-token entropy at the
    expert's action tokens, which moves only if the policy itself flattens or sharpens (a training
    run's ``policy/entropy`` also moves when the policy visits other states)."""
    probs, entropy = [], []
    for logp, ent, runs in _action_forward(policy, rows, pad_id, device, chunk, with_entropy=True):
        probs += [s.sum().exp().item() for s in logp.split(runs)]
        entropy.append(ent)
    if not probs:
        return float("nan"), float("nan")
    return float(np.mean(probs)), float(torch.cat(entropy).mean())


def expert_prob(policy, rows, pad_id: int, device, chunk: int = 64) -> float:
    """The first number of ``expert_probe``: the policy's mean probability of the expert's action."""
    return expert_probe(policy, rows, pad_id, device, chunk)[0]


def _true_runs(mask: list[bool]) -> list[int]:
    """Lengths of the runs of True in ``mask``."""
    runs, n = [], 0
    for m in list(mask) + [False]:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def warmstart_lr(step: int, total: int, peak: float, schedule: str) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``: ``constant`` = ``peak`` throughout;
    ``cosine`` = linear warm-up over the first 5% of the steps (at least one), then a cosine decay from
    ``peak`` to ``peak / 10`` at the last step (nanoGPT's schedule). At a constant 1e-3 the Sokoban warm
    start's loss spiked late in training (0.4 -> 2.3 at step 250 of 282); the decay settles the end."""
    if schedule == "constant":
        return peak
    if schedule != "cosine":
        raise ValueError(f"--warmstart-schedule: expected cosine or constant, got {schedule!r}")
    warmup = max(1, math.ceil(0.05 * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - 1 - warmup)  # 0 after the warm-up .. 1 at the last step
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def sft_step(policy, opt, input_ids, attention_mask, action_mask, lr: float) -> float:
    """One behaviour-cloning step: the mean NLL of the action tokens (cross-entropy on the demonstrated
    actions only), gradients clipped to norm 1, ``opt`` at ``lr``; returns the loss."""
    loss = -token_logprobs(policy, input_ids, attention_mask, action_mask).mean()  # over the (T,) action tokens
    if not torch.isfinite(loss):
        raise FloatingPointError(f"warm start: loss is {loss.item()}; lower --warmstart-lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return loss.item()


def warm_start(policy, tokenizer, make, cfg, device, progress: bool = False, on_step=None) -> dict:
    """SFT on `warmstart_episodes` noisy-expert episodes; returns the demos' success rate and the loss.
    `progress` shows a tqdm bar over the optimiser steps; ``on_step(step, loss)``, if given, is called
    after every optimiser step (bench.warmstart_probe evaluates the policy there)."""
    env, rng = make(), np.random.default_rng(cfg.start_seed)
    demos, wins = [], []  # demos[k]: the rows of episode k
    for k in range(cfg.warmstart_episodes):
        first, turns, won = play_noisy_expert(env, DEMO_SEED_BASE + k, cfg.warmstart_random_frac, rng)
        demos.append(demo_rows(tokenizer, env.system_prompt, first, turns, cfg.max_context, cfg.max_action_tokens,
                               cfg.history_steps or None))
        wins.append(won)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.warmstart_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.start_seed)
    policy.train()
    losses = []
    batch_size = 16  # episodes per optimiser step (all their rows): the loss is a mean over their action tokens
    total = cfg.warmstart_epochs * -(-len(demos) // batch_size)  # optimiser steps (the schedule's length)
    bar = tqdm(total=total, desc="warm start", dynamic_ncols=True, disable=not progress, leave=False)
    for _ in range(cfg.warmstart_epochs):
        order = torch.randperm(len(demos), generator=gen).tolist()
        for lo in range(0, len(order), batch_size):
            chunk = [row for i in order[lo : lo + batch_size] for row in demos[i]]
            input_ids, attention_mask, action_mask = pad_rows(chunk, tokenizer.pad_token_id, device)  # (R, L) each
            if not action_mask.any():  # no action fits in max_context
                continue
            lr = warmstart_lr(len(losses), total, cfg.warmstart_lr, cfg.warmstart_schedule)
            losses.append(sft_step(policy, opt, input_ids, attention_mask, action_mask, lr))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if on_step is not None:
                on_step(len(losses), losses[-1])
                policy.train()
    bar.close()
    return {"demo_success": float(np.mean(wins)), "episodes": len(demos), "final_loss": float(np.mean(losses[-10:]))}


# -- cache: runs with the same warm-start settings (e.g. the variants of one seed in a sweep) share one --
WARMSTART_KEYS = ("env", "max_steps", "carvings", "shuffle_ids", "numbered_results", "system_prompt", "model", "model_size", "vocab_size", "max_context", "max_action_tokens",
                  "history_steps", "seed", "warmstart_episodes",
                  "warmstart_random_frac", "warmstart_epochs", "warmstart_lr", "warmstart_schedule")


def _vocab_hash(tokenizer) -> str:
    return hashlib.sha1(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def warmstart_settings(cfg) -> dict:
    """The settings that shape the warm start (``WARMSTART_KEYS``), ``seed`` being the starting policy's
    seed (``cfg.start_seed``: ``--init-seed``, or ``--seed`` without it)."""
    return {k: cfg.start_seed if k == "seed" else getattr(cfg, k) for k in WARMSTART_KEYS}


def cache_dir(cfg, tokenizer) -> Path:
    """``<out_dir>/.warmstart/<hash of every setting that shapes the warm start and of the vocabulary>``
    (the vocabulary changes with the env's text, e.g. an edited system prompt). A setting added later
    (config.LEGACY_DEFAULTS) enters the hash only when it differs from the value of the runs before it,
    so their caches stay valid."""
    settings = {k: v for k, v in warmstart_settings(cfg).items() if k not in LEGACY_DEFAULTS or v != LEGACY_DEFAULTS[k]}
    spec = json.dumps({**settings, "vocab": _vocab_hash(tokenizer)}, sort_keys=True)
    return Path(cfg.out_dir) / ".warmstart" / hashlib.sha1(spec.encode()).hexdigest()[:16]


def _take_lock(lock: Path) -> bool:
    """Create ``lock`` holding our pid; False while another live process holds it (a dead holder's lock is taken over)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)  # the holder is alive: wait for it
            return False
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)  # its holder died without finishing
            return _take_lock(lock)
        except (FileNotFoundError, PermissionError):
            return False  # released meanwhile, or held by another user's live process
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def cached_warm_start(policy, tokenizer, make, cfg, device, progress: bool = False, poll_s: float = 2.0) -> dict:
    """``warm_start``, computed once per settings (``cache_dir``) and loaded by every later or concurrent run
    with the same settings, so those runs start RL from the identical policy. The weights are written
    atomically."""
    path = cache_dir(cfg, tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    weights, info_file, lock = path / "policy.pt", path / "info.json", path / "lock"
    while True:
        if weights.is_file() and info_file.is_file():
            info = json.loads(info_file.read_text())
            policy.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
            return {**info["stats"], "cached": str(path)}
        if _take_lock(lock):
            break
        time.sleep(poll_s)
    try:
        stats = warm_start(policy, tokenizer, make, cfg, device, progress)
        tmp = weights.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in policy.state_dict().items()}, tmp)
        os.replace(tmp, weights)
        tmp = info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stats": stats, "vocab": _vocab_hash(tokenizer),
                                   "settings": warmstart_settings(cfg)}))
        os.replace(tmp, info_file)
    finally:
        lock.unlink(missing_ok=True)
    return stats
