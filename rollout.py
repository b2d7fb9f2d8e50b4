"""Batched multi-turn rollouts of N tasks × G rollouts with a KV cache.

Step 1 of the iStar loop (paper Algorithm 1; paper.md "The loop"): roll out N tasks × G rollouts
with π_θold. The G rollouts of one task seed form a group (paper.md E3/E5/E6 normalise and pair
inside groups); groups are contiguous in the output, in ``task_seeds`` order.

This file holds ``Trajectory``, ``rollout`` and the episode bookkeeping (action ends, env steps,
history windows). The decode cache is either engine.py's ``Engine`` (static buffers, a functional
Llama-family forward, CUDA graphs) or kvcache.py's ``HFCache`` (the model's own forward, any HF
causal LM); both offer ``begin``/``add``/``feed``/``step``/``hide``/``keep``/``end`` and kvcache.py explains
why holes are correct. A cache may also offer ``decoder`` (the engine does: sampling inside its CUDA
graph); otherwise ``_EagerDecoder`` decodes an action through ``step``. Tokens come from sampler.py.
Packing trajectories into tensors (``Batch``, ``pack``) lives in batch.py and is re-exported here,
so ``from rollout import Batch, Trajectory, pack, rollout`` works.

How one rollout batch runs (all live episodes decode together):
  1. Prefill: every episode's context [system + first observation + assistant prefix] is
     left-padded into one chunk; position ids count real tokens only.
  2. Decode: one token per row per forward, every sampled token fed to the cache at once (engine.py
     does sample + record + feed in one CUDA graph replay; ``_EagerDecoder`` is the same for any cache). A row
     whose action has ended on a stop token (EOS, the end-of-turn token, or a single token holding
     ``</action>``) feeds *holes* (mask 0) from then on, decided on the device. The host looks at
     the tokens after 1, 2, 4, 8, then every ``sync_every`` tokens: it finds tags spelled over
     several tokens (their later tokens become holes, ``cache.hide``) and stops once every row has
     ended or ``max_action_tokens`` is reached. Tokens decoded past an action's end are discarded.
  3. Env step: each action is decoded to text and handed to its env. Finished episodes leave
     the batch (their cache rows are dropped). The other rows *append* [end of assistant turn +
     next observation + assistant prefix] to the existing cache in one left-padded chunk.
  The cache therefore has holes in the middle of rows; ``keep`` compacts them away (engine.py:
  every env step; kvcache.py: when they waste 25% of its width). Log-probs recorded this way
  equal a fresh ``model.token_logprobs`` pass over the packed rows (tested, both caches).

Sampling (sampler.py): each episode gets a key from ``generator`` (or its task's generator) and a
token is a pure function of (key, env step, token index), so an episode's trajectory does not
depend on its batch mates, on when the host checks for stops, or on the rank it runs on.

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

from batch import Batch, pack  # noqa: F401  re-exported: callers import them from rollout
from engine import Engine
from envs.base import Env
from kvcache import HFCache
from model import decode_actions, format_observation, format_observations, format_prompts, stop_token_ids
from sampler import row_keys, sample

_ACTION_END_RE = re.compile(r"<\s*/\s*action\s*>", re.IGNORECASE)  # same tolerance as envs.base.parse_action
# what may stand before the first '>' of a token that completes a tag begun in earlier tokens: a suffix of "</action"
_TAG_TAIL_RE = re.compile(r"(?:<?\s*/)?\s*action\s*|(?:ction|tion|ion|on|n)?\s*", re.IGNORECASE)


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
    step_optimal: list[int] = field(default_factory=list)  # env's ground-truth label: 1 good, 0 not, -1 unknown
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

    def after_action(self, a_ids: list[int], ctx: list[int], budget: int, max_history_steps: int | None) -> bool:
        """The action ``a_ids`` is in the row and the episode goes on with context ``ctx`` (the next
        observation's turn): append ``ctx``, or start a windowed row (the module docstring's rule).
        True when a new row started (its whole context is pending), False when ``ctx`` was appended."""
        self.history.append((a_ids, ctx))
        too_long = len(self.row) + len(ctx) > budget
        if too_long or (max_history_steps is not None and self.row_steps + 1 > max_history_steps):
            self.start_window_row(budget, max_history_steps)
            return True
        self.row += ctx
        self.row_mask += [False] * len(ctx)
        self.row_steps += 1
        self.pending = ctx  # the action is already in the cache
        return False


def next_context(tokenizer, obs: str, a_ids: list[int], stop_ids: list[int], ctx: list[int] | None = None) -> list[int]:
    """Context ids after the action ``a_ids``: the next observation's turn (``ctx``, or formatted here),
    without its first token when the action already ended with that token (the model closed its turn itself)."""
    ctx = format_observation(tokenizer, obs) if ctx is None else ctx
    if a_ids and a_ids[-1] in stop_ids and ctx and ctx[0] == a_ids[-1]:
        ctx = ctx[1:]
    return ctx


def window_rows(prompt: list[int], steps: list[tuple[list[int], list[int] | None]], max_context: int,
                max_action_tokens: int, max_history_steps: int | None) -> tuple[list[list[int]], list[list[bool]]]:
    """The rows and action masks ``rollout`` builds for an episode whose steps are ``steps``: (action
    ids, ids of the context that follows, None after the last action). The warm start uses it to train
    on demonstrations in exactly the layout the policy later acts in."""
    e = _Episode(None, Trajectory(0, 0), list(prompt))
    for a_ids, ctx in steps:
        e.row += a_ids
        e.row_mask += [True] * len(a_ids)
        if ctx is None:
            break
        e.after_action(a_ids, ctx, max_context - max_action_tokens, max_history_steps)
    e.close_row()
    return e.traj.rows, e.traj.action_masks


def rollout(model, tokenizer, make_env: Callable[[], Env], task_seeds: list[int], group_size: int, *,
            temperature: float = 1.0, top_p: float = 1.0, max_action_tokens: int = 64, max_context: int | None = None,
            max_history_steps: int | None = None, seed: int = 0, generator: torch.Generator | None = None,
            device=None, engine: str = "auto", cuda_graphs: bool = True, sync_every: int = 8) -> list[Trajectory]:
    """Roll out ``len(task_seeds)`` tasks × ``group_size`` episodes; see the module docstring.

    ``max_context`` defaults to the model's ``max_position_embeddings``; ``max_history_steps=None``
    keeps every past step that fits. Greedy when ``temperature == 0``. Each episode's sampling key is
    drawn from ``generator`` (default: a fresh one seeded with ``seed`` on ``device``), or from a list
    of generators, one per task seed (sampler.py): a call is reproducible, and an episode's tokens do
    not depend on its batch mates. Log-probs are recorded at temperature 1 (module docstring).
    ``engine``: "static" (engine.py: static cache, functional forward, CUDA graphs when ``cuda_graphs``
    and on CUDA), "hf" (kvcache.py: the model's own forward, any full-attention HF causal LM) or "auto"
    (static when the model passes its support check). Stops are looked for on the host every
    ``sync_every`` tokens at most (fewer host syncs; tokens past an action's end are discarded).
    Returns the trajectories grouped: ``out[i * group_size + g]`` is rollout g of ``task_seeds[i]``,
    with ``group_id == i``.
    """
    if group_size < 1 or max_action_tokens < 1 or sync_every < 1:
        raise ValueError(f"rollout: group_size={group_size}, max_action_tokens={max_action_tokens} and "
                         f"sync_every={sync_every} must be >= 1")
    if max_context is not None and max_action_tokens >= max_context:
        raise ValueError(f"rollout: max_action_tokens={max_action_tokens} leaves no room for context in "
                         f"max_context={max_context}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"rollout: expected temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if engine not in ("auto", "static", "hf"):
        raise ValueError(f"rollout(engine={engine!r}): expected 'auto', 'static' or 'hf'")
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

    starts = []  # (env, task seed, group id, first observation)
    for gid, task_seed in enumerate(task_seeds):
        for _ in range(group_size):
            env = make_env()
            starts.append((env, int(task_seed), gid, env.reset(int(task_seed))))
    prompts = format_prompts(tokenizer, [x[0].system_prompt for x in starts], [x[3] for x in starts])
    episodes = []
    for (env, task_seed, gid, obs), prompt in zip(starts, prompts):
        ep = _Episode(env, Trajectory(task_seed, gid, observations=[obs]), prompt)
        if len(ep.prompt) > budget:
            warnings.warn(f"rollout: prompt of {len(ep.prompt)} tokens + max_action_tokens exceeds "
                          f"max_context={max_context}; the row is kept whole")
        ep.idx = len(episodes)
        episodes.append(ep)
    keys = row_keys(generator, len(episodes), device)  # (E, 2) one sampling key per episode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cache = make_cache(model, engine, cuda_graphs, pad_id)
            try:
                _run(cache, tokenizer, episodes, keys, stop_ids, budget, max_history_steps, max_action_tokens,
                     temperature, top_p, device, sync_every)
            finally:
                cache.end()
    finally:
        model.train(was_training)
    return [e.traj for e in episodes]


def make_cache(model, engine: str = "auto", cuda_graphs: bool = True, pad_id: int = 0):
    """The decode cache ``rollout`` drives: engine.py's ``Engine`` or kvcache.py's ``HFCache``."""
    if engine != "hf":
        eng = Engine.build(model, graphs=cuda_graphs)
        if eng is not None:
            return eng
        if engine == "static":
            raise ValueError(f"rollout(engine='static'): {type(model).__name__} failed the static engine's support "
                             f"check (not a plain full-attention Llama-family decoder); use engine='hf' or 'auto'")
    return HFCache(model, pad_id)


def _run(cache, tokenizer, episodes, keys, stop_ids, budget, max_history_steps, max_action_tokens,
         temperature, top_p, device, sync_every) -> None:
    cache.begin(len(episodes))
    cached, fresh = [], list(episodes)  # cached: episodes whose rows are in the cache, in row order
    tables = None  # (stop, closes), built on the first logits, whose width is the model's vocabulary
    while cached or fresh:
        # 1. Bring every live row's context into the cache: cached rows append, new rows start.
        cache.add(len(fresh))
        rows = cached + fresh
        logits = cache.feed([e.pending for e in rows])  # (B, V)
        for e in rows:
            e.pending = []
        if tables is None:
            tables = _vocab_tables(tokenizer, logits.shape[1], stop_ids, device)
        # 2. Decode one action per row.
        keys_b = keys[torch.tensor([e.idx for e in rows], device=device)]  # (B, 2)
        steps = torch.tensor([e.traj.num_steps for e in rows], device=device)  # (B,) env step of each row
        toks, lps = _decode_action(cache, logits, keys_b, steps, tokenizer, *tables, max_action_tokens,
                                   temperature, top_p, sync_every)
        # 3. Step the envs; finished episodes leave, others append or start a windowed row.
        keep, fresh, going = [], [], []  # going: (row, observation) of episodes that go on
        texts = decode_actions(tokenizer, toks)
        for b, e in enumerate(rows):
            a_ids, text = toks[b], texts[b]
            obs, reward, done, info = e.env.step(text)
            t = e.traj
            t.logp += lps[b]
            t.step_lengths.append(len(a_ids))
            t.step_rewards.append(reward)
            t.step_valid.append(bool(info.get("valid_action", False)))
            t.step_optimal.append(-1 if info.get("optimal") is None else int(bool(info["optimal"])))
            t.actions.append(text)
            t.observations.append(obs)
            t.won, t.score = bool(info.get("won", False)), float(info.get("score", 0.0))
            e.row += a_ids
            e.row_mask += [True] * len(a_ids)
            if done:
                e.close_row()
            else:
                going.append((b, obs))
        contexts = format_observations(tokenizer, [obs for _, obs in going])  # one tokenizer call per env step
        for (b, obs), ctx in zip(going, contexts):
            e = rows[b]
            if e.after_action(toks[b], next_context(tokenizer, obs, toks[b], stop_ids, ctx), budget, max_history_steps):
                fresh.append(e)
            else:
                keep.append(b)
        cache.keep(keep)
        cached = [rows[b] for b in keep]


def _vocab_tables(tokenizer, vocab: int, stop_ids: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (V,) masks. ``stop``: tokens that end an action by themselves (stop ids, and single tokens
    whose text holds a whole ``</action>`` tag), detected on the device without a host sync.
    ``closes``: other tokens that can complete a tag spelled over several tokens (a '>' preceded only by
    a suffix of "</action", e.g. ">", "on>"; not "<action>"), so only rows that sampled one are decoded
    to text and searched on the host (a trained policy opens every action with "<action>")."""
    names = tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(tokenizer)))))
    closes = [">" in (s or "") for s in names] + [False] * max(0, vocab - len(names))  # ids past the tokenizer
    stop = [False] * vocab
    for i in stop_ids:
        if 0 <= i < vocab:
            stop[i] = True
    for i, c in enumerate(closes):
        if c:  # only ids whose token holds a '>' are decoded: a few, even for a 150k vocabulary
            text = tokenizer.decode([i])
            stop[i] = stop[i] or bool(_ACTION_END_RE.search(text))
            closes[i] = not stop[i] and ">" in text and bool(_TAG_TAIL_RE.fullmatch(text.split(">", 1)[0]))
    return torch.tensor(stop, device=device), torch.tensor(closes, device=device)


