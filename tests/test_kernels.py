"""Kernel tests: Triton vs the torch references (forward and backward) on Hypothesis-drawn ragged
batches, the references vs naive Python loops, and small property tests of the paper's math
(paper Eq. 1, 2, 4, 5; paper.md E1, E2, E6, E7).

On a CPU-only machine the Triton path runs under Triton's interpreter: TRITON_INTERPRET=1 must be
set before triton is first imported (tests/conftest.py does it; so does this file, in case it runs
alone); test_triton_path_really_runs_the_interpreter_on_cpu fails loudly if it was not.
On a GPU, `TRITON_INTERPRET=0 python -m pytest tests/test_kernels.py` tests the compiled kernels.
Run: `python -m pytest tests/test_kernels.py -x -q`.
"""
import importlib
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported (also tl's own jit fns)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"

import pytest  # noqa: E402
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import kernels  # noqa: E402

# The package exports functions named like their modules, so fetch the modules themselves.
sl = importlib.import_module("kernels.step_logratio")
sn = importlib.import_module("kernels.segment_normalize")

BETA = 0.05

# ---------------------------------------------------------------------------------------------
# Ragged batches in the packed layout of kernels/__init__.py
# ---------------------------------------------------------------------------------------------


def _cu(lengths):
    return torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(DEVICE)


class Batch:
    """Offsets plus random fp32 data for both ops; `equal_groups` get one constant reward each."""

    def __init__(self, group_sizes, steps_per_traj, tokens_per_step, seed, equal_groups=()):
        assert sum(group_sizes) == len(steps_per_traj) and sum(steps_per_traj) == len(tokens_per_step)
        self.group_sizes, self.steps_per_traj, self.tokens_per_step = group_sizes, steps_per_traj, tokens_per_step
        self.M, self.N, self.S, self.T = len(group_sizes), len(steps_per_traj), len(tokens_per_step), sum(tokens_per_step)
        self.step_cu, self.traj_cu, self.group_cu = _cu(tokens_per_step), _cu(steps_per_traj), _cu(group_sizes)
        gen = torch.Generator().manual_seed(seed)
        self.prm_logp = (-3.0 * torch.rand(self.T, generator=gen)).to(DEVICE)                       # (T,)
        self.old_logp = (self.prm_logp.cpu() + 0.2 * torch.randn(self.T, generator=gen)).to(DEVICE)  # (T,)
        reward = torch.randn(self.S, generator=gen)                                                 # (S,)
        for g in equal_groups:
            lo, hi = self.group_steps(g)
            reward[lo:hi] = float(torch.randn(1, generator=gen)) * 3
        self.step_reward = reward.to(DEVICE)
        self.episode_adv = torch.randn(self.N, generator=gen).to(DEVICE)                            # (N,)

    def group_steps(self, g):  # [lo, hi) step range of group g
        t_lo, t_hi = sum(self.group_sizes[:g]), sum(self.group_sizes[:g + 1])
        return sum(self.steps_per_traj[:t_lo]), sum(self.steps_per_traj[:t_hi])

    def seg_args(self, step_reward=None, episode_adv=None):
        r = self.step_reward if step_reward is None else step_reward
        e = self.episode_adv if episode_adv is None else episode_adv
        return r, e, self.step_cu, self.traj_cu, self.group_cu

    def __repr__(self):
        return f"Batch(groups={self.group_sizes}, steps={self.steps_per_traj}, tokens={self.tokens_per_step})"


@st.composite
def ragged_batch(draw, max_groups=4, max_group_size=5, max_steps=6, max_tokens=40):
    group_sizes = draw(st.lists(st.integers(1, max_group_size), min_size=1, max_size=max_groups))
    steps = draw(st.lists(st.integers(1, max_steps), min_size=sum(group_sizes), max_size=sum(group_sizes)))
    token_count = st.one_of(st.just(1), st.integers(0, max_tokens))  # 1-token steps frequent, 0 allowed
    tokens = draw(st.lists(token_count, min_size=sum(steps), max_size=sum(steps)))
    equal_groups = draw(st.sets(st.integers(0, len(group_sizes) - 1), max_size=2))
    return Batch(group_sizes, steps, tokens, seed=draw(st.integers(0, 2**31 - 1)), equal_groups=equal_groups)


TINY = Batch([1], [1], [1], seed=0)                                          # one 1-step 1-token trajectory
EQUAL = Batch([3, 2], [2, 3, 1, 4, 2], [1, 5, 0, 1, 7, 3, 1, 1, 2, 0, 9, 1], seed=1, equal_groups=[0])
BIG = Batch([16, 1], [1 + i % 6 for i in range(17)], [(7 * i) % 41 for i in range(sum(1 + i % 6 for i in range(17)))], seed=2)


def edge_cases(**other_args):
    """Pin the three edge-case batches (other @given arguments fixed to other_args)."""
    def decorate(test):
        for batch in (BIG, EQUAL, TINY):
            test = example(batch=batch, **other_args)(test)
        return test
    return decorate


# (dtype, forward atol, forward rtol, grad rtol). Both ops accumulate in fp32, so forward is tight at
# either input dtype. Grads: exact in fp32; bf16 grads are exact on a GPU, but Triton's interpreter
# truncates fp32 -> bf16 (triton/runtime/interpreter.py `_convert_float`), hence 1 bf16 ulp on CPU.
_DTYPE_PARAMS = [
    pytest.param(torch.float32, 1e-5, 1e-5, 0.0, id="fp32"),
    pytest.param(torch.bfloat16, 1e-5, 1e-5, 2**-7 if INTERPRET else 0.0, id="bf16"),
]


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# Triton vs reference
# ---------------------------------------------------------------------------------------------

def test_triton_path_really_runs_the_interpreter_on_cpu():
    if DEVICE == "cpu":
        assert type(sl._step_logratio_fwd_kernel).__name__ == "InterpretedFunction"
        assert type(sn._segment_normalize_kernel).__name__ == "InterpretedFunction"


@pytest.mark.parametrize("dtype, atol, rtol, grad_rtol", _DTYPE_PARAMS)
@settings(deadline=None, max_examples=30)
@given(batch=ragged_batch(), old_requires_grad=st.booleans())
@edge_cases(old_requires_grad=True)
def test_step_logratio_triton_matches_reference(batch, old_requires_grad, dtype, atol, rtol, grad_rtol):
    prm = batch.prm_logp.to(dtype).requires_grad_()
    old = batch.old_logp.to(dtype).requires_grad_(old_requires_grad)
    ref = sl.step_logratio_reference(prm, old, batch.step_cu, BETA)                     # (S,)
    tri = sl.step_logratio(prm, old, batch.step_cu, BETA, impl="triton")                # (S,)
    assert tri.dtype == torch.float32 and tri.shape == (batch.S,)
    torch.testing.assert_close(tri, ref, atol=atol, rtol=rtol)
    # Low precision: the kernel must be no worse than the reference at that precision, vs fp32 truth.
    truth = sl.step_logratio_reference(batch.prm_logp, batch.old_logp, batch.step_cu, BETA)
    assert _max_err(tri, truth) <= _max_err(ref, truth) + atol
    # Backward with a random upstream gradient (not .sum(): grad_output != 1).
    dy = torch.randn_like(ref)
    inputs = (prm, old) if old_requires_grad else (prm,)
    ref_grads = torch.autograd.grad(ref, inputs, dy)
    tri_grads = torch.autograd.grad(tri, inputs, dy)
    for r, t in zip(ref_grads, tri_grads):
        assert t.dtype == dtype
        torch.testing.assert_close(t, r, atol=0, rtol=grad_rtol)


@pytest.mark.parametrize("dtype, atol, rtol, grad_rtol", _DTYPE_PARAMS)
@settings(deadline=None, max_examples=30)
@given(batch=ragged_batch(), alpha=st.sampled_from([1.0, 0.3]))
@edge_cases(alpha=1.0)
def test_segment_normalize_triton_matches_reference(batch, alpha, dtype, atol, rtol, grad_rtol):
    args = (batch.step_reward.to(dtype), batch.episode_adv.to(dtype), batch.step_cu, batch.traj_cu, batch.group_cu)
    ref_tok, ref_step = sn.segment_normalize_reference(*args, alpha)
    tri_tok, tri_step = sn.segment_normalize(*args, alpha, impl="triton")
    assert tri_tok.shape == (batch.T,) and tri_step.shape == (batch.S,) and tri_tok.dtype == torch.float32
    torch.testing.assert_close(tri_step, ref_step, atol=atol, rtol=rtol)
    torch.testing.assert_close(tri_tok, ref_tok, atol=atol, rtol=rtol)
    truth_tok, truth_step = sn.segment_normalize_reference(*batch.seg_args(), alpha)
    assert _max_err(tri_step, truth_step) <= _max_err(ref_step, truth_step) + atol
    assert _max_err(tri_tok, truth_tok) <= _max_err(ref_tok, truth_tok) + atol


# ---------------------------------------------------------------------------------------------
# Reference vs naive Python loops (float64, one step / one group at a time)
# ---------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=30)
@given(batch=ragged_batch())
@edge_cases()
def test_step_logratio_reference_matches_loop(batch):
    prm, old, cu = batch.prm_logp.tolist(), batch.old_logp.tolist(), batch.step_cu.tolist()
    loop = [BETA * sum(prm[t] - old[t] for t in range(cu[s], cu[s + 1])) for s in range(batch.S)]
    ref = sl.step_logratio_reference(batch.prm_logp, batch.old_logp, batch.step_cu, BETA)
    torch.testing.assert_close(ref.cpu().double(), torch.tensor(loop, dtype=torch.float64), atol=1e-6, rtol=1e-5)


@settings(deadline=None, max_examples=30)
@given(batch=ragged_batch(), alpha=st.floats(0.0, 2.0))
@edge_cases(alpha=1.0)
def test_segment_normalize_reference_matches_loop(batch, alpha):
    eps = 1e-6
    r, ep = batch.step_reward.tolist(), batch.episode_adv.tolist()
    step_cu, traj_cu, group_cu = batch.step_cu.tolist(), batch.traj_cu.tolist(), batch.group_cu.tolist()
    step_adv, token_adv = [0.0] * batch.S, [0.0] * batch.T
    for g in range(batch.M):
        steps = range(traj_cu[group_cu[g]], traj_cu[group_cu[g + 1]])
        vals = [r[s] for s in steps]
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
        for i in range(group_cu[g], group_cu[g + 1]):
            for s in range(traj_cu[i], traj_cu[i + 1]):
                step_adv[s] = (r[s] - mean) / (std + eps)                           # Eq. 4
                for t in range(step_cu[s], step_cu[s + 1]):
                    token_adv[t] = ep[i] + alpha * step_adv[s]                       # Eq. 5
    ref_tok, ref_step = sn.segment_normalize_reference(*batch.seg_args(), alpha, eps)
    torch.testing.assert_close(ref_step.cpu().double(), torch.tensor(step_adv, dtype=torch.float64), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_tok.cpu().double(), torch.tensor(token_adv, dtype=torch.float64), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Properties of the paper's math, on both implementations
# ---------------------------------------------------------------------------------------------

IMPLS = ["reference", "triton"]
props = settings(deadline=None, max_examples=15)


@pytest.mark.parametrize("impl", IMPLS)
@props
@given(batch=ragged_batch())
def test_trajectory_sum_of_step_rewards_is_trajectory_logratio(batch, impl):
    # paper Eq. 2 (E2): Q(τ) = Σ_t r_t = β·(Σ log π_φ − Σ log π_θold) over the trajectory's tokens.
    r = kernels.step_logratio(batch.prm_logp, batch.old_logp, batch.step_cu, BETA, impl=impl).double()
    tok_lo = batch.step_cu[batch.traj_cu[:-1]].tolist()
    tok_hi = batch.step_cu[batch.traj_cu[1:]].tolist()
    diff = (batch.prm_logp.double() - batch.old_logp.double())
    for i in range(batch.N):
        q = r[batch.traj_cu[i]:batch.traj_cu[i + 1]].sum().item()
        assert q == pytest.approx(BETA * diff[tok_lo[i]:tok_hi[i]].sum().item(), abs=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@props
@given(batch=ragged_batch())
def test_prm_equal_to_old_policy_gives_zero_rewards(batch, impl):
    r = kernels.step_logratio(batch.prm_logp, batch.prm_logp.clone(), batch.step_cu, BETA, impl=impl)
    torch.testing.assert_close(r, torch.zeros_like(r), atol=0, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@props
@given(batch=ragged_batch(), step=st.integers(0, 10**6))
def test_step_rewards_do_not_leak_across_step_boundaries(batch, impl, step):
    s = step % batch.S
    before = kernels.step_logratio(batch.prm_logp, batch.old_logp, batch.step_cu, BETA, impl=impl)
    prm = batch.prm_logp.clone()
    prm[batch.step_cu[s]:batch.step_cu[s + 1]] += 1.0                      # perturb step s only
    after = kernels.step_logratio(prm, batch.old_logp, batch.step_cu, BETA, impl=impl)
    others = torch.arange(batch.S, device=DEVICE) != s
    # exact, except the reference on CUDA: index_add accumulates there with atomics, in no fixed order,
    # so two identical calls may differ in the last bit (seen on an H200: 7e-9 on a 40-token step)
    exact = impl == "triton" or DEVICE == "cpu"
    torch.testing.assert_close(after[others], before[others], atol=0 if exact else 1e-6, rtol=0 if exact else 1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@props
@given(batch=ragged_batch())
@edge_cases()
def test_alpha_zero_gives_episode_adv_on_every_token(batch, impl):
    token_adv, _ = kernels.segment_normalize(*batch.seg_args(), 0.0, impl=impl)
    traj_of_token = torch.repeat_interleave(torch.arange(batch.N, device=DEVICE),
                                            batch.step_cu[batch.traj_cu].diff())   # (T,)
    torch.testing.assert_close(token_adv, batch.episode_adv[traj_of_token], atol=0, rtol=0)


def _dyadic_rewards(batch):  # multiples of 1/4: sums and shifts of them are exact in fp32
    return (torch.round(batch.step_reward * 4) / 4)


@pytest.mark.parametrize("impl", IMPLS)
@props
@given(batch=ragged_batch(), shifts=st.lists(st.integers(-400, 400), min_size=20, max_size=20))
def test_step_adv_is_shift_invariant_per_group(batch, impl, shifts):
    r = _dyadic_rewards(batch)
    group_of_step = torch.repeat_interleave(torch.arange(batch.M, device=DEVICE),
                                            batch.traj_cu[batch.group_cu].diff())  # (S,)
    shifted = r + (torch.tensor(shifts, device=DEVICE, dtype=torch.float32) / 4)[group_of_step]
    _, a = kernels.segment_normalize(*batch.seg_args(r), 1.0, impl=impl)
    _, b = kernels.segment_normalize(*batch.seg_args(shifted), 1.0, impl=impl)
    torch.testing.assert_close(b, a, atol=0, rtol=0)   # exact: dyadic values, shifted-data algorithm


@pytest.mark.parametrize("impl", IMPLS)
@props
@given(batch=ragged_batch(), c=st.floats(0.1, 10.0))
def test_step_adv_is_scale_invariant(batch, impl, c):
    # (c·r − c·μ) / (c·σ + c·ε) = A^S: scaling ε with the rewards puts ε aside exactly.
    r = _dyadic_rewards(batch)
    _, a = kernels.segment_normalize(*batch.seg_args(r), 1.0, 1e-6, impl=impl)
    _, b = kernels.segment_normalize(*batch.seg_args(c * r), 1.0, c * 1e-6, impl=impl)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@props
@given(batch=ragged_batch())
@edge_cases()
def test_equal_rewards_in_a_group_give_zero_step_adv_not_nan(batch, impl):
    group_of_step = torch.repeat_interleave(torch.arange(batch.M, device=DEVICE),
                                            batch.traj_cu[batch.group_cu].diff())  # (S,)
    r = (torch.randn(batch.M, device=DEVICE) * 7 + 0.1)[group_of_step]             # one value per group
    token_adv, step_adv = kernels.segment_normalize(*batch.seg_args(r), 1.0, impl=impl)
    torch.testing.assert_close(step_adv, torch.zeros_like(step_adv), atol=0, rtol=0)
    assert torch.isfinite(token_adv).all()


@pytest.mark.parametrize("impl", IMPLS)
@props
@given(batch=ragged_batch(), group=st.integers(0, 10**6), seed=st.integers(0, 1000))
def test_nothing_leaks_across_group_boundaries(batch, impl, group, seed):
    g = group % batch.M
    lo, hi = batch.group_steps(g)
    t_lo, t_hi = batch.step_cu[lo].item(), batch.step_cu[hi].item()
    r = batch.step_reward.clone()
    r[lo:hi] = torch.randn(hi - lo, generator=torch.Generator().manual_seed(seed)).to(DEVICE) * 5 + 3
    tok_a, step_a = kernels.segment_normalize(*batch.seg_args(), 1.0, impl=impl)
    tok_b, step_b = kernels.segment_normalize(*batch.seg_args(r), 1.0, impl=impl)
    keep_s = torch.ones(batch.S, dtype=torch.bool, device=DEVICE)
    keep_s[lo:hi] = False
    keep_t = torch.ones(batch.T, dtype=torch.bool, device=DEVICE)
    keep_t[t_lo:t_hi] = False
    torch.testing.assert_close(step_b[keep_s], step_a[keep_s], atol=0, rtol=0)
    torch.testing.assert_close(tok_b[keep_t], tok_a[keep_t], atol=0, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_int32_and_int64_offsets_agree(impl):
    b = EQUAL
    i32 = {k: getattr(b, k).to(torch.int32) for k in ("step_cu", "traj_cu", "group_cu")}
    r64 = kernels.step_logratio(b.prm_logp, b.old_logp, b.step_cu, BETA, impl=impl)
    r32 = kernels.step_logratio(b.prm_logp, b.old_logp, i32["step_cu"], BETA, impl=impl)
    torch.testing.assert_close(r32, r64, atol=0, rtol=0)
    out64 = kernels.segment_normalize(*b.seg_args(), 1.0, impl=impl)
    out32 = kernels.segment_normalize(b.step_reward, b.episode_adv, i32["step_cu"], i32["traj_cu"], i32["group_cu"],
                                      1.0, impl=impl)
    for x, y in zip(out32, out64):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_segment_normalize_detaches_inputs_that_require_grad(impl):
    r = EQUAL.step_reward.clone().requires_grad_()
    e = EQUAL.episode_adv.clone().requires_grad_()
    token_adv, step_adv = kernels.segment_normalize(*EQUAL.seg_args(r, e), 1.0, impl=impl)
    assert not token_adv.requires_grad and not step_adv.requires_grad


# ---------------------------------------------------------------------------------------------
# Bad arguments raise ValueError naming the argument; dispatch
# ---------------------------------------------------------------------------------------------

def _t(values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype, device=DEVICE)


_LOGP = torch.zeros(6, device=DEVICE)
_SL_OK = dict(prm_logp=_LOGP, old_logp=_LOGP, step_cu=_t([0, 2, 6]), beta=BETA)
_SN_OK = dict(step_reward=torch.zeros(3, device=DEVICE), episode_adv=torch.zeros(2, device=DEVICE),
              step_cu=_t([0, 2, 2, 6]), traj_cu=_t([0, 2, 3]), group_cu=_t([0, 2]), alpha=1.0)


@pytest.mark.parametrize("op, bad, name", [
    ("sl", dict(old_logp=torch.zeros(5)), "old_logp"),                        # mismatched lengths
    ("sl", dict(prm_logp=torch.zeros(6, 1)), "prm_logp"),                     # not 1-D
    ("sl", dict(step_cu=_t([0, 4, 2, 6])), "step_cu"),                        # non-monotone
    ("sl", dict(step_cu=_t([0, 2, 5])), "step_cu"),                           # does not end at T
    ("sl", dict(step_cu=_t([1, 2, 6])), "step_cu"),                           # does not start at 0
    ("sl", dict(step_cu=_t([0, 2, 6], torch.float32)), "step_cu"),            # float offsets
    ("sn", dict(step_cu=_t([0, 2, 6])), "step_cu"),                           # length != S + 1
    ("sn", dict(step_cu=_t([0, 3, 2, 6])), "step_cu"),                        # non-monotone
    ("sn", dict(traj_cu=_t([0, 2, 2])), "traj_cu"),                           # empty trajectory, not ending at S
    ("sn", dict(traj_cu=_t([0, 3, 3])), "traj_cu"),                           # empty trajectory
    ("sn", dict(group_cu=_t([0, 1])), "group_cu"),                            # does not end at N
    ("sn", dict(group_cu=_t([0, 2], torch.float64)), "group_cu"),             # float offsets
    ("sn", dict(episode_adv=_t([0, 0])), "episode_adv"),                      # integer values
], ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_raises_value_error_naming_the_argument(op, bad, name, impl):
    fn, kwargs = (kernels.step_logratio, _SL_OK) if op == "sl" else (kernels.segment_normalize, _SN_OK)
    fn(**kwargs, impl=impl)  # the unmodified arguments are valid
    bad = {k: v.to(DEVICE) for k, v in bad.items()}
    with pytest.raises(ValueError, match=name):
        fn(**{**kwargs, **bad}, impl=impl)


def test_dispatch_follows_argument_then_set_impl_then_env(monkeypatch):
    calls = []
    monkeypatch.setattr(sl, "step_logratio_triton", lambda *a: calls.append("triton") or torch.zeros(2))
    monkeypatch.setattr(sl, "step_logratio_reference", lambda *a: calls.append("reference") or torch.zeros(2))
    args = (_LOGP.cpu(), _LOGP.cpu(), _t([0, 2, 6]).cpu(), BETA)
    monkeypatch.delenv("ISTAR_KERNELS", raising=False)
    sl.step_logratio(*args)                                   # CPU tensors, nothing forced: reference
    monkeypatch.setenv("ISTAR_KERNELS", "triton")
    sl.step_logratio(*args)                                   # env
    kernels.set_impl("reference")
    try:
        sl.step_logratio(*args)                               # set_impl beats env
        sl.step_logratio(*args, impl="triton")                # the argument beats set_impl
    finally:
        kernels.set_impl(None)
    assert calls == ["reference", "triton", "reference", "triton"]
    with pytest.raises(ValueError, match="impl"):
        sl.step_logratio(*args, impl="cuda")


def test_kernels_package_shares_its_name_with_hub_kernels():
    """transformers >= 5.25 imports Hugging Face's hub-kernels package, also called `kernels`, during
    `import transformers`; run from this repository that name is this package, which serves both."""
    import subprocess
    import sys

    code = ("import importlib.metadata as md, transformers.activations\n"  # transformers first, as model.py
            "from transformers import LlamaForCausalLM\n"
            "import kernels\n"
            "assert kernels.step_logratio.__module__ == 'kernels.step_logratio'\n"
            "try:\n    md.distribution('kernels')\nexcept md.PackageNotFoundError:\n    print('no hub kernels installed')\n"
            "else:\n    print('hub kernels:', kernels.CUDAProperties.__module__)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        kernels.no_such_name
