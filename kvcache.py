"""The batched KV cache with holes that ``rollout.py`` decodes with.

One rollout batch keeps every live episode's row in a single transformers ``DynamicCache``.
Rows are left-padded, and later chunks (a decoded token, or [end of turn + next observation])
are appended to all rows at once, so a row whose chunk is shorter than the others, or whose
action has already ended, writes a *hole*: a pad token with attention mask 0. Holes therefore
sit in the middle of rows, not only at the left edge. That is correct because
  * position ids are counted over real tokens only (``_KV.next_pos``, ``_forward``), so a row's
    tokens get the positions they would have in an unpadded sequence;
  * keys are cached after RoPE, so a cached key never needs its position again and can be moved
    to another column (``_merge``, ``_compact``) without changing attention scores;
  * the 2D attention mask (``_KV.attn``) hides every hole from every later query.
Log-probs recorded this way equal a fresh ``model.token_logprobs`` pass over the packed rows
(tests/test_rollout.py).

What lives here:
  * ``_KV``: the cache, its (B, C) attention mask and each row's next position id.
  * ``_GrowingLayer``: a cache layer written in place into a buffer with spare columns, so a decode
    step costs O(new tokens), not a ``torch.cat`` of the whole cache (O(C) per token).
  * ``_forward``: the only place the model runs; feeds a (B, q) chunk after the cache.
  * ``_select`` (drop finished rows), ``_merge`` (stack a freshly prefilled batch under the cache),
    ``_compact`` (gather each row's real columns right-aligned once holes waste 25% of the width),
    ``_left_pad`` (token lists -> left-padded ids and mask).

Shape vocabulary: B rows in the cache, C cache columns, q new columns, W padded width, V vocab.

``HFCache`` wraps these functions in rollout.py's cache interface. engine.py's ``Engine`` offers
the same interface with static buffers and a functional forward (CUDA graphs on GPU) for
Llama-family models; this file is the fallback for any other full-attention HF causal LM and the
reference the engine is tested against (tests/test_engine.py).

References:
  1) iStar, https://arxiv.org/abs/2509.19199 (Algorithm 1, step 1: roll out with π_θold)
  2) Hugging Face ``generate``: left padding + position ids from the attention mask, and the
     ``DynamicCache`` / ``DynamicLayer`` API this file subclasses,
     https://github.com/huggingface/transformers/blob/main/src/transformers/cache_utils.py
Deviations from the paper: none (the paper does not specify how rollouts are batched).
Limitation: full-attention models only; ``_new_cache`` rejects sliding-window or linear layers.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer


@dataclass
class _KV:
    cache: object  # transformers DynamicCache, keys/values (B, heads, C, head_dim)
    attn: torch.Tensor  # (B, C) 1 = real token, 0 = hole / padding
    next_pos: torch.Tensor  # (B,) position id of each row's next real token

class _GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose keys/values are views of a buffer with spare columns, so a
    decode step writes in place instead of re-copying the whole cache (``DynamicLayer`` does
    ``torch.cat`` every step: O(C) traffic per token). When ``_select``/``_merge``/``_compact``
    replace ``keys``/``values`` with new tensors, the next update re-buffers them."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.numel() else 0
        end = n + key_states.shape[-2]
        buf = getattr(self, "_buf", None)
        if buf is None or buf[0].data_ptr() != self.keys.data_ptr() or end > buf[0].shape[-2] \
                or buf[0].shape[0] != key_states.shape[0]:
            cap = end + max(64, end // 2)  # amortised growth
            buf = tuple(x.new_empty(*x.shape[:2], cap, x.shape[-1]) for x in (key_states, value_states))
            if n:
                buf[0][:, :, :n], buf[1][:, :, :n] = self.keys, self.values
            self._buf = buf
        buf[0][:, :, n:end], buf[1][:, :, n:end] = key_states, value_states
        self.keys, self.values = buf[0][:, :, :end], buf[1][:, :, :end]  # (B, heads, end, head_dim) views
        return self.keys, self.values


def _new_cache(model) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise NotImplementedError("rollout supports full-attention models only (no sliding-window or linear layers)")
    cache.layers = [_GrowingLayer() for _ in cache.layers]
    return cache


def _layers(kv: _KV):
    return kv.cache.layers


def _forward(model, kv: _KV | None, ids: torch.Tensor, mask: torch.Tensor) -> tuple[_KV, torch.Tensor]:
    """Feed ids (B, q) with mask (B, q) (0 = hole) after the cache; next-token logits (B, V) fp32."""
    start = kv.next_pos if kv is not None else torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
    attn = mask if kv is None else torch.cat([kv.attn, mask], dim=1)  # (B, C + q)
    pos = (start[:, None] + mask.cumsum(1) - 1).clamp(min=0)  # (B, q) positions count real tokens only
    cache = _new_cache(model) if kv is None else kv.cache
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # renamed in transformers 5.2x
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1, **{name: cache})
    return _KV(out.past_key_values, attn, start + mask.sum(1)), out.logits[:, -1].float()


def _select(kv: _KV, keep: list[int]) -> _KV | None:
    """Keep rows ``keep`` and drop leading columns that are holes in every kept row."""
    if not keep:
        return None
    idx = torch.tensor(keep, device=kv.attn.device)
    attn = kv.attn[idx]  # (B', C)
    first = int(attn.any(0).long().argmax())  # first column some row attends to
    for layer in _layers(kv):
        layer.keys, layer.values = layer.keys[idx, :, first:], layer.values[idx, :, first:]
    return _KV(kv.cache, attn[:, first:], kv.next_pos[idx])


def _merge(a: _KV | None, b: _KV) -> _KV:
    """Stack two caches along the batch, left-padding the shorter one with holes."""
    if a is None:
        return b
    ca, cb = a.attn.shape[1], b.attn.shape[1]
    c = max(ca, cb)
    for la, lb in zip(_layers(a), _layers(b)):
        la.keys = torch.cat([F.pad(la.keys, (0, 0, c - ca, 0)), F.pad(lb.keys, (0, 0, c - cb, 0))])
        la.values = torch.cat([F.pad(la.values, (0, 0, c - ca, 0)), F.pad(lb.values, (0, 0, c - cb, 0))])
    attn = torch.cat([F.pad(a.attn, (c - ca, 0)), F.pad(b.attn, (c - cb, 0))])  # (Ba + Bb, c)
    return _KV(a.cache, attn, torch.cat([a.next_pos, b.next_pos]))


def _compact(kv: _KV | None, slack: float = 0.25) -> _KV | None:
    """Gather each row's real columns right-aligned once the cache is ``slack`` wider than its longest row."""
    if kv is None:
        return None
    n_real = kv.attn.sum(1)  # (B,)
    width = int(n_real.max())
    if kv.attn.shape[1] <= (1 + slack) * width:
        return kv
    b_idx, c_idx = kv.attn.nonzero(as_tuple=True)  # (K,), (K,) row-major: columns ascending per row
    dest = (width - n_real)[b_idx] + kv.attn.cumsum(1)[b_idx, c_idx] - 1  # (K,) right-aligned column
    for layer in _layers(kv):
        for name in ("keys", "values"):
            old = getattr(layer, name)  # (B, H, C, D); keys are stored after RoPE, so moving them is exact
            new = old.new_zeros(old.shape[0], old.shape[1], width, old.shape[3])
            new[b_idx, :, dest] = old[b_idx, :, c_idx]
            setattr(layer, name, new)
    attn = torch.zeros(kv.attn.shape[0], width, dtype=kv.attn.dtype, device=kv.attn.device)
    attn[b_idx, dest] = 1
    return _KV(kv.cache, attn, kv.next_pos)


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, W)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, W)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


