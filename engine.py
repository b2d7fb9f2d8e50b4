"""Static-shape decode engine for Llama-family models: a slot KV cache, a functional forward, CUDA graphs.

Rollouts (paper Algorithm 1, step 1) are decode-bound: thousands of one-token forwards of a small
batch. Through Hugging Face's ``model(...)`` each of them pays Python, mask building and cache
bookkeeping costs that dwarf the arithmetic of a few-million-parameter model. This engine runs
the same model with
  * one pre-allocated cache per layer, keys/values (B_cap, kv_heads, C_cap, head_dim), a boolean
    column mask (B_cap, C_cap) and each row's next position id;
  * a functional forward (embedding, RMSNorm, q/k/v, RoPE, SDPA, SwiGLU MLP) that reads the HF
    module's own parameters, so optimiser steps are seen without copies;
  * for decoding an action (``decoder``), one function per token that samples it (sampler.py),
    records token, log-prob and liveness in static (B_cap, A) buffers, feeds it and advances the
    token and column counters, all on the device; CUDA graphs capture it per (batch bucket, column
    bucket, action buffer width, temperature, top-p), so a decoded token is one graph replay and the
    host only looks at the buffers every few tokens (rollout.py's stop checks).

It implements the same interface as kvcache.py's ``HFCache`` (``begin``, ``add``, ``feed``, ``step``,
``hide``, ``keep``, ``end``), so rollout.py drives either without knowing which. The hole semantics are those
of kvcache.py: all rows append at one shared column ``c``; a row with nothing to write there writes a
hole (mask 0), position ids count real tokens only, keys are cached after RoPE so ``keep`` can move
them (it drops rows and right-aligns each row's real columns, once per env step).

Support is decided by checks, not by a list of model names: ``Engine.build`` declines (returns None) a model whose
decoder is not a plain full-attention Llama-family one (Llama, Qwen2, Mistral without sliding
window, ...; no q/k norms, no logit soft-cap, no RoPE that changes with the sequence length), and
then runs the functional forward beside the HF forward on a small ragged batch and declines when
the logits differ. A captured graph is checked once against the same function run eagerly on the same
state (same tokens, same logits to rounding); on any failure the engine warns and decodes eagerly.
Without graphs (CPU, or ``graphs=False``) the same function runs eagerly: one code path.

Shapes: B live rows, Bb graph batch bucket, C columns in use, Cb column bucket, q chunk width,
H heads, Hkv kv heads, D head dim, V vocab.

References:
  1) iStar, https://arxiv.org/abs/2509.19199 (Algorithm 1, step 1: roll out with π_θold)
  2) Llama/Qwen2 modelling code in Hugging Face transformers (what the functional forward mirrors)
  3) gpt-fast (static KV cache + captured decode step), https://github.com/pytorch-labs/gpt-fast
Deviations from the paper: none (the paper does not specify how rollouts are computed).
"""
from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from kvcache import _left_pad
from sampler import sample

