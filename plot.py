"""Learning curves: success and return vs environment steps for one or several runs, as a PNG.

    python plot.py runs/sokoban-rloo-istar-s0 runs/sokoban-rloo-s0 --out curves.png
    python train.py --plot runs/*            (the same, through train.py)
    python plot.py runs/sweep-locks/*-s? --means credit/prm_auc,prm/acc --iterations 2-8,11-100   (a table)

Runs whose config differs only by seed (and bookkeeping: NOT_SETTINGS) share a label and are drawn
as mean ± std across seeds, each curve interpolated onto a common grid of environment steps; runs of
one algorithm that differ in a setting get the differing flags in their labels (``read_runs``).
Reads `metrics.jsonl` and `config.json` of each run folder (written by train.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from config import Config, saved_config

CURVES = [("env/success", "training success"), ("eval/success_sampled", "eval success (T=0.4)"), ("env/return", "training return")]
# Drawn only when some run logs them: what the policy knows without sampling noise (train.py), and how
# well the advantage it was trained on ranked the env's good steps above its bad ones (credit.py).
OPTIONAL_CURVES = [("eval/expert_prob", "expert-action probability (held-out)"),
                   ("credit/adv_auc", "step-credit AUC of the advantage")]
# Ablations of the step credit that get a suffix on a run's label: (config field, the paper's value,
# suffix formatted with the run's value), added when the run's value differs from the paper's.
LABEL_SUFFIXES = [("granularity", "step", " (token)"), ("step_reward_source", "prm", " (oracle step credit)"),
                  ("prm_order", "before", " (PRM after update)"), ("scale_step_rewards", False, " (scaled r)"),
                  ("prm_steps", 1, " ({} PRM steps)"), ("prm_nll_coef", 0, " (PRM NLL {:g})"),
                  ("prm_reference", "old", " (E1 vs π_0)")]


# Config fields that do not make a run another setting: its seed, name, length and bookkeeping, and how
# the same computation is laid out on the machine. Runs that differ only in these are seeds of one setting.
NOT_SETTINGS = {"seed", "init_seed", "run_name", "out_dir", "iterations", "max_env_steps", "eval_every", "save_every", "tensorboard",
                "warmstart_cache", "device", "kernels", "micro_batch", "micro_batch_tokens", "rollout_engine",
                "cuda_graphs", "fsdp"}
# ... nor do the PRM's fields and the step advantage's when iStar is off.
ISTAR_ONLY = {f.name for f in dataclasses.fields(Config) if f.metadata["group"] == "prm" and f.name != "istar"} | {
    "step_adv_coef", "step_reward_source"}


def read_run(run_dir: str | Path) -> tuple[str, list[dict]]:
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"plot: {metrics_file} does not exist (is {run_dir} a train.py run folder?)")
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    cfg_file = run_dir / "config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        label = f"{cfg['algo'].upper()}{' w/ iStar' if cfg['istar'] else ''}"
        if cfg["istar"]:
            label += "".join(suffix.format(cfg[field]) for field, paper, suffix in LABEL_SUFFIXES
                             if cfg.get(field, paper) != paper)
    else:
        label = run_dir.name
    return label, rows


def _settings(run_dir: str | Path) -> dict:
    """The run's config (completed with LEGACY_DEFAULTS, as --resume reads it) without NOT_SETTINGS,
    and without the PRM's and the step advantage's fields when iStar is off (they change nothing then)."""
    cfg_file = Path(run_dir) / "config.json"
    cfg = saved_config(cfg_file) if cfg_file.is_file() else {}
    unused = set() if cfg.get("istar", True) else ISTAR_ONLY
    return {k: v for k, v in cfg.items() if k not in NOT_SETTINGS | unused}


def _flag(name: str, value) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + name.replace("_", "-")
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def read_runs(run_dirs: list[str]) -> list[tuple[str, list[dict]]]:
    """``read_run`` of each run, its label followed, where runs with that label differ in a setting (a
    config field outside NOT_SETTINGS), by the run's values of the differing fields, e.g.
    ``RLOO (--lr 0.0003)``. So runs are only ever averaged together when they are seeds of one setting."""
    runs = [(*read_run(d), _settings(d)) for d in run_dirs]
    out = []
    for label, rows, settings in runs:
        peers = [s for other, _, s in runs if other == label]
        differ = sorted(k for k in set().union(*peers) if len({json.dumps(s.get(k)) for s in peers}) > 1)
        out.append((label + (" (" + ", ".join(_flag(k, settings.get(k)) for k in differ) + ")" if differ else ""), rows))
    return out


def runs_by_label(run_dirs: list[str]) -> dict[str, list[list[dict]]]:
    """label -> the metrics rows of each of its runs (runs differing only by seed share a label)."""
    by_label: dict[str, list[list[dict]]] = defaultdict(list)
    for label, rows in read_runs(run_dirs):
        by_label[label].append(rows)
    return by_label


def plot_runs(run_dirs: list[str], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    by_label = runs_by_label(run_dirs)
    logged = {key for runs in by_label.values() for rows in runs for r in rows for key in r}
    curves_drawn = CURVES + [(key, title) for key, title in OPTIONAL_CURVES if key in logged]
    ncols, nrows = min(3, len(curves_drawn)), -(-len(curves_drawn) // 3)  # at most 3 panels a row
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(curves_drawn):]:
        ax.axis("off")
    for ax, (key, title) in zip(axes, curves_drawn):
        for label, runs in sorted(by_label.items()):
            curves = [[(r["env_steps"], r[key]) for r in rows if key in r and r[key] is not None] for rows in runs]
            curves = [np.array(c) for c in curves if len(c)]
            if not curves:
                continue
            grid = np.linspace(0, min(c[-1, 0] for c in curves), 50)  # common env-step grid
            ys = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])  # (runs, 50)
            mean = ys.mean(0)
            ax.plot(grid, mean, label=f"{label} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(grid, mean - ys.std(0), mean + ys.std(0), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    if len(axes) > len(curves_drawn):  # a free cell: the legend goes there, off the curves
        axes[-1].legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=10)
    else:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def phase_means(run_dirs: list[str], keys: list[str], phases: list[tuple[int, int]]) -> str:
    """A markdown table: per label (runs differing only by seed share one) and metric, the mean over
    the iterations lo..hi (inclusive; evaluations are logged at their iteration, 0 = before RL) of
    each phase, then mean ± std over the seeds. A run that logged none of the phase's values counts
    as missing; a cell with no run is "-"."""
    by_label = runs_by_label(run_dirs)
    head = [f"{key}, iterations {lo}-{hi}" for key in keys for lo, hi in phases]
    lines = ["| run | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for label, runs in sorted(by_label.items()):
        cells = []
        for key in keys:
            for lo, hi in phases:
                per_run = [np.mean(v) for v in ([r[key] for r in rows if lo <= r.get("iteration", -1) <= hi
                                                  and r.get(key) is not None] for rows in runs) if v]
                cells.append(f"{np.mean(per_run):.3f} ± {np.std(per_run):.3f} (n={len(per_run)})" if per_run else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _phases(text: str) -> list[tuple[int, int]]:
    try:
        phases = [tuple(int(x) for x in part.split("-")) for part in text.split(",")]
    except ValueError:
        phases = []
    if not phases or any(len(p) != 2 or p[0] > p[1] for p in phases):
        raise argparse.ArgumentTypeError(f"--iterations: expected ranges like 2-8,11-100, got {text!r}")
    return phases


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders written by train.py")
    parser.add_argument("--out", default="curves.png", help="PNG file to write")
    parser.add_argument("--means", default="", help="instead of plotting, print per run label the mean of these "
                        "comma-separated training metrics (e.g. credit/prm_auc,prm/acc) over --iterations, ± std over seeds")
    parser.add_argument("--iterations", type=_phases, default=[(1, 10**9)], help="phases for --means: ranges like 2-8,11-100")
    args = parser.parse_args()
    print(phase_means(args.runs, args.means.split(","), args.iterations) if args.means else plot_runs(args.runs, args.out))
