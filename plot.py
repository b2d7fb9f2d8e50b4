"""Learning curves: success and return vs environment steps for one or several runs, as a PNG.

    python plot.py runs/sokoban-rloo-istar-s0 runs/sokoban-rloo-s0 --out curves.png
    python train.py --plot runs/*            (the same, through train.py)

Runs whose config differs only by seed share a label and are drawn as mean ± std across seeds,
each curve interpolated onto a common grid of environment steps. Reads `metrics.jsonl` and
`config.json` of each run folder (written by train.py).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

CURVES = [("env/success", "training success"), ("eval/success_sampled", "eval success (T=0.4)"), ("env/return", "training return")]


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
        if cfg.get("granularity") == "token" and cfg["istar"]:
            label += " (token)"
    else:
        label = run_dir.name
    return label, rows


def plot_runs(run_dirs: list[str], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    by_label: dict[str, list[list[dict]]] = defaultdict(list)
    for d in run_dirs:
        label, rows = read_run(d)
        by_label[label].append(rows)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    for ax, (key, title) in zip(axes, CURVES):
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
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders written by train.py")
    parser.add_argument("--out", default="curves.png", help="PNG file to write")
    args = parser.parse_args()
    print(plot_runs(args.runs, args.out))
