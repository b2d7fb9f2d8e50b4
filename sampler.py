"""Counter-based token sampling: reproducible per episode, independent of the batch, sync-free.

Step 1 of the iStar loop samples actions from π_θold (paper Algorithm 1). ``rollout.py`` decodes
many episodes together, and which episodes share a batch changes as they finish, so a sampler
that draws from one stateful generator would make an episode's tokens depend on its batch mates,
and a per-task generator would need a Python loop (and a GPU sync) per decoded token.

Instead every draw is a pure function of where it happens:

    u = hash(row key, env step s, token index t)  ∈ [0, 1)        (48 random bits)
    y = inverse-CDF(u) of softmax(logits / temperature), after top-p filtering

The row key (two 31-bit ints) is drawn once per episode from a ``torch.Generator``
(``row_keys``): one generator for the whole call, or one per task (distributed.py), so a call is
reproducible from its generator state, and an episode samples the same tokens whether it runs
alone, in a batch of 512, or on another data-parallel rank. A draw needs no host sync and has
static shapes, so it can sit in a CUDA-graph-friendly decode loop. Tokens of probability zero
(filtered by top-p) are never drawn; the 48-bit uniform resolves probabilities down to ~4e-15.

The hash is a chain of 32-bit integer mixers in int64 arithmetic whose multipliers are below
2**31, so no product overflows int64 on any backend (bit-exact on CPU and CUDA).

Shapes: B rows, V vocabulary.

References:
  1) iStar, https://arxiv.org/abs/2509.19199 (Algorithm 1, step 1)
  2) Counter-based RNG (the idea behind Philox): Salmon et al., "Parallel random numbers: as easy
     as 1, 2, 3", SC 2011; the mixer follows the "lowbias32" family of integer hashes.
Deviations from the paper: none (the paper does not specify the sampler).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_M32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x2C1B3C6D  # odd multipliers < 2**31: x * c < 2**63 for x < 2**32


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche mixer on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _C1) & _M32
    x = x ^ (x >> 15)
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


def row_keys(generators, n_rows: int, device) -> torch.Tensor:
    """(n_rows, 2) int64 keys drawn from one generator, or from a list of them (one per task,
    ``n_rows // len(generators)`` consecutive rows each)."""
    gens = list(generators) if isinstance(generators, (list, tuple)) else [generators]
    if n_rows % len(gens):
        raise ValueError(f"row_keys: {n_rows} rows do not split evenly over {len(gens)} generators")
    per = n_rows // len(gens)
    keys = [torch.randint(0, 2**31, (per, 2), generator=g, device=g.device) for g in gens]
    return torch.cat(keys).to(device=device, dtype=torch.long)  # (n_rows, 2)


def uniform(keys: torch.Tensor, step: torch.Tensor, t) -> torch.Tensor:
    """u ∈ [0, 1) in float64 (B,), a pure function of (keys[b], step[b], t)."""
    h = _mix(keys[:, 0] & _M32)
    h = _mix(h ^ (keys[:, 1] & _M32))
    h = _mix(h ^ (step.long() & _M32))
    h = _mix(h ^ (t & _M32 if isinstance(t, int) else t.long() & _M32))  # (B,) 32 bits
    lo = _mix(h ^ 0x5BD1E995) >> 16  # (B,) 16 more bits
    return (h.double() * 65536.0 + lo.double()) / 2.0**48  # (B,) 48-bit uniform


def sample(logits: torch.Tensor, keys: torch.Tensor, step: torch.Tensor, t, temperature: float = 1.0,
           top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from logits (B, V); return tokens (B,) and their log-probs (B,) under
    the policy itself (temperature 1, untruncated): the π_θold of paper.md E1 and E8.

    ``temperature == 0`` is greedy. ``step`` (B,) is each row's env step, ``t`` the token index in the action.
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, V) recorded as old_logp
    if temperature == 0:
        tok = logits.argmax(-1)  # (B,)
    else:
        probs = F.softmax(logits.double() / temperature, dim=-1)  # (B, V) float64: the CDF must resolve u
        if top_p < 1.0:  # nucleus: drop a token once the mass before it (in sorted order) reaches top_p
            sorted_p, order = probs.sort(-1, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # (B, V), never drops the top token
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        cdf = probs.cumsum(-1)  # (B, V)
        u = uniform(keys, step, t) * cdf[:, -1]  # (B,) scaled to the (filtered) total mass
        tok = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)  # (B,)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
