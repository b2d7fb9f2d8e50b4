"""Packing rolled-out trajectories into tensors: ``Batch`` and ``pack``.

``rollout.rollout`` returns ``Trajectory`` objects (Python lists, one per episode); every later
step of the iStar loop (paper Algorithm 1; paper.md "The loop") works on the tensors built here:
the PRM's implicit step rewards (paper Eq. 1, paper.md E1) sum log-ratios over ``step_cu``
segments, the trajectory DPO loss (paper Eq. 2, paper.md E3) pairs trajectories inside
``group_cu`` groups, the episode and step advantages (paper Eqs. 3-5, paper.md E5-E7) normalise
over groups and broadcast over steps, and the PPO update (paper Eq. 6, paper.md E8) compares new
log-probs with ``old_logp``.

Layout: a trajectory owns one or more consecutive rows (rollout.py's history window starts a
new row when the context is full). Rows are right-padded; ``action_mask`` marks the generated
action tokens, and the packed order of action tokens (``old_logp``, ``step_cu``) is row-major
over ``action_mask``, the order ``model.token_logprobs`` returns. Ragged boundaries are offsets
(``*_cu``, starting at 0), as the kernels expect.

Shape vocabulary: N trajectories, M groups, G group size, R rows, L padded row length,
S steps (all trajectories), T action tokens (all steps).

References:
  1) iStar, https://arxiv.org/abs/2509.19199 (Algorithm 1; paper.md "The loop", E1, E3, E5-E8)
  2) ``cu_seqlens`` offsets for ragged batches, as in flash-attention's varlen API,
     https://github.com/Dao-AILab/flash-attention
Deviations from the paper: none here (rows per trajectory: see rollout.py, deviation 1).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # rollout.py re-exports this module's names, so import it for annotations only
    from rollout import Trajectory


@dataclass
class Batch:
    """Trajectories as tensors. Rows are right-padded; the packed order of action tokens (``old_logp``,
    ``step_cu``) is row-major over ``action_mask``, the order ``model.token_logprobs`` returns."""

    input_ids: torch.Tensor  # (R, L) int64, right-padded with pad_id
    attention_mask: torch.Tensor  # (R, L) int64
    action_mask: torch.Tensor  # (R, L) bool, True on generated action tokens
    row_traj: torch.Tensor  # (R,) int64 trajectory of each row
    row_cu: torch.Tensor  # (N+1,) int64 offsets of each trajectory's rows into R
    old_logp: torch.Tensor  # (T,) float32 sampling-time log π_θold of each action token
    step_cu: torch.Tensor  # (S+1,) int64 offsets of each step's action tokens into T
    traj_cu: torch.Tensor  # (N+1,) int64 offsets of each trajectory's steps into S
    group_cu: torch.Tensor  # (M+1,) int64 offsets of each group's trajectories into N
    group_id: torch.Tensor  # (N,) int64 group of each trajectory (its index in task_seeds)
    step_env_reward: torch.Tensor  # (S,) float32
    step_valid: torch.Tensor  # (S,) bool
    step_optimal: torch.Tensor  # (S,) int8 env's ground-truth step label: 1 good, 0 not, -1 unknown (credit.py)
    outcome: torch.Tensor  # (N,) float32 outcome reward R = episode return
    won: torch.Tensor  # (N,) bool
    score: torch.Tensor  # (N,) float32 env score of the final step
    num_steps: torch.Tensor  # (N,) int64
    task_seed: torch.Tensor  # (N,) int64

    @property
    def num_traj(self) -> int:
        return self.outcome.shape[0]

    def to(self, device) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, traj_indices) -> "Batch":
        """The sub-batch of trajectories ``traj_indices`` (in that order), re-offset and re-trimmed.
        Groups are re-derived as runs of equal ``group_id``, so a group split by the selection's order
        counts as two groups."""
        idx = torch.as_tensor(traj_indices, dtype=torch.long, device=self.outcome.device).flatten()  # (n,)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_traj):
            raise IndexError(f"Batch.select: trajectory indices must lie in [0, {self.num_traj})")
        rows = _ranges(self.row_cu[idx], self.row_cu[idx + 1])  # (r,)
        steps = _ranges(self.traj_cu[idx], self.traj_cu[idx + 1])  # (s,)
        tokens = _ranges(self.step_cu[steps], self.step_cu[steps + 1])  # (t,)
        width = int(self.attention_mask[rows].sum(1).max()) if rows.numel() else 0
        n_rows = self.row_cu[idx + 1] - self.row_cu[idx]  # (n,)
        return Batch(
            input_ids=self.input_ids[rows, :width], attention_mask=self.attention_mask[rows, :width],
            action_mask=self.action_mask[rows, :width],
            row_traj=torch.repeat_interleave(torch.arange(idx.numel(), device=idx.device), n_rows),
            row_cu=_offsets(n_rows), old_logp=self.old_logp[tokens],
            step_cu=_offsets(self.step_cu[steps + 1] - self.step_cu[steps]),
            traj_cu=_offsets(self.traj_cu[idx + 1] - self.traj_cu[idx]),
            group_cu=_runs(self.group_id[idx]), group_id=self.group_id[idx],
            step_env_reward=self.step_env_reward[steps], step_valid=self.step_valid[steps],
            step_optimal=self.step_optimal[steps],
            outcome=self.outcome[idx], won=self.won[idx], score=self.score[idx],
            num_steps=self.num_steps[idx], task_seed=self.task_seed[idx])


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    """(K,) lengths -> (K+1,) int64 cumulative offsets starting at 0."""
    return F.pad(lengths.long().cumsum(0), (1, 0))


def _ranges(starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(starts[i], ends[i]) without a Python loop."""
    lengths = ends - starts  # (K,)
    shift = torch.repeat_interleave(starts - _offsets(lengths)[:-1], lengths)  # (sum,)
    return shift + torch.arange(int(lengths.sum()), device=starts.device)


