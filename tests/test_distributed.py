"""torchrun data parallelism on CPU (gloo): K ranks take the same optimiser steps as one process.

Every run here is the real entry point in a subprocess, ranks started by `python -m torch.distributed.run`
on 127.0.0.1 with a free port. Sizes are the tiny preset (2 iterations, 4 tasks x 2 rollouts).

Tolerance: a handful of weights whose gradients are ~1e-9 move by Adam's ε-dominated step, where
summation-order noise is visible; so weights are compared to a tenth of how far training moved them.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--env", "sokoban", "--preset", "tiny", "--max-steps", "4", "--kernels", "reference", "--tasks-per-iter", "4",
        "--algo", "reinforce++", "--scale-step-rewards", "true", "--eval-every", "0"]  # batch-wide statistics on purpose
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], ranks: int = 0, script: str = "train.py") -> str:
    """``python script argv`` as one plain process (ranks=0) or under torchrun with ``ranks`` ranks."""
    launcher = [] if not ranks else ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                                     "--master_addr", "127.0.0.1", f"--master_port={_port()}"]
    proc = subprocess.run([sys.executable, *launcher, script, *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def rows(run_dir: Path) -> dict:
    return {r["iteration"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def assert_same_weights(a: dict, b: dict, start: dict) -> None:
    for name in a:
        moved = (a[name] - start[name]).abs().max().item()
        diff = (a[name] - b[name]).abs().max().item()
        assert diff <= 0.1 * moved + 1e-7, f"{name}: ranks differ by {diff:.2e}, training moved it by {moved:.2e}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run([*ARGS, "--out-dir", str(out), "--run-name", "one"])
    run([*ARGS, "--out-dir", str(out), "--run-name", "two"], ranks=2)
    return out


def _load(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)


def test_two_ranks_take_the_same_steps_as_one_process(runs):
    one, two = _load(runs / "one"), _load(runs / "two")
    start = {k: v for k, v in one["prm"].items()}  # no DPO pair at this size: the PRM stays the warm-started policy
    assert one["iteration"] == two["iteration"] == 2 and one["env_steps"] == two["env_steps"]
    assert_same_weights(one["policy"], two["policy"], start)
    assert max((one["policy"][n] - start[n]).abs().max().item() for n in start) > 1e-5  # training did move them
    ra, rb = rows(runs / "one"), rows(runs / "two")
    assert sorted(ra) == sorted(rb) == [0, 1, 2]
    for it in (1, 2):  # all-reduced / gathered metrics equal the one-process ones
        for key in ("env/return", "env/steps", "adv/episode_std", "adv/token_std", "policy/grad_norm", "prm/reward_std"):
            assert ra[it][key] == pytest.approx(rb[it][key], rel=1e-4, abs=1e-6), (it, key)


def test_a_two_rank_checkpoint_resumes_on_one_rank_and_under_fsdp(runs):
    for name in ("one", "two"):
        run(["--resume", str(runs / name), "--iterations", "3"])
    one, two = _load(runs / "one"), _load(runs / "two")
    assert one["iteration"] == two["iteration"] == 3
    assert_same_weights(one["policy"], two["policy"], one["prm"])
    assert sorted(rows(runs / "two")) == [0, 1, 2, 3]
    # --fsdp on 2 ranks: full-state checkpoints in the same format, same weights as one process
    run([*ARGS, "--out-dir", str(runs), "--run-name", "fsdp", "--iterations", "3", "--fsdp"], ranks=2)
    fsdp = _load(runs / "fsdp")
    assert fsdp["policy"].keys() == one["policy"].keys() and fsdp["policy_opt"]["state"].keys() == one["policy_opt"]["state"].keys()
    assert_same_weights(one["policy"], fsdp["policy"], one["prm"])


def test_prm_and_policy_updates_with_pairs_are_the_same_on_two_ranks(runs, tmp_path):
    """One istar_update on a fixed batch with DPO pairs: the global pair count and batch statistics."""
    run([str(runs / "one"), str(tmp_path / "k1.pt")], script="tests/test_distributed.py")
    run([str(runs / "one"), str(tmp_path / "k2.pt")], ranks=2, script="tests/test_distributed.py")
    a, b = torch.load(tmp_path / "k1.pt", weights_only=False), torch.load(tmp_path / "k2.pt", weights_only=False)
    assert a["stats"]["prm/num_pairs"] == b["stats"]["prm/num_pairs"] == 4 and a["stats"]["prm/updated"] == 1.0
    for key in ("prm/dpo_loss", "prm/acc", "prm/margin", "adv/episode_std", "prm/reward_mean"):
        assert a["stats"][key] == pytest.approx(b["stats"][key], rel=1e-4, abs=1e-6), key
    for model in ("policy", "prm"):
        assert_same_weights(a[model], b[model], a["start"])


def test_per_task_generators_make_a_task_independent_of_its_batch_mates(runs):
    from envs import make_env
    from model import load_model
    from rollout import rollout

    policy, tok = load_model(str(runs / "one" / "policy"))
    make = lambda: make_env("sokoban", max_steps=3)  # noqa: E731
    gens = lambda seeds: [torch.Generator().manual_seed(100 + s) for s in seeds]  # noqa: E731
    kw = dict(temperature=1.0, max_action_tokens=12, max_context=512)
    both = rollout(policy, tok, make, [7, 8], 2, generator=gens([7, 8]), **kw)
    alone = rollout(policy, tok, make, [8], 2, generator=gens([8]), **kw)
    assert [t.actions for t in both[2:]] == [t.actions for t in alone]
    torch.testing.assert_close(torch.tensor(both[2].logp), torch.tensor(alone[0].logp), atol=1e-5, rtol=1e-5)


def _update_worker(run_dir: str, out: str) -> None:
    """Rank body of the pairs test: roll out 4 tasks (this rank's share), mark the first rollout of each
    group as won, run one istar_update, and save the weights from rank 0."""
    import distributed
    from config import parse_config
    from envs import make_env
    from istar import istar_update
    from model import clone_model, load_model
    from rollout import pack, rollout

    device = distributed.setup(torch.device("cpu"))
    cfg, _ = parse_config([*ARGS, "--minibatches", "3", "--micro-batch", "1", "--prm-lr", "1e-3"])
    policy, tok = load_model(str(Path(run_dir) / "policy"))
    prm = clone_model(policy)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    seeds = [11, 12, 13, 14]
    lo, hi = distributed.shard(len(seeds))
    gens = distributed.task_generators(seeds, (0, 1), device)[lo:hi]
    trajs = rollout(policy, tok, lambda: make_env("sokoban", max_steps=3), seeds[lo:hi], 2, generator=gens, max_action_tokens=12, max_context=512)
    for i, t in enumerate(trajs):
        t.won = i % 2 == 0  # one pair per group
    batch = pack(trajs, device, tok.pad_token_id)
    opts = [torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0) for m, lr in ((policy, 1e-3), (prm, cfg.prm_lr))]
    stats = istar_update(policy, prm, opts[0], opts[1], batch, cfg, None, torch.Generator().manual_seed(0))
    if distributed.is_main():
        torch.save({"policy": policy.state_dict(), "prm": prm.state_dict(), "start": start, "stats": stats}, out)
    distributed.teardown()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _update_worker(sys.argv[1], sys.argv[2])
