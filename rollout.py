"""Batched multi-turn rollouts of N tasks × G rollouts with a KV cache.

Step 1 of the iStar loop (paper Algorithm 1; paper.md "The loop"): roll out N tasks × G rollouts
with π_θold. The G rollouts of one task seed form a group (paper.md E3/E5/E6 normalise and pair
inside groups); groups are contiguous in the output, in ``task_seeds`` order.

This file holds ``Trajectory``, ``rollout`` and the episode bookkeeping (sampling, action ends,
env steps, history windows). The batched KV cache with holes (``_KV``, ``_forward``, ``_select``,
``_merge``, ``_compact``, ``_left_pad``) lives in kvcache.py, which also explains why the holes
are correct; packing trajectories into tensors (``Batch``, ``pack``) lives in batch.py and is
re-exported here, so ``from rollout import Batch, Trajectory, pack, rollout`` works.

How one rollout batch runs (all live episodes decode together):
  1. Prefill: every episode's context [system + first observation + assistant prefix] is
     left-padded into one batch; position ids come from the attention mask.
  2. Decode: one token per live row per forward, reusing the KV cache (kvcache.py). A row whose
     action has ended (the ``</action>`` tag, an EOS token, or ``max_action_tokens``) feeds a
     *hole* (a pad token with attention mask 0) until every row has ended its action.
  3. Env step: each action is decoded to text and handed to its env. Finished episodes leave
     the batch (their cache rows are dropped). The other rows *append* [end of assistant turn +
     next observation + assistant prefix] to the existing cache in one left-padded chunk.
  The cache therefore has holes in the middle of rows, and is compacted when they waste 25% of
  its width (kvcache.py). Log-probs recorded this way equal a fresh ``model.token_logprobs``
  pass over the packed rows (tested).

Recorded log-probs: ``Trajectory.logp`` holds log π_θold(y) of each generated token at
temperature 1 under the untruncated distribution, i.e. the policy itself, whatever
``temperature``/``top_p`` sampled it. That is what the PPO ratio (paper.md E8) and the
implicit reward's reference (paper.md E1) need; it is not the log-prob of the sampling
distribution.

Context bound (history window, as verl-agent's ``history_length``): a row holds
[prompt][action 1][obs 2][action 2]... While appending the next observation would let the
row exceed ``max_context`` (with room for ``max_action_tokens``) or hold more than
``max_history_steps`` past steps, the row is closed and a new row starts with
[prompt (system + first observation)][the most recent steps that fit][current observation],
prefilled afresh and merged into the batch cache. Old actions copied into a new row are
context there (action mask False): every action token belongs to exactly one row, and a
trajectory's rows are consecutive. ``max_context`` is honoured whenever the prompt, one
observation and ``max_action_tokens`` fit in it; otherwise the row is built anyway (warned).

Shape vocabulary: N tasks, G group size, B live rows in a decode batch, V vocab, A ``max_action_tokens``.

References:
  1) iStar, https://arxiv.org/abs/2509.19199 (Algorithm 1; paper.md "The loop", E1, E8)
  2) verl-agent multi-turn rollout with a history window, https://github.com/langfengQ/verl-agent
  3) Hugging Face ``generate`` left padding + position ids from the attention mask.
Deviations from the paper:
  1) Whole-trajectory rows (one forward per row, paper.md open point 5) instead of one sample
     per step. The released code (verl-agent) re-renders one prompt per step from the task, the
     current observation and the last 2 (observation, action) pairs; ``max_history_steps=2`` is
     the closest setting here, and our rows also keep the first observation in the prompt.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from batch import Batch, pack  # noqa: F401  re-exported: callers import them from rollout
from envs.base import Env
from kvcache import _compact, _forward, _left_pad, _merge, _select
from model import format_observation, format_prompt, stop_token_ids

_ACTION_END_RE = re.compile(r"<\s*/\s*action\s*>", re.IGNORECASE)  # same tolerance as envs.base.parse_action


@dataclass
class Trajectory:
    """One episode. ``rows[i]`` and ``action_masks[i]`` have the same length; the True entries of
    all rows, in order, are the generated action tokens, whose log-probs are ``logp``."""

    task_seed: int
    group_id: int
    rows: list[list[int]] = field(default_factory=list)
    action_masks: list[list[bool]] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)  # log π_θold at temperature 1, per action token
    step_lengths: list[int] = field(default_factory=list)  # action tokens of each step
    step_rewards: list[float] = field(default_factory=list)  # env reward of each step
    step_valid: list[bool] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # decoded action text of each step
    observations: list[str] = field(default_factory=list)  # obs 0 (reset) .. obs S (final)
    won: bool = False
    score: float = 0.0

    @property
    def outcome(self) -> float:
        """The outcome reward R: the episode return, the sum of env rewards."""
        return float(sum(self.step_rewards))

    @property
    def num_steps(self) -> int:
        return len(self.step_rewards)


# -- sampling -----------------------------------------------------------------------------------
def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample from logits (B, V); return the tokens (B,) and their temperature-1 log-probs (B,)."""
    logp = F.log_softmax(logits, dim=-1)  # (B, V) the policy itself, recorded as old_logp
    if temperature == 0:
        tok = logits.argmax(-1)  # (B,) greedy
    else:
        scaled = logits / temperature  # (B, V)
        if top_p < 1.0:  # nucleus: drop tokens once the mass before them already reaches top_p
            sorted_logits, order = scaled.sort(-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop = (probs.cumsum(-1) - probs) >= top_p  # (B, V), never drops the top token
            scaled = scaled.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        tok = torch.multinomial(scaled.softmax(-1), 1, generator=generator).squeeze(-1)  # (B,)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def _sample_per_task(logits, temperature, top_p, generators, row_task: list[int], active: torch.Tensor):
    """``_sample`` where each task's live rows draw from that task's own generator (in batch order), so a
    task's trajectories do not depend on which other tasks share the batch: N tasks on one process and
    the same tasks split across data-parallel ranks sample the same trajectories (distributed.py).
    Rows whose action has ended draw nothing (their token is discarded anyway)."""
    tok = logits.argmax(-1)  # (B,) placeholder for ended rows, and the greedy choice
    if temperature > 0:
        live = active.nonzero().flatten().tolist()
        for task in dict.fromkeys(row_task[b] for b in live):  # tasks in order of first row
            idx = torch.tensor([b for b in live if row_task[b] == task], device=logits.device)
            tok[idx] = _sample(logits[idx], temperature, top_p, generators[task])[0]
    return tok, F.log_softmax(logits, dim=-1).gather(-1, tok[:, None]).squeeze(-1)  # (B,), (B,)


class _Episode:
    def __init__(self, env: Env, traj: Trajectory, prompt: list[int]):
        self.env, self.traj, self.prompt = env, traj, prompt
        self.history: list[tuple[list[int], list[int]]] = []  # per step: (action ids, following context ids)
        self.row, self.row_mask, self.row_steps = list(prompt), [False] * len(prompt), 0
        self.pending = list(prompt)  # row tokens not yet in the KV cache

    def close_row(self) -> None:
        self.traj.rows.append(self.row)
        self.traj.action_masks.append(self.row_mask)

    def start_window_row(self, budget: int, max_history_steps: int | None) -> None:
        """New row: prompt + the most recent steps that fit in ``budget`` tokens + current observation."""
        self.close_row()
        j = len(self.history) if max_history_steps is None else min(max_history_steps, len(self.history))
        size = lambda j: sum(len(a) + len(c) for a, c in self.history[len(self.history) - j:])  # noqa: E731
        while j > 0 and len(self.prompt) + size(j) > budget:
            j -= 1
        recent = [t for a, c in self.history[len(self.history) - j:] for t in a + c] if j else self.history[-1][1]
        self.row = self.prompt + recent
        if len(self.row) > budget:
            warnings.warn(f"rollout: prompt + current observation ({len(self.row)} tokens) leave no room for "
                          f"an action within max_context; the row is kept whole")
        self.row_mask, self.row_steps, self.pending = [False] * len(self.row), j, list(self.row)


def rollout(model, tokenizer, make_env: Callable[[], Env], task_seeds: list[int], group_size: int, *,
            temperature: float = 1.0, top_p: float = 1.0, max_action_tokens: int = 64, max_context: int | None = None,
            max_history_steps: int | None = None, seed: int = 0, generator: torch.Generator | None = None,
            device=None) -> list[Trajectory]:
    """Roll out ``len(task_seeds)`` tasks × ``group_size`` episodes; see the module docstring.

    ``max_context`` defaults to the model's ``max_position_embeddings``; ``max_history_steps=None``
    keeps every past step that fits. Greedy when ``temperature == 0``. Sampling uses ``generator``
    (default: a fresh one seeded with ``seed`` on ``device``), so a call is reproducible on CPU; a list
    of generators, one per task seed, gives every task its own stream (``_sample_per_task``).
    Log-probs are recorded at temperature 1 (see the module docstring). Returns the trajectories
    grouped: ``out[i * group_size + g]`` is rollout g of ``task_seeds[i]``, with ``group_id == i``.
    """
    if group_size < 1 or max_action_tokens < 1:
        raise ValueError(f"rollout: group_size={group_size} and max_action_tokens={max_action_tokens} must be >= 1")
    if max_context is not None and max_action_tokens >= max_context:
        raise ValueError(f"rollout: max_action_tokens={max_action_tokens} leaves no room for context in "
                         f"max_context={max_context}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"rollout: expected temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    limit = getattr(model.config, "max_position_embeddings", None)
    max_context = max_context or limit or 2048  # default: the model's own context length
    if limit is not None and max_context > limit:
        raise ValueError(f"rollout(max_context={max_context}) exceeds the model's max_position_embeddings={limit}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
    if isinstance(generator, (list, tuple)) and len(generator) != len(task_seeds):
        raise ValueError(f"rollout: got {len(generator)} generators for {len(task_seeds)} task seeds; expected one per task")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = stop_token_ids(tokenizer, model)
    budget = max_context - max_action_tokens  # context a row may hold before an action

    episodes = []
    for gid, task_seed in enumerate(task_seeds):
        for _ in range(group_size):
            env = make_env()
            obs = env.reset(int(task_seed))
            ep = _Episode(env, Trajectory(int(task_seed), gid, observations=[obs]),
                          format_prompt(tokenizer, env.system_prompt, obs))
            if len(ep.prompt) > budget:
                warnings.warn(f"rollout: prompt of {len(ep.prompt)} tokens + max_action_tokens exceeds "
                              f"max_context={max_context}; the row is kept whole")
            episodes.append(ep)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _run(model, tokenizer, episodes, stop_ids, pad_id, budget, max_history_steps, max_action_tokens,
                 temperature, top_p, generator, device)
    finally:
        model.train(was_training)
    return [e.traj for e in episodes]


def _run(model, tokenizer, episodes, stop_ids, pad_id, budget, max_history_steps, max_action_tokens,
         temperature, top_p, generator, device) -> None:
    kv, cached, fresh = None, [], list(episodes)  # cached: episodes whose rows are in kv, in row order
    stop_t = torch.tensor(stop_ids, device=device)
    closes = None  # (V,) built on the first logits, whose width is the model's vocabulary
    while cached or fresh:
        # 1. Bring every live row's context into the cache: append to cached rows, prefill new ones.
        logits = []
        if cached:
            kv, lg = _forward(model, kv, *_left_pad([e.pending for e in cached], pad_id, device))
            logits.append(lg)
        if fresh:
            kv_new, lg = _forward(model, None, *_left_pad([e.pending for e in fresh], pad_id, device))
            kv = _merge(kv, kv_new)
            logits.append(lg)
        rows = cached + fresh
        for e in rows:
            e.pending = []
        # 2. Decode one action per row.
        logits = torch.cat(logits)  # (B, V)
        if closes is None:
            closes = _closing_tokens(tokenizer, logits.shape[1], device)
        kv, toks, lps, lengths, unfed = _decode_action(model, kv, logits, tokenizer, stop_t, closes, pad_id,
                                                       max_action_tokens, temperature, top_p, generator,
                                                       [e.traj.group_id for e in rows])
        # 3. Step the envs; finished episodes leave, others append or start a windowed row.
        keep, fresh = [], []
        for b, e in enumerate(rows):
            a_ids, a_lp = toks[b][:lengths[b]], lps[b][:lengths[b]]
            text = tokenizer.decode(a_ids, skip_special_tokens=True)
            obs, reward, done, info = e.env.step(text)
            t = e.traj
            t.logp += a_lp
            t.step_lengths.append(len(a_ids))
            t.step_rewards.append(reward)
            t.step_valid.append(bool(info.get("valid_action", False)))
            t.actions.append(text)
            t.observations.append(obs)
            t.won, t.score = bool(info.get("won", False)), float(info.get("score", 0.0))
            e.row += a_ids
            e.row_mask += [True] * len(a_ids)
            if done:
                e.close_row()
                continue
            ctx = format_observation(tokenizer, obs)
            if a_ids and a_ids[-1] in stop_ids and ctx and ctx[0] == a_ids[-1]:
                ctx = ctx[1:]  # the model already closed its turn with this token
            e.history.append((a_ids, ctx))
            too_long = len(e.row) + len(ctx) > budget
            if too_long or (max_history_steps is not None and e.row_steps + 1 > max_history_steps):
                e.start_window_row(budget, max_history_steps)
                fresh.append(e)
            else:
                e.row += ctx
                e.row_mask += [False] * len(ctx)
                e.row_steps += 1
                e.pending = a_ids[len(a_ids) - unfed[b]:] + ctx
                keep.append(b)
        kv = _compact(_select(kv, keep))
        cached = [rows[b] for b in keep]


def _closing_tokens(tokenizer, vocab: int, device) -> torch.Tensor:
    """(V,) True for tokens whose text contains '>': only those can complete an ``</action>`` tag,
    so only rows that just sampled one are decoded to text and searched for the tag."""
    names = tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(tokenizer)))))
    flags = [">" in (s or "") for s in names] + [False] * max(0, vocab - len(tokenizer))  # ids past the tokenizer
    return torch.tensor(flags, device=device)


