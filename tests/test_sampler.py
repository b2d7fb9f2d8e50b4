"""sampler.py: counter-based sampling draws from the right distribution and depends only on its key."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler import row_keys, sample, uniform


def _keys(n, seed=0):
    return row_keys(torch.Generator().manual_seed(seed), n, "cpu")


def _freq_close(tok, probs, n):
    """Every token's frequency within 5 standard errors (+ a little slack) of its probability."""
    freq = torch.bincount(tok, minlength=probs.numel()).double() / n
    se = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 5 * se + 1e-3).all(), (freq, probs)


@settings(deadline=None, max_examples=15)
@given(logits=st.lists(st.floats(-4, 4), min_size=2, max_size=8), temperature=st.sampled_from([0.5, 1.0, 2.0]),
       top_p=st.sampled_from([1.0, 0.9, 0.5]))
def test_draws_follow_the_tempered_nucleus_distribution(logits, temperature, top_p):
    n = 20000
    lg = torch.tensor(logits)
    probs = (lg.double() / temperature).softmax(-1)
    sp, order = probs.sort(descending=True)
    sp = sp.masked_fill((sp.cumsum(0) - sp) >= top_p, 0.0)
    want = torch.zeros_like(probs).scatter(0, order, sp)
    want /= want.sum()
    tok, logp = sample(lg.expand(n, -1), _keys(n), torch.zeros(n, dtype=torch.long), 0, temperature, top_p)
    _freq_close(tok, want, n)
    assert (want[tok] > 0).all()  # never a token the nucleus dropped
    torch.testing.assert_close(logp, lg.log_softmax(-1)[tok])  # the untempered policy's log-prob


def test_uniform_bits_are_uniform_and_decorrelated():
    n = 50000
    keys, step = _keys(n), torch.arange(n) % 7
    u0, u1 = uniform(keys, step, 0), uniform(keys, step, 1)
    assert ((u0 >= 0) & (u0 < 1)).all()
    hist = torch.histc(u0.float(), bins=20, min=0, max=1) / n  # each bin holds 5% ± 4 standard errors
    assert ((hist - 0.05).abs() < 4 * math.sqrt(0.05 * 0.95 / n)).all(), hist
    assert abs(float(torch.corrcoef(torch.stack([u0, u1]))[0, 1])) < 0.02  # next token: independent draw
    assert abs(float(torch.corrcoef(torch.stack([u0, uniform(keys, step + 1, 0)]))[0, 1])) < 0.02  # next env step


def test_a_draw_depends_on_its_own_row_only():
    lg = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    keys, step = _keys(6), torch.tensor([0, 1, 2, 0, 1, 2])
    tok, _ = sample(lg, keys, step, 4)
    for b in range(6):  # the same row alone, or with its batch mates permuted, draws the same token
        assert sample(lg[b:b + 1], keys[b:b + 1], step[b:b + 1], 4)[0].item() == tok[b].item()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(sample(lg[perm], keys[perm], step[perm], 4)[0], tok[perm])


def test_keys_come_from_the_generators():
    a, b = row_keys(torch.Generator().manual_seed(1), 4, "cpu"), row_keys(torch.Generator().manual_seed(1), 4, "cpu")
    assert torch.equal(a, b) and not torch.equal(a, _keys(4, seed=2))
    per_task = row_keys([torch.Generator().manual_seed(s) for s in (5, 6)], 4, "cpu")  # 2 rows per task
    assert torch.equal(per_task[2:], row_keys(torch.Generator().manual_seed(6), 2, "cpu"))


def test_greedy_is_argmax():
    lg = torch.randn(5, 9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample(lg, _keys(5), torch.zeros(5), 0, temperature=0.0)[0], lg.argmax(-1))
