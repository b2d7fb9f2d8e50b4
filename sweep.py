"""Run a grid of train.py runs (variants × seeds) in parallel, then tabulate and plot them.

The comparison the paper makes (paper.md "Results", its Figure of success vs steps): iStar vs its
base algorithms on identical rollout budgets, several seeds each. Every run of a sweep gets the
same train.py arguments except ``--algo``, ``--istar/--no-istar`` and ``--seed``, so the rollout
budgets (tasks × group size per iteration) are equal; pass ``-- --max-env-steps K`` to stop every
run at the same number of environment steps (episodes of different lengths make iterations differ
in steps), and the table also compares runs at the smallest number of steps any of them took.

    python sweep.py --env sokoban --variants rloo+istar,grpo,rloo --seeds 0,1,2 --parallel 9 -- --max-env-steps 100000
    python sweep.py --summarise runs/sweep-sokoban        # table + plot of finished runs again

Variants are ``ALGO`` (the base algorithm alone, ``--no-istar``) or ``ALGO+istar``. Running the
same command again continues a sweep: finished runs are kept, interrupted ones resume from their
last checkpoint; a run folder made with other settings stops the sweep (use another ``--out``).
``--deadline-min M`` bounds the sweep's wall clock (a lease on a GPU): at M minutes no more runs
start and the running ones end after their iteration in flight, each with a final evaluation and a
checkpoint (train.py's GracefulStop), so the table covers what ran and the same command continues. Runs are
subprocesses (``--parallel`` at a time, on one GPU they share it; each gets
``OMP_NUM_THREADS = cores / parallel``, or the caller's ``OMP_NUM_THREADS`` when it is set, e.g. to
leave cores to other work), logging to ``<out>/<variant>-s<seed>.log``. The
summary (``<out>/results.md``, ``<out>/curves.png``) has per variant, mean ± std over seeds:
  * final eval success (greedy and sampled), the last evaluation of each run;
  * training success at the budget B = the fewest environment steps any run of the sweep took
    (each run's curve interpolated at B), and averaged over its last 10% of iterations;
  * environment steps until the training success (a running mean over ``--window`` iterations,
    full windows only) first reaches ``--threshold``, over the runs that reached it ("k/n reached");
  * where the env labels its steps (Sokoban), ``credit/adv_auc`` averaged over a run's iterations:
    how well the advantage the policy was trained on ranked good steps above bad ones (credit.py).
  * ``eval/expert_prob`` at the first and the last evaluation: the policy's probability of the
    expert's action on held-out expert episodes, what it knows without sampling noise (train.py).

Deviations from the paper: none in the method; the paper reports one run per configuration.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from config import parse_config, saved_config
from envs import REGISTRY
from plot import plot_runs, read_runs

ALGOS = ("rloo", "grpo", "reinforce++")


def variant_args(variant: str) -> list[str]:
    """``rloo+istar`` -> ['--algo', 'rloo', '--istar']; ``grpo`` -> ['--algo', 'grpo', '--no-istar']."""
    plug = variant.endswith("+istar")
    algo = variant[:-len("+istar")] if plug else variant
    if algo not in ALGOS:
        raise ValueError(f"sweep --variants: {variant!r} is not ALGO or ALGO+istar with ALGO in {', '.join(ALGOS)}")
    return ["--algo", algo, "--istar" if plug else "--no-istar"]


def job_args(run: Path, args: list[str]) -> list[str] | None:
    """train.py arguments that bring ``run`` (made with ``args``) to its end: None when it has finished
    (``summary.json``), ``--resume`` when it has a checkpoint, ``args`` otherwise (a folder without a
    checkpoint is cleared first). A folder made with other settings is an error, never mixed in."""
    saved = run / "config.json"
    if not saved.is_file():
        return args
    want, have = dataclasses.asdict(parse_config(args)[0]), saved_config(saved)
    diff = [f"{k}: {have.get(k)!r} -> {v!r}" for k, v in want.items() if have.get(k) != v]
    if diff:
        raise ValueError(f"sweep: {run} holds a run with other settings ({'; '.join(diff)}); pass another --out")
    if (run / "summary.json").is_file() and "stopped" not in json.loads((run / "summary.json").read_text()):
        return None  # finished (a run stopped early on request, GracefulStop, has a checkpoint and resumes)
    if (run / "checkpoint.pt").is_file():
        return ["--resume", str(run)]
    shutil.rmtree(run)  # interrupted before its first checkpoint: start again
    return args


def child_threads(parallel: int, environ=os.environ) -> str:
    """OMP_NUM_THREADS of each run: the caller's when set (other work shares the machine), else the
    machine's cores split evenly over the runs in parallel (at least 1)."""
    return environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // parallel))