def _closes_action(tokenizer, tail: list[int]) -> bool:
    """Whether the last tokens of an action (the newest one containing '>') complete an ``</action>`` tag,
    written as one token or as several (a tokenizer without the tag token, or the model spelling it out)."""
    return _ACTION_END_RE.search(tokenizer.decode(tail)) is not None


class _EagerDecoder:
    """Decode one action per row with any cache's ``step``: token t of every row is sampled from the
    current logits, recorded in ``tok``/``lp`` (B, A) with ``fed`` (B, A) = whether it went in as a real
    token, and fed; ``live`` (B,) turns False after a stop token. engine.py's ``Engine.decoder`` does
    the same in one CUDA graph replay per token and must give the same buffers (tested)."""

    def __init__(self, cache, logits, keys, steps, stop, max_tokens, temperature, top_p):
        B, dev = logits.shape[0], logits.device
        self.cache, self.logits, self.keys, self.steps, self.stop = cache, logits, keys, steps, stop
        self.sampling, self.t = (temperature, top_p), 0
        self.tok = torch.zeros(B, max_tokens, dtype=torch.long, device=dev)  # (B, A)
        self.lp = torch.zeros(B, max_tokens, device=dev)  # (B, A)
        self.fed = torch.zeros(B, max_tokens, dtype=torch.bool, device=dev)  # (B, A)
        self.live = torch.ones(B, dtype=torch.bool, device=dev)  # (B,) still writing its action

    def step(self) -> None:
        t = self.t
        tok, lp = sample(self.logits, self.keys, self.steps, t, *self.sampling)  # (B,), (B,)
        self.tok[:, t], self.lp[:, t], self.fed[:, t] = tok, lp, self.live
        self.logits = self.cache.step(tok, self.live)
        self.live &= ~self.stop[tok]
        self.t = t + 1