def _closes_action(tokenizer, tail: list[int]) -> bool:
    """Whether the last tokens of an action (the newest one containing '>') complete an ``</action>`` tag,
    written as one token or as several (a tokenizer without the tag token, or the model spelling it out)."""
    return _ACTION_END_RE.search(tokenizer.decode(tail)) is not None


def _decode_action(model, kv, logits, tokenizer, stop_t, closes, pad_id, max_tokens, temperature, top_p, generator,
                   row_task: list[int]):
    """Decode until every row ended its action; returns per row its tokens, log-probs, length and the
    number of its last tokens not yet fed to the cache (0 or 1)."""
    B = logits.shape[0]
    tok_buf = torch.zeros(B, max_tokens, dtype=torch.long, device=logits.device)  # (B, A)
    lp_buf = torch.zeros(B, max_tokens, device=logits.device)  # (B, A)
    active = torch.ones(B, dtype=torch.bool, device=logits.device)
    lengths = torch.full((B,), max_tokens, dtype=torch.long, device=logits.device)
    for t in range(max_tokens):
        if isinstance(generator, (list, tuple)):
            tok, lp = _sample_per_task(logits, temperature, top_p, generator, row_task, active)  # (B,), (B,)
        else:
            tok, lp = _sample(logits, temperature, top_p, generator)  # (B,), (B,)
        tok_buf[:, t], lp_buf[:, t] = tok, lp
        stop = torch.isin(tok, stop_t)  # (B,)
        for b in (active & closes[tok] & ~stop).nonzero().flatten().tolist():
            stop[b] = _closes_action(tokenizer, tok_buf[b, max(0, t - 15):t + 1].tolist())
        was_active = active
        lengths = torch.where(active & stop, t + 1, lengths)
        active = active & ~stop
        if t == max_tokens - 1 or not bool(active.any()):
            break
        # Rows that just sampled feed their token; rows already done feed a hole.
        kv, logits = _forward(model, kv, torch.where(was_active, tok, pad_id)[:, None], was_active.long()[:, None])
    lengths_l = lengths.tolist()
    toks = [r[:n] for r, n in zip(tok_buf.tolist(), lengths_l)]
    lps = [r[:n] for r, n in zip(lp_buf.tolist(), lengths_l)]
    return kv, toks, lps, lengths_l, was_active.long().tolist()