def launch(env: str, variants: list[str], seeds: list[int], out: Path, extra: list[str], parallel: int,
           deadline_s: float = 0.0) -> list[Path]:
    """Run every (variant, seed) with train.py, ``parallel`` at a time; the run folders, in grid order.
    Re-running a sweep skips its finished runs and resumes interrupted ones (``job_args``). With
    ``deadline_s`` > 0, at that many seconds after the start the sweep starts no more runs and sends
    the running ones SIGTERM: each ends after its iteration in flight with an evaluation, a checkpoint
    and a summary (train.py GracefulStop), so the same command later continues them."""
    out.mkdir(parents=True, exist_ok=True)
    grid = [(f"{v}-s{s}", ["--env", env, *variant_args(v), "--seed", str(s), *extra]) for v in variants for s in seeds]
    jobs = []
    for name, args in grid:
        todo = job_args(out / name, [*args, "--out-dir", str(out), "--run-name", name])
        if todo is None:
            print(f"{name}: finished earlier, kept", flush=True)
        else:
            jobs.append((name, todo))
    envvars = {**os.environ, "OMP_NUM_THREADS": child_threads(parallel), "PYTHONUNBUFFERED": "1"}
    pending, running, failed = list(jobs), [], []
    t0, stopping = time.time(), False
    while pending or running:
        if deadline_s and not stopping and time.time() - t0 > deadline_s:
            stopping = True
            print(f"[{time.time() - t0:6.0f}s] deadline: {len(running)} runs asked to stop after their iteration in "
                  f"flight, {len(pending)} not started", flush=True)
            for _, proc, _ in running:
                proc.send_signal(signal.SIGTERM)
            pending = []
        while pending and len(running) < parallel:
            name, args = pending.pop(0)
            cmd = [sys.executable, str(Path(__file__).with_name("train.py")), *args]
            log = open(out / f"{name}.log", "a")  # a resumed run continues its log
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=envvars), log))
            print(f"[{time.time() - t0:6.0f}s] started {name}: {' '.join(args)}", flush=True)
        time.sleep(0.5)
        for job in [j for j in running if j[1].poll() is not None]:
            name, proc, log = job
            log.close()
            running.remove(job)
            cut = stopping and proc.returncode == -signal.SIGTERM  # stopped before its loop began (warm start, first eval)
            print(f"[{time.time() - t0:6.0f}s] {name} exited with {proc.returncode}"
                  + (" (cut by the deadline before its first iteration)" if cut else ""), flush=True)
            if proc.returncode and not cut:
                failed.append(name)
    if failed:
        raise RuntimeError(f"sweep: runs {failed} failed; see their logs in {out}")
    return [out / name for name, _ in grid]


def has_iterations(run: Path) -> bool:
    """Whether ``run`` logged at least one training iteration."""
    path = run / "metrics.jsonl"
    return path.is_file() and any(json.loads(line).get("iteration", 0) > 0 for line in path.read_text().splitlines() if line.strip())


def _reach(steps: np.ndarray, success: np.ndarray, threshold: float, window: int) -> float | None:
    """Env steps at the first iteration whose running mean success over the last ``window`` iterations
    ≥ threshold. Only full windows count (a run shorter than ``window``: all its iterations), so one
    lucky first iteration does not 'reach' a level the run never holds."""
    w = max(1, min(window, len(success)))
    for i in range(w - 1, len(success)):
        if success[i - w + 1:i + 1].mean() >= threshold:
            return float(steps[i])
    return None


def _ms(xs: list[float], fmt: str = "{:.3f}") -> str:
    if not xs:
        return "-"
    return fmt.format(np.mean(xs)) + (" ± " + fmt.format(np.std(xs)) if len(xs) > 1 else "")


def _arrow(pairs: list[list[float]]) -> str:
    """'before → after' (each mean ± std over runs) of (first, last) pairs; '-' without any."""
    return f"{_ms([a for a, _ in pairs])} → {_ms([b for _, b in pairs])}" if pairs else "-"