class HFCache:
    """rollout.py's cache interface (``begin``, ``add``, ``feed``, ``step``, ``hide``, ``keep``, ``end``; the same as
    engine.py's ``Engine``) over the functions above: any full-attention Hugging Face causal LM.

    Rows are kept in rollout order; ``add(n)`` appends n new rows, which the next ``feed`` prefills in
    a fresh cache and merges under the live ones."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id

    def begin(self, n_rows: int) -> None:
        self.kv, self.B, self.n_new = None, 0, 0

    def add(self, n: int) -> None:
        self.B, self.n_new = self.B + n, self.n_new + n

    def feed(self, chunks: list[list[int]]) -> torch.Tensor:
        """Append one token list per row (left-padded); next-token logits (B, V) fp32."""
        if len(chunks) != self.B or not all(chunks):
            raise ValueError(f"HFCache.feed: expected {self.B} non-empty chunks, got {[len(x) for x in chunks]}")
        old, device = self.B - self.n_new, next(self.model.parameters()).device
        logits = []
        if old:
            self.kv, lg = _forward(self.model, self.kv, *_left_pad(chunks[:old], self.pad_id, device))
            logits.append(lg)
        if self.n_new:
            kv_new, lg = _forward(self.model, None, *_left_pad(chunks[old:], self.pad_id, device))
            self.kv = _merge(self.kv, kv_new)
            logits.append(lg)
        self.n_new = 0
        return torch.cat(logits)  # (B, V)

    def step(self, tok: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); rows with ``live`` False write a hole. Logits (B, V) fp32."""
        self.kv, logits = _forward(self.model, self.kv, torch.where(live, tok, self.pad_id)[:, None], live.long()[:, None])
        return logits

    def hide(self, hidden: torch.Tensor) -> None:
        """Turn the real tokens among the last k columns into holes where ``hidden`` (B, k) is True."""
        cols = self.kv.attn[:, -hidden.shape[1]:]  # (B, k) view
        self.kv.next_pos -= (cols.bool() & hidden).sum(1)
        cols *= (~hidden).long()

    def keep(self, idx: list[int]) -> None:
        """Keep rows ``idx`` (in that order); compact the cache once holes waste 25% of it."""
        self.kv = _compact(_select(self.kv, idx))
        self.B = len(idx)

    def end(self) -> None:
        self.kv = None