_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> Engine, reused across rollouts
_COL_BUCKET = 256  # graph column buckets (multiples of this)
_KEEP_BYTES = 2 << 30  # cache buffers up to this size stay allocated between rollouts (end())


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _batch_bucket(b: int) -> int:
    return 1 << max(0, (b - 1).bit_length())  # next power of two


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype  # HF's RMSNorm: normalise in fp32, scale in the input dtype
    x = x.float()
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Engine:
    """See the module docstring. Build with ``Engine.build(model)`` (None when unsupported)."""

    def __init__(self, model, graphs: bool = True):
        cfg, dec = model.config, model.get_decoder()
        # a weak reference: the engine is cached per model in a WeakKeyDictionary and must not keep it alive
        self._model, self.dec, self.head = weakref.ref(model), dec, model.get_output_embeddings()
        attn0 = dec.layers[0].self_attn
        self.H, self.Hkv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.scale, self.eps = attn0.scaling, dec.norm.variance_epsilon
        self.act = ACT2FN[cfg.hidden_act]
        self.graphs_ok, self.graphs_failed = graphs, False
        self.B_cap = self.C_cap = 0
        self.K: list[torch.Tensor] = []
        self._graphs: dict = {}

    # -- construction and support check --------------------------------------------------------
    @classmethod
    def build(cls, model, graphs: bool = True) -> "Engine | None":
        """The cached engine of ``model``, or a new one after the support check; None if unsupported."""
        eng = _ENGINES.get(model)
        if eng is not None:
            eng.graphs_ok = graphs and not eng.graphs_failed
            return eng
        cfg = model.config
        try:
            dec = model.get_decoder()
            layer = dec.layers[0]
            plain = (getattr(cfg, "sliding_window", None) is None or not getattr(cfg, "use_sliding_window", True)) \
                and hasattr(dec, "rotary_emb") and hasattr(layer.self_attn, "scaling") and hasattr(layer, "mlp") \
                and not hasattr(layer.self_attn, "q_norm") and hasattr(layer.mlp, "gate_proj") \
                and getattr(getattr(dec, "rotary_emb", None), "rope_type", "default") not in ("dynamic", "longrope") \
                and not getattr(cfg, "final_logit_softcapping", None)
        except (AttributeError, IndexError):
            plain = False
        if not plain:
            return None
        eng = cls(model, graphs)
        if not eng._matches_hf():
            return None
        _ENGINES[model] = eng
        return eng

    @torch.no_grad()
    def _matches_hf(self) -> bool:
        """Functional logits == HF logits on a left-padded batch with a hole, in fp32."""
        device = self.head.weight.device
        vocab = self.head.weight.shape[0]
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (5, 3)]
        ids, mask = _left_pad(seqs, 0, device)  # (2, 5)
        with torch.autocast(device.type, enabled=False):
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            want = self._model()(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()  # (2, V)
            self.begin(2, dtype=self.head.weight.dtype)
            self.add(2)
            got = self.feed(seqs)  # (2, V)
        return _logits_close(got, want, self.head.weight.dtype)

    # -- state --------------------------------------------------------------------------------
    def begin(self, n_rows: int, dtype: torch.dtype | None = None) -> None:
        """Start a rollout of at most ``n_rows`` rows: empty cache, capacity for them."""
        device = self.head.weight.device
        if dtype is None:  # the dtype k/v come out in: the autocast dtype if autocast is on
            on = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if on else self.head.weight.dtype
        ptrs = tuple(p.data_ptr() for p in self._model().parameters())
        if getattr(self, "_ptrs", None) != ptrs or getattr(self, "dtype", None) != dtype:
            self._graphs.clear()  # graphs hold parameter addresses and the autocast dtype
        self._ptrs, self.dtype, self.device = ptrs, dtype, device
        self._alloc(max(n_rows, self.B_cap), max(self.C_cap, _COL_BUCKET))
        self.col_mask.zero_()
        self.next_pos.zero_()
        self.B = self.c = 0

    def _alloc(self, B_cap: int, C_cap: int) -> None:
        if B_cap <= self.B_cap and C_cap <= self.C_cap and self.K and self.K[0].dtype == self.dtype:
            return
        old = (self.K, self.V, self.col_mask, self.next_pos, self.C_cap) if self.K and self.K[0].dtype == self.dtype else None
        n = len(self.dec.layers)
        shape = (B_cap, self.Hkv, C_cap, self.D)
        # zeros, not empty: masked columns must hold finite values (NaN * 0 weight is still NaN)
        self.K = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        self.V = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        self.col_mask = torch.zeros(B_cap, C_cap, dtype=torch.bool, device=self.device)  # (B_cap, C_cap)
        self.next_pos = torch.zeros(B_cap, dtype=torch.long, device=self.device)  # (B_cap,)
        if old is not None:  # growth mid-rollout keeps the content
            K, V, m, p, C = old
            b = min(B_cap, K[0].shape[0])
            for new, prev in zip(self.K + self.V, K + V):
                new[:b, :, :C] = prev[:b]
            self.col_mask[:b, :C], self.next_pos[:b] = m[:b], p[:b]
        self.B_cap, self.C_cap = B_cap, C_cap
        self._graphs.clear()

    def _ensure_cols(self, need: int) -> None:
        if need > self.C_cap:
            self._alloc(self.B_cap, _round_up(max(need, self.C_cap * 3 // 2), _COL_BUCKET))

    def end(self) -> None:
        """After a rollout: keep the buffers (and their CUDA graphs) for the next one when they are small
        (≤ ``_KEEP_BYTES``: the default model's case), else free them for the update that follows."""
        size = sum(t.numel() * t.element_size() for t in self.K + self.V)
        if size > _KEEP_BYTES:
            self.K, self.V, self.B_cap, self.C_cap = [], [], 0, 0
            self._graphs.clear()

    def add(self, n: int) -> None:
        """Append ``n`` empty rows (new episodes, or windowed rows) after the live ones."""
        if self.B + n > self.B_cap:
            self._alloc(self.B + n, self.C_cap)
        self.col_mask[self.B:self.B + n] = False
        self.next_pos[self.B:self.B + n] = 0
        self.B += n

    def keep(self, idx: list[int]) -> None:
        """Keep rows ``idx`` (in that order) and right-align each one's real columns: holes vanish."""
        B, c = self.B, self.c
        if not idx:
            self.B = self.c = 0
            return
        rows = torch.tensor(idx, device=self.device)  # (B',)
        m = self.col_mask[rows, :c]  # (B', c)
        n_real = m.sum(1)  # (B',)
        width = int(n_real.max())
        b_idx, c_idx = m.nonzero(as_tuple=True)  # (K,), (K,) row-major: columns ascending per row
        dest = (width - n_real)[b_idx] + m.cumsum(1)[b_idx, c_idx] - 1  # (K,) right-aligned column
        src_rows = rows[b_idx]  # (K,)
        for buf in self.K + self.V:
            moved = buf[src_rows, :, c_idx]  # (K, Hkv, D) gathered before anything is overwritten
            buf[:len(idx), :, :width] = 0
            buf[b_idx, :, dest] = moved
        self.next_pos[:len(idx)] = self.next_pos[rows].clone()
        self.col_mask[:max(B, len(idx))] = False
        self.col_mask[b_idx, dest] = True
        self.B, self.c = len(idx), width

    def hide(self, hidden: torch.Tensor) -> None:
        """Turn the real tokens among the last k columns into holes where ``hidden`` (B, k) is True."""
        k = hidden.shape[1]
        cols = self.col_mask[:self.B, self.c - k:self.c]  # (B, k) view
        self.next_pos[:self.B] -= (cols & hidden).sum(1)
        cols &= ~hidden

    # -- forward ------------------------------------------------------------------------------
    def _layers(self, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor, write, Bb: int, Cb: int) -> torch.Tensor:
        """x (Bb, q, hidden) at positions pos (Bb, q); ``write(buf, k)`` stores a layer's new keys/values;
        attention reads columns [0, Cb) where ``allowed`` (Bb, 1, q, Cb) is True."""
        Bq, q = x.shape[:2]
        rot = self.dec.rotary_emb
        with torch.autocast(x.device.type, enabled=False):  # RoPE angles in fp32, as HF
            freqs = pos[..., None].float() * rot.inv_freq.float()  # (Bb, q, D/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (Bb, q, D)
            cos, sin = (emb.cos() * rot.attention_scaling)[:, None], (emb.sin() * rot.attention_scaling)[:, None]
        for i, layer in enumerate(self.dec.layers):
            a = layer.self_attn
            h = _rms(x, layer.input_layernorm.weight, self.eps)  # (Bb, q, hidden)
            qs = a.q_proj(h).view(Bq, q, self.H, self.D).transpose(1, 2)  # (Bb, H, q, D)
            ks = a.k_proj(h).view(Bq, q, self.Hkv, self.D).transpose(1, 2)  # (Bb, Hkv, q, D)
            vs = a.v_proj(h).view(Bq, q, self.Hkv, self.D).transpose(1, 2)  # (Bb, Hkv, q, D)
            # RoPE in the residual stream's dtype, as HF does (fp32 under autocast with fp32 weights)
            qs, ks = _rotate(qs, cos.to(x.dtype), sin.to(x.dtype)), _rotate(ks, cos.to(x.dtype), sin.to(x.dtype))
            write(self.K[i], ks.to(self.dtype))  # the cache dtype is what SDPA computes in (autocast's)
            write(self.V[i], vs.to(self.dtype))
            o = F.scaled_dot_product_attention(
                qs.to(self.dtype), self.K[i][:Bb, :, :Cb], self.V[i][:Bb, :, :Cb], attn_mask=allowed,
                scale=self.scale, enable_gqa=self.Hkv != self.H)  # (Bb, H, q, D)
            x = x + a.o_proj(o.transpose(1, 2).reshape(Bq, q, self.H * self.D))
            h = _rms(x, layer.post_attention_layernorm.weight, self.eps)
            x = x + layer.mlp.down_proj(self.act(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h))
        x = _rms(x[:, -1], self.dec.norm.weight, self.eps)  # (Bb, hidden) the last column only
        return self.head(x).float()  # (Bb, V)

    def feed(self, chunks: list[list[int]]) -> torch.Tensor:
        """Append one token list per live row (left-padded into one chunk); next-token logits (B, V) fp32."""
        if len(chunks) != self.B or not all(chunks):
            raise ValueError(f"Engine.feed: expected {self.B} non-empty chunks, got {[len(x) for x in chunks]}")
        ids, mask = _left_pad(chunks, 0, self.device)  # (B, q)
        B, q, c = self.B, ids.shape[1], self.c
        self._ensure_cols(c + q)
        mask = mask.bool()
        pos = (self.next_pos[:B, None] + mask.cumsum(1) - 1).clamp(min=0)  # (B, q) real tokens only
        self.col_mask[:B, c:c + q] = mask
        col = torch.arange(c + q, device=self.device)  # (C,)
        query_col = c + torch.arange(q, device=self.device)  # (q,)
        causal = col[None, :] <= query_col[:, None]  # (q, C)
        allowed = (self.col_mask[:B, None, :c + q] & causal) | (col[None, :] == query_col[:, None])  # (B, q, C)

        def write(buf, k):
            buf[:B, :, c:c + q] = k
        logits = self._layers(self.dec.embed_tokens(ids), pos, allowed[:, None], write, B, c + q)
        self.next_pos[:B] += mask.sum(1)
        self.c = c + q
        return logits

    def _step(self, tok: torch.Tensor, live: torch.Tensor, col: torch.Tensor, Bb: int, Cb: int) -> torch.Tensor:
        """One decode column at ``col`` (1,) for rows [0, Bb): static shapes, no host sync (graph-safe)."""
        self.col_mask[:Bb].index_copy_(1, col, live[:, None])
        pos = self.next_pos[:Bb, None]  # (Bb, 1)
        ar = torch.arange(Cb, device=self.device)  # (Cb,)
        allowed = self.col_mask[:Bb, :Cb] | (ar == col)[None, :]  # (Bb, Cb) a hole still attends to itself
        logits = self._layers(self.dec.embed_tokens(tok[:, None]), pos, allowed[:, None, None],
                              lambda buf, k: buf[:Bb].index_copy_(2, col, k), Bb, Cb)
        self.next_pos[:Bb] += live
        return logits

    def step(self, tok: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); rows with ``live`` False write a hole. Logits (B, V) fp32 (eager)."""
        B, c = self.B, self.c
        self._ensure_cols(c + 1)
        self.c = c + 1
        col = torch.full((1,), c, dtype=torch.long, device=self.device)
        return self._step(tok, live, col, B, c + 1)

    # -- sampling decode: sample + record + step, one CUDA graph replay per token ---------------
    def decoder(self, logits, keys, steps, stop, max_tokens: int, temperature: float, top_p: float) -> "_Decoder":
        """Decode one action per live row from ``logits`` (B, V): see ``_Decoder`` and rollout.py's
        ``_EagerDecoder`` (the reference it must equal)."""
        return _Decoder(self, logits, keys, steps, stop, max_tokens, temperature, top_p)

    def _sample_step(self, d: dict, Bb: int, Cb: int, temperature: float, top_p: float) -> torch.Tensor:
        """Token ``d["t"]`` of every row [0, Bb): sample it from ``d["logits"]``, record it, feed it at
        column ``d["col"]``, leave the next logits in ``d["logits"]`` and advance both counters.
        Static shapes, no host sync, all state in ``d`` and the cache: the function a graph captures."""
        t, live, logits = d["t"], d["live"][:Bb], d["logits"][:Bb]
        tok, lp = sample(logits, d["keys"][:Bb], d["steps"][:Bb], t, temperature, top_p)  # (Bb,), (Bb,)
        d["tok"][:Bb].index_copy_(1, t, tok[:, None])
        d["lp"][:Bb].index_copy_(1, t, lp[:, None])
        d["fed"][:Bb].index_copy_(1, t, live[:, None])
        logits.copy_(self._step(tok, live, d["col"], Bb, Cb))  # (Bb, V) next-token logits
        live &= ~d["stop"][tok]  # an action ends on a stop token; its row feeds holes from now on
        t += 1
        d["col"] += 1
        return logits

    def _replay(self, d: dict, B: int, c: int, sampling: tuple) -> bool:
        """One graph replay of ``_sample_step`` for (batch bucket, column bucket, sampling); False = none."""
        Bb, Cb = min(_batch_bucket(B), self.B_cap), min(_round_up(c + 1, _COL_BUCKET), self.C_cap)
        key = (Bb, Cb, d["tok"].shape[1], *sampling)
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(d, Bb, Cb, sampling)
            except Exception as err:  # noqa: BLE001  any capture failure: fall back, never crash a rollout
                warnings.warn(f"Engine: CUDA graph capture failed ({type(err).__name__}: {err}); decoding eagerly")
                self.graphs_ok, self.graphs_failed = False, True
                return False
        if self._graphs[key] is None:
            return False
        self._graphs[key][0].replay()
        return True

    def _capture(self, d: dict, Bb: int, Cb: int, sampling: tuple):
        """Capture ``_sample_step`` for (Bb, Cb); replay it once against the eager step on the same state
        and keep it only if both sample the same tokens and give the same logits (to rounding)."""
        state = [self.next_pos, self.col_mask, *d.values()]
        saved = [x.clone() for x in state]

        def restore():  # undo a step's side effects (its K/V column is rewritten by the real step)
            for x, y in zip(state, saved):
                x.copy_(y)

        def warmup():
            self._sample_step(d, Bb, Cb, *sampling)
            restore()
        graph, _ = capture_graph(lambda: self._sample_step(d, Bb, Cb, *sampling), warmup)
        restore()
        self._sample_step(d, Bb, Cb, *sampling)  # eager, then the graph on the same state
        want = [x.clone() for x in (d["tok"], d["lp"], d["logits"])]
        restore()
        graph.replay()
        got = (d["tok"], d["lp"], d["logits"])
        same = torch.equal(got[0], want[0]) and _logits_close(got[1], want[1], self.dtype) \
            and _logits_close(got[2], want[2], self.dtype)
        err = float((got[2] - want[2]).abs().max())
        restore()  # the caller replays for real
        if not same:
            warnings.warn(f"Engine: a captured decode step disagrees with the eager one (max |Δlogit| {err:.3g}, "
                          f"logits up to {float(want[2].abs().max()):.3g}, {self.dtype}); decoding eagerly")
            self.graphs_ok, self.graphs_failed = False, True
            return None
        return graph, d["logits"]


class _Decoder:
    """``Engine.decoder``: one action per live row, each token one ``Engine._sample_step`` (replayed as a
    CUDA graph when available). ``tok``, ``lp``, ``fed`` (B, A) and ``live`` (B,) are views of the
    engine's static buffers, read (and ``live`` edited in place) by the host between steps."""

    def __init__(self, eng: Engine, logits, keys, steps, stop, max_tokens: int, temperature: float, top_p: float):
        B, V = logits.shape
        eng._ensure_cols(eng.c + max_tokens)  # the whole action fits: no reallocation (and no recapture) inside it
        d = getattr(eng, "_dec", None)
        if d is None or d["tok"].shape[0] < eng.B_cap or d["tok"].shape[1] < max_tokens or d["logits"].shape[1] != V \
                or d["logits"].device != eng.device:
            dev, A = eng.device, max(max_tokens, d["tok"].shape[1] if d else 0)
            d = dict(logits=torch.zeros(eng.B_cap, V, device=dev), keys=torch.zeros(eng.B_cap, 2, dtype=torch.long, device=dev),
                     steps=torch.zeros(eng.B_cap, dtype=torch.long, device=dev), stop=torch.zeros(V, dtype=torch.bool, device=dev),
                     tok=torch.zeros(eng.B_cap, A, dtype=torch.long, device=dev), lp=torch.zeros(eng.B_cap, A, device=dev),
                     fed=torch.zeros(eng.B_cap, A, dtype=torch.bool, device=dev), live=torch.zeros(eng.B_cap, dtype=torch.bool, device=dev),
                     t=torch.zeros(1, dtype=torch.long, device=dev), col=torch.zeros(1, dtype=torch.long, device=dev))
            eng._dec = d
            eng._graphs.clear()  # graphs hold the addresses of these buffers
        d["logits"][:B].copy_(logits)
        d["keys"][:B].copy_(keys)
        d["steps"][:B].copy_(steps)
        d["stop"].copy_(stop)
        d["live"].zero_()
        d["live"][:B] = True  # rows past B (bucket padding) stay holes
        d["fed"].zero_()
        d["t"].zero_()
        d["col"].fill_(eng.c)
        self.eng, self.d, self.B, self.sampling = eng, d, B, (float(temperature), float(top_p))
        self.tok, self.lp, self.fed = d["tok"][:B, :max_tokens], d["lp"][:B, :max_tokens], d["fed"][:B, :max_tokens]
        self.live = d["live"][:B]

    def step(self) -> None:
        eng, c = self.eng, self.eng.c
        eng.c = c + 1
        if eng.graphs_ok and graphs_available(eng.device) and eng._replay(self.d, self.B, c, self.sampling):
            return
        eng._sample_step(self.d, self.B, c + 1, *self.sampling)


def _logits_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> bool:
    """Equal up to the rounding of a forward computed in ``dtype``: within 1e-4 (fp32) or 5e-2 (bf16, fp16)
    of the logits' scale. Kernels picked differently (e.g. cuBLAS under graph capture) round differently,
    and one bf16 ulp of a logit near 1 is 4e-3; a wrong step (a stale input, a wrong column) is off by O(1)."""
    tol = (1e-4 if dtype == torch.float32 else 5e-2) * max(1.0, float(want.abs().max()))
    return bool(torch.allclose(got, want, atol=tol, rtol=0))


def graphs_available(device: torch.device) -> bool:
    return device.type == "cuda"


def capture_graph(fn, warmup):
    """Capture ``fn()`` (static shapes, no host sync) in a CUDA graph after two ``warmup()`` calls on a
    side stream; returns (graph, fn's outputs, rewritten by every ``graph.replay()``). The only CUDA-only
    function of the engine (tests replace it and ``graphs_available`` to run the bookkeeping on the CPU)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture (allocator, lazy inits)
        for _ in range(2):
            warmup()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()  # own memory pool: graphs replay in any order, not their capture order
    on = torch.is_autocast_enabled("cuda")
    with torch.cuda.graph(graph), \
            torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=on, cache_enabled=False):
        out = fn()
    return graph, out
