"""Fused Triton kernels for iStar's two ragged per-step ops, each with a pure-torch reference.

    step_logratio       implicit step rewards r_s = β·Σ_{t∈s}(log π_φ − log π_θold)   paper Eq. 1 (E1)
    segment_normalize   step advantages A^S (group-standardised r) and token advantages
                        A_t = A^E + α·A^S                                             paper Eqs. 4-5 (E6, E7)

Packed layout (produced by the rollout code; everything flat, groups contiguous):

    N trajectories in M groups (a group = the G rollouts of one task; group sizes may differ,
    a group of 1 is allowed), S steps in total, T action tokens in total.

    prm_logp, old_logp  (T,)   fp32 or bf16 log-probs of the ACTION tokens only (observation and
                               prompt tokens are never included), step after step, trajectory
                               after trajectory.
    step_reward         (S,)   one implicit reward per step (output of step_logratio).
    episode_adv         (N,)   one episode-level advantage A^E per trajectory (paper Eq. 3 / E5).
    step_cu             (S+1,) int32/int64 offsets into T: step s owns tokens
                               [step_cu[s], step_cu[s+1]); a step may own 0 tokens (its sum is 0).
    traj_cu             (N+1,) offsets into the S steps: trajectory i owns steps
                               [traj_cu[i], traj_cu[i+1]); every trajectory has >= 1 step.
    group_cu            (M+1,) offsets into the N trajectories: group g owns trajectories
                               [group_cu[g], group_cu[g+1]); every group has >= 1 trajectory.

    Example: 2 groups [[τ0, τ1], [τ2]], τ0 = 2 steps of 3 and 1 tokens, τ1 = 1 step of 0 tokens,
    τ2 = 1 step of 2 tokens -> step_cu = [0, 3, 4, 4, 6], traj_cu = [0, 2, 3, 4], group_cu = [0, 2, 3].

Dispatch: each public op takes impl in {None, "triton", "reference"}. None means set_impl(...)'s
choice, else $ISTAR_KERNELS ("triton" / "reference" / "auto"), else Triton iff the inputs are on
CUDA. On CPU the Triton path runs under Triton's interpreter when TRITON_INTERPRET=1 is set before
triton is first imported (tests/conftest.py does so). Importing this package never touches a GPU.
"""
import importlib.metadata
from pathlib import Path

from kernels._common import set_impl
from kernels.segment_normalize import segment_normalize, segment_normalize_reference
from kernels.step_logratio import step_logratio, step_logratio_reference

__all__ = ["step_logratio", "step_logratio_reference", "segment_normalize",
           "segment_normalize_reference", "set_impl"]

# -- Sharing the name with Hugging Face's `kernels` ------------------------------------------------
# transformers >= 5.25 depends on Hugging Face's hub-kernels package, also named `kernels`, and
# imports it (`from kernels import CUDAProperties, ...`) during `import transformers`. Run from
# this repository, `kernels` is this package, so this package serves that import as well: the
# installed package's folder joins __path__ (its submodules, kernels._internals.* and
# kernels._rust, share no name with ours) and its top-level names are loaded on first access.
# Without the installed package (older transformers) nothing here runs.


def _hub_kernels_dir() -> Path | None:
    try:
        found = Path(importlib.metadata.distribution("kernels").locate_file("kernels"))
    except importlib.metadata.PackageNotFoundError:
        return None
    ours = Path(__file__).resolve().parent
    return found if (found / "__init__.py").is_file() and found.resolve() != ours else None


_HUB_DIR = _hub_kernels_dir()
if _HUB_DIR is not None:
    __path__.append(str(_HUB_DIR))
_hub_names: dict | None = None


def __getattr__(name: str):
    """A name this package lacks: the installed hub-kernels package's, if there is one."""
    global _hub_names
    if _HUB_DIR is None or name.startswith("__"):
        raise AttributeError(f"module 'kernels' (istar's Triton kernels) has no attribute {name!r}")
    if _hub_names is None:
        _hub_names = {"__name__": __name__, "__package__": __name__}
        init = _HUB_DIR / "__init__.py"
        exec(compile(init.read_text(), str(init), "exec"), _hub_names)  # its own imports resolve through __path__
    if name not in _hub_names:
        raise AttributeError(f"module 'kernels' (istar's Triton kernels, and {_HUB_DIR}) has no attribute {name!r}")
    return _hub_names[name]
