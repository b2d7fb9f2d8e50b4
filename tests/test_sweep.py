"""sweep.py: the variant grammar, the summary table's numbers, and a real 2-run sweep on CPU."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from config import parse_config
from sweep import child_threads, job_args, summarise, variant_args

ROOT = Path(__file__).resolve().parents[1]


def test_variants():
    assert variant_args("rloo+istar") == ["--algo", "rloo", "--istar"]
    assert variant_args("reinforce++") == ["--algo", "reinforce++", "--no-istar"]
    for bad in ("ppo", "grpo+prime", "rloo+"):
        with pytest.raises(ValueError, match="--variants"):
            variant_args(bad)


def test_bad_sweep_arguments_fail_before_any_run_starts(tmp_path):
    from sweep import main
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match="--lr"):  # a train.py flag every run would refuse
        main(["--variants", "rloo,grpo+istar", "--out", str(out), "--", "--lr", "-1"])
    with pytest.raises(SystemExit):  # argparse: "--seeds: expected comma-separated integers"
        main(["--variants", "rloo", "--seeds", "0,one", "--out", str(out)])
    assert not out.exists()


def _fake_run(root: Path, name: str, algo: str, istar: bool, success: list[float], steps_per_iter: int, evals: tuple):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"algo": algo, "istar": istar}))
    rows = [{"iteration": 0, "env_steps": 0, "eval/success_greedy": 0.0, "eval/success_sampled": 0.0, "eval/expert_prob": 0.25}]
    rows += [{"iteration": i + 1, "env_steps": (i + 1) * steps_per_iter, "env/success": s, "credit/adv_auc": 0.5 + s / 4}
             for i, s in enumerate(success)]
    rows[-1].update({"eval/success_greedy": evals[0], "eval/success_sampled": evals[1], "eval/expert_prob": 0.25 + evals[0] / 2})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def test_each_run_gets_a_share_of_the_cores_unless_the_caller_sets_omp_num_threads(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert child_threads(4, environ={}) == "4"
    assert child_threads(9, environ={}) == "1"
    assert child_threads(32, environ={}) == "1"
    assert child_threads(4, environ={"OMP_NUM_THREADS": "1"}) == "1"
    assert child_threads(1, environ={"OMP_NUM_THREADS": "3"}) == "3"


def test_summary_numbers(tmp_path):
    dirs = [_fake_run(tmp_path, "a0", "rloo", True, [0.0, 0.5, 1.0, 1.0], 100, (0.5, 0.25)),
            _fake_run(tmp_path, "a1", "rloo", True, [0.0, 0.0, 0.5, 1.0], 100, (0.75, 0.25)),
            _fake_run(tmp_path, "b0", "grpo", False, [0.0, 0.0, 0.0, 0.2, 0.2], 50, (0.0, 0.1))]
    table = summarise(dirs, threshold=0.5, window=1)
    lines = table.splitlines()
    assert "at 250 env steps" in lines[0]  # the smallest budget: run b0's 5 x 50 steps
    grpo = next(x for x in lines if x.startswith("| GRPO |"))
    rloo = next(x for x in lines if x.startswith("| RLOO w/ iStar |"))
    # RLOO runs at 250 steps: a0 interpolates 0.5..1.0 -> 0.75, a1 0.0..0.5 -> 0.25: mean 0.5 ± 0.25
    # credit AUC 0.5 + success/4 per iteration: a0 mean success 0.625 -> 0.65625, a1 0.375 -> 0.59375
    # expert-action probability 0.25 before RL, 0.25 + greedy / 2 at the end: a0 0.5, a1 0.625
    assert rloo.split("|")[2:10] == [" 2 ", " 0.625 ± 0.125 ", " 0.250 ± 0.000 ", " 0.500 ± 0.250 ",
                                     " 1.000 ± 0.000 ", " 250 ± 50 (2/2 reached) ", " 0.625 ± 0.031 ",
                                     " 0.250 ± 0.000 → 0.562 ± 0.062 "]
    assert grpo.split("|")[2:10] == [" 1 ", " 0.000 ", " 0.100 ", " 0.200 ", " 0.200 ", " - (0/1 reached) ", " 0.520 ",
                                     " 0.250 → 0.250 "]


def test_reaching_a_level_needs_a_full_window():
    """One lucky first iteration does not reach a level the run never holds over ``window`` iterations;
    a run shorter than the window is judged on all its iterations."""
    from sweep import _reach
    steps = np.arange(1, 7) * 100.0
    assert _reach(steps, np.array([0.9, 0.0, 0.0, 0.0, 0.0, 0.0]), 0.5, 5) is None
    assert _reach(steps, np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]), 0.5, 3) == 300.0  # mean of 0, 1, 1 first ≥ 0.5
    assert _reach(steps[:2], np.array([0.4, 0.8]), 0.5, 5) == 200.0 and _reach(steps[:2], np.array([0.9, 0.0]), 0.5, 5) is None


def test_a_real_sweep_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "sweep.py", "--variants", "rloo+istar,grpo", "--seeds", "0", "--parallel", "2",
           "--out", str(out), "--", "--preset", "tiny", "--iterations", "1", "--eval-every", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = (out / "results.md").read_text()
    assert "| RLOO w/ iStar | 1 |" in table and "| GRPO | 1 |" in table
    assert (out / "curves.png").stat().st_size > 1000
    assert json.loads((out / "rloo+istar-s0" / "config.json").read_text())["istar"] is True
    assert json.loads((out / "grpo-s0" / "config.json").read_text())["istar"] is False


def test_rerunning_a_sweep_keeps_finished_runs_and_resumes_interrupted_ones(tmp_path):
    args = ["--env", "sokoban", "--algo", "grpo", "--no-istar", "--seed", "1", "--preset", "tiny"]
    run = tmp_path / "grpo-s1"
    assert job_args(run, args) == args  # never started
    run.mkdir()
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(parse_config(args)[0]), indent=1))
    (run / "metrics.jsonl").write_text("{}\n")
    assert job_args(run, args) == args and not run.exists()  # stopped before a checkpoint: cleared, started again
    run.mkdir()
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(parse_config(args)[0]), indent=1))
    (run / "checkpoint.pt").write_bytes(b"")
    assert job_args(run, args) == ["--resume", str(run)]
    (run / "summary.json").write_text('{"stopped": "signal"}')
    assert job_args(run, args) == ["--resume", str(run)]  # ended early on request (train.py GracefulStop): continue
    (run / "summary.json").write_text("{}")
    assert job_args(run, args) is None  # finished
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.0001 -> 0.001\)"):
        job_args(run, [*args, "--lr", "1e-3"])


def test_a_deadline_cuts_runs_that_have_not_begun_and_the_table_names_the_stopped(tmp_path, capsys):
    from sweep import main

    out = tmp_path / "sw"
    with pytest.raises(SystemExit, match="no run of .* finished an iteration"):  # deadline at once: both runs cut
        main(["--variants", "rloo+istar,grpo", "--seeds", "0", "--parallel", "2", "--out", str(out),
              "--deadline-min", "1e-6", "--", "--preset", "tiny"])
    assert "cut by the deadline before its first iteration" in capsys.readouterr().out
    a = _fake_run(out, "ra", "rloo", True, [0.0, 0.5], 100, (0.5, 0.25))
    (a / "summary.json").write_text('{"stopped": "signal"}')
    _fake_run(out, "gb", "grpo", False, [0.0, 0.25], 100, (0.0, 0.1))
    main(["--summarise", str(out)])
    table = (out / "results.md").read_text()
    assert "| RLOO w/ iStar | 1 |" in table and "| GRPO | 1 |" in table
    assert "Stopped by the deadline before their last iteration (the same command continues them): ra" in table