def summarise(run_dirs: list[Path], threshold: float = 0.5, window: int = 5) -> str:
    """The markdown table described in the module docstring."""
    runs = {}
    for d, (label, rows) in zip(run_dirs, read_runs(run_dirs)):
        train_rows = [r for r in rows if r.get("iteration", 0) > 0 and "env/success" in r]
        evals = [r for r in rows if "eval/success_greedy" in r]
        if not train_rows:
            raise ValueError(f"sweep: {d} has no training iterations in metrics.jsonl")
        runs.setdefault(label, []).append(dict(
            steps=np.array([r["env_steps"] for r in train_rows], dtype=float),
            success=np.array([r["env/success"] for r in train_rows], dtype=float),
            greedy=evals[-1]["eval/success_greedy"] if evals else None,
            sampled=evals[-1].get("eval/success_sampled") if evals else None,
            credit=[r[k] for r in train_rows for k in ("credit/adv_auc",) if r.get(k) is not None],
            expert=[e["eval/expert_prob"] for e in (evals[:1] + evals[-1:] if len(evals) > 1 else []) if e.get("eval/expert_prob") is not None]))
    budget = min(r["steps"][-1] for rs in runs.values() for r in rs)
    lines = [f"| variant | runs | final eval success, greedy | final eval success, sampled | training success at "
             f"{budget:,.0f} env steps | training success, last 10% of iterations | env steps to {threshold:.0%} "
             f"training success (running mean of {window}) | step credit AUC of the advantage, mean over iterations | "
             f"expert-action probability, before RL → final eval |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, rs in sorted(runs.items()):
        at_budget = [float(np.interp(budget, r["steps"], r["success"])) for r in rs]
        last = [float(r["success"][-max(1, len(r["success"]) // 10):].mean()) for r in rs]
        reach = [x for x in (_reach(r["steps"], r["success"], threshold, window) for r in rs) if x is not None]
        lines.append(f"| {label} | {len(rs)} | {_ms([r['greedy'] for r in rs if r['greedy'] is not None])} | "
                     f"{_ms([r['sampled'] for r in rs if r['sampled'] is not None])} | {_ms(at_budget)} | {_ms(last)} | "
                     f"{_ms(reach, '{:,.0f}')} ({len(reach)}/{len(rs)} reached) | "
                     f"{_ms([float(np.mean(r['credit'])) for r in rs if r['credit']])} | "
                     f"{_arrow([r['expert'] for r in rs if len(r['expert']) == 2])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Arguments after -- go to every train.py run (e.g. -- --iterations 60 --preset tiny).")
    p.add_argument("--env", default="sokoban", choices=list(REGISTRY), help="environment of every run")
    p.add_argument("--variants", default="rloo+istar,grpo,rloo", help="comma-separated ALGO or ALGO+istar")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each variant runs once per seed")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--out", default="", help="folder of the sweep's runs (default runs/sweep-<env>)")
    p.add_argument("--threshold", type=float, default=0.5, help="training success level for 'env steps to reach'")
    p.add_argument("--window", type=int, default=5, help="iterations in the running mean for 'env steps to reach'")
    p.add_argument("--summarise", default="", metavar="DIR", help="only tabulate and plot the runs already in DIR")
    p.add_argument("--deadline-min", type=float, default=0.0, help="after this many minutes start no more runs and stop the "
                   "running ones after their iteration in flight (each evaluates and checkpoints; rerun to continue); 0 = off")
    args = p.parse_args(own)
    if args.parallel < 1 or args.window < 1 or not 0 < args.threshold <= 1 or args.deadline_min < 0:
        p.error("--parallel and --window must be >= 1, --threshold in (0, 1], --deadline-min >= 0")
    if args.summarise:
        out = Path(args.summarise)
        dirs = sorted(d for d in out.iterdir() if (d / "metrics.jsonl").is_file()) if out.is_dir() else []
        if not dirs:
            p.error(f"--summarise {out}: no run folders with metrics.jsonl in it")
    else:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        for v in variants:  # fail before any run starts: a bad variant, or train.py flags it would refuse
            parse_config(["--env", args.env, *variant_args(v), *extra])
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
        out = Path(args.out or f"runs/sweep-{args.env}")
        dirs = launch(args.env, variants, seeds, out, extra, args.parallel, 60 * args.deadline_min)
    missing = [d.name for d in dirs if not has_iterations(d)]  # cut by --deadline-min before their first iteration
    dirs = [d for d in dirs if has_iterations(d)]
    if not dirs:
        raise SystemExit(f"sweep: no run of {out} finished an iteration" + (" (raise --deadline-min)" if args.deadline_min else ""))
    table = summarise(dirs, args.threshold, args.window)
    if missing:
        table += f"\nNot in the table (no iteration done before the deadline): {', '.join(missing)}.\n"
    stopped = [d.name for d in dirs if "stopped" in json.loads((d / "summary.json").read_text() if (d / "summary.json").is_file() else "{}")]
    if stopped:
        table += f"\nStopped by the deadline before their last iteration (the same command continues them): {', '.join(stopped)}.\n"
    (out / "results.md").write_text(table)
    png = plot_runs([str(d) for d in dirs], out / "curves.png")
    print(f"\n{table}\nwrote {out / 'results.md'} and {png}")
    (out / "sweep.json").write_text(json.dumps({"runs": [str(d) for d in dirs], "train_args": extra}, indent=1))


if __name__ == "__main__":
    main()