def _decode_action(cache, logits, keys, steps, tokenizer, stop, closes, max_tokens, temperature, top_p, sync_every):
    """Decode one action per row until every row has ended it (a stop token, a spelled-out
    ``</action>``, or ``max_tokens``); returns per row its tokens and their log-probs.

    Every sampled token is fed to the cache at once (no host sync). Rows whose action ended on a
    ``stop`` token feed holes from then on; a tag spelled over several tokens is found at the next
    host check (every ``sync_every`` tokens at most), and the tokens fed after it become holes
    (``cache.hide``), so the cache ends up exactly as if decoding had stopped there."""
    B, dev = logits.shape[0], logits.device
    make = getattr(cache, "decoder", None) or (lambda *a: _EagerDecoder(cache, *a))
    dec = make(logits, keys, steps, stop, max_tokens, temperature, top_p)
    lengths, done = [max_tokens] * B, [False] * B
    t0 = 0
    while t0 < max_tokens and not all(done):
        t1 = min(max_tokens, t0 + max(1, min(sync_every, t0)))  # host checks after tokens 1, 2, 4, 8, 16, 24, ...
        for _ in range(t0, t1):
            dec.step()
        # One host sync: where did each row's action end inside [t0, t1)?
        seg, seg_fed = dec.tok[:, t0:t1], dec.fed[:, t0:t1]  # (B, k)
        stop_hit = stop[seg] & seg_fed  # (B, k)
        k = t1 - t0
        ends = torch.where(stop_hit.any(1), stop_hit.int().argmax(1), k).tolist()  # (B,) k = no stop token
        cand = closes[seg] & seg_fed  # (B, k) tokens that may complete a spelled-out tag
        cand_rows = cand.any(1).nonzero().flatten().tolist()
        if cand_rows:
            cand_l, tails = cand[cand_rows].tolist(), dec.tok[cand_rows, :t1].tolist()
            tagged = []
            for r, b in enumerate(cand_rows):
                for j in range(ends[b]):
                    if cand_l[r][j] and _closes_action(tokenizer, tails[r][max(0, t0 + j - 15):t0 + j + 1]):
                        ends[b] = j
                        tagged.append(b)
                        break
            if tagged:
                after = torch.arange(k, device=dev)[None, :] > torch.tensor([ends[b] for b in tagged], device=dev)[:, None]
                hidden = torch.zeros_like(seg_fed)
                hidden[tagged] = after & seg_fed[tagged]  # tokens fed after the tag
                cache.hide(hidden)
                dec.live[tagged] = False
        for b, j in enumerate(ends):
            if j < k and not done[b]:
                lengths[b], done[b] = t0 + j + 1, True
        t0 = t1
    toks = [r[:n] for r, n in zip(dec.tok.tolist(), lengths)]
    lps = [r[:n] for r, n in zip(dec.lp.tolist(), lengths)]
    return toks, lps