def _runs(group_id: torch.Tensor) -> torch.Tensor:
    """(N,) group ids -> (M+1,) offsets of runs of equal consecutive ids."""
    if group_id.numel() == 0:
        return torch.zeros(1, dtype=torch.long, device=group_id.device)
    _, counts = torch.unique_consecutive(group_id, return_counts=True)
    return _offsets(counts)


def _labels(trajectories) -> torch.Tensor:
    """(S,) int8 step labels; a trajectory built without them (tests, other envs) gets −1 (unknown)."""
    return torch.tensor([x for t in trajectories for x in (t.step_optimal or [-1] * len(t.step_rewards))], dtype=torch.int8)


def pack(trajectories: list[Trajectory], device=None, pad_id: int = 0) -> Batch:
    """Stack trajectories into a right-padded ``Batch`` (shape vocabulary in the module docstring)."""
    if not trajectories:
        raise ValueError("pack(trajectories=[]): expected at least one trajectory")
    rows, masks, row_counts = [], [], []
    for i, t in enumerate(trajectories):
        n_act = sum(sum(m) for m in t.action_masks)
        if (not (n_act == len(t.logp) == sum(t.step_lengths)) or len(t.step_lengths) != len(t.step_rewards)
                or (t.step_optimal and len(t.step_optimal) != len(t.step_rewards))):
            raise ValueError(f"pack: trajectory {i} is inconsistent: {n_act} masked tokens, {len(t.logp)} log-probs, "
                             f"{sum(t.step_lengths)} step tokens, {len(t.step_rewards)} rewards, "
                             f"{len(t.step_optimal)} step labels")
        rows += t.rows
        masks += t.action_masks
        row_counts.append(len(t.rows))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (R, L)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (R, L)
    action_mask = torch.zeros((len(rows), width), dtype=torch.bool)  # (R, L)
    for r, (ids, m) in enumerate(zip(rows, masks)):
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, :len(ids)] = 1
        action_mask[r, :len(ids)] = torch.tensor(m, dtype=torch.bool)
    n_rows = torch.tensor(row_counts)
    col = lambda name, dtype: torch.tensor([getattr(t, name) for t in trajectories], dtype=dtype)  # noqa: E731
    flat = lambda name, dtype: torch.tensor([x for t in trajectories for x in getattr(t, name)],  # noqa: E731
                                            dtype=dtype)
    group_id = col("group_id", torch.long)
    batch = Batch(
        input_ids=input_ids, attention_mask=attention_mask, action_mask=action_mask,
        row_traj=torch.repeat_interleave(torch.arange(len(trajectories)), n_rows), row_cu=_offsets(n_rows),
        old_logp=flat("logp", torch.float32), step_cu=_offsets(flat("step_lengths", torch.long)),
        traj_cu=_offsets(col("num_steps", torch.long)), group_cu=_runs(group_id), group_id=group_id,
        step_env_reward=flat("step_rewards", torch.float32), step_valid=flat("step_valid", torch.bool),
        step_optimal=_labels(trajectories),
        outcome=col("outcome", torch.float32), won=col("won", torch.bool), score=col("score", torch.float32),
        num_steps=col("num_steps", torch.long), task_seed=col("task_seed", torch.long))
    return batch.to(device) if device is not None else batch
