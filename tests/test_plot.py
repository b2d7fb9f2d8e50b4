"""plot.py: labels of step-credit ablations, and the optional panels drawn only when logged."""
import json
import struct

import pytest

from config import Config
from plot import CURVES, phase_means, plot_runs, read_run, read_runs


def fake_run(path, rows, **cfg):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**vars(Config()), **cfg}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def png_size(path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])  # IHDR width, height


@pytest.mark.parametrize("cfg,label", [
    (dict(algo="rloo", istar=True), "RLOO w/ iStar"),
    (dict(algo="grpo", istar=False, step_reward_source="oracle"), "GRPO"),  # no step credit: no suffix
    (dict(algo="rloo", istar=True, step_reward_source="oracle"), "RLOO w/ iStar (oracle step credit)"),
    (dict(algo="rloo", istar=True, prm_order="after", scale_step_rewards=True), "RLOO w/ iStar (PRM after update) (scaled r)"),
    (dict(algo="rloo", istar=True, granularity="token"), "RLOO w/ iStar (token)"),
    (dict(algo="rloo", istar=True, prm_steps=4), "RLOO w/ iStar (4 PRM steps)"),
    (dict(algo="rloo", istar=True, prm_nll_coef=1.0), "RLOO w/ iStar (PRM NLL 1)"),
    (dict(algo="rloo", istar=True, prm_nll_coef=0.0), "RLOO w/ iStar"),
    (dict(algo="rloo", istar=True, prm_reference="start", prm_nll_coef=1.0), "RLOO w/ iStar (PRM NLL 1) (E1 vs π_0)"),
])
def test_labels_name_the_step_credit_ablation(tmp_path, cfg, label):
    assert read_run(fake_run(tmp_path / "r", [], **cfg))[0] == label


def test_optional_panels_appear_only_when_some_run_logs_them(tmp_path):
    base = [{"env_steps": s, "env/success": s / 100, "env/return": s / 50, "eval/success_sampled": 0.5} for s in (0, 50, 100)]
    plain = fake_run(tmp_path / "plain", base, algo="rloo", istar=False)
    png = plot_runs([plain], tmp_path / "a.png")
    assert len(CURVES) == 3 and png_size(png) == (1800, 432)  # one row of 5 x 3.6 inch panels at 120 dpi
    extra = fake_run(tmp_path / "extra", [{**r, "eval/expert_prob": 0.3, "credit/adv_auc": 0.7} for r in base],
                     algo="rloo", istar=True)
    assert png_size(plot_runs([plain, extra], tmp_path / "b.png")) == (1800, 864)  # 5 panels: two rows


def test_phase_means_average_each_run_over_its_phase_then_over_seeds(tmp_path):
    def run(name, values, **cfg):  # training rows of iterations 1..n (eval rows carry no env/success)
        rows = [{"iteration": 0, "eval/expert_prob": 0.5}]
        rows += [{"iteration": i + 1, "env/success": 0.0, "credit/prm_auc": v} for i, v in enumerate(values)]
        return fake_run(tmp_path / name, rows, **cfg)

    runs = [run("a", [0.0, 1.0, 2.0, 3.0], algo="rloo", istar=True, seed=0),
            run("b", [4.0, 5.0, 6.0, 7.0], algo="rloo", istar=True, seed=1),
            run("c", [1.0, 1.0, 1.0, 1.0], algo="grpo", istar=False)]
    table = phase_means(runs, ["credit/prm_auc"], [(2, 3), (4, 9)]).splitlines()
    assert table[0] == "| run | credit/prm_auc, iterations 2-3 | credit/prm_auc, iterations 4-9 |"
    # run a: mean(1, 2) = 1.5, run b: mean(5, 6) = 5.5 -> 3.5 ± 2.0; iterations 4-9: 3 and 7 -> 5 ± 2
    assert table[3] == "| RLOO w/ iStar | 3.500 ± 2.000 (n=2) | 5.000 ± 2.000 (n=2) |"
    assert table[2] == "| GRPO | 1.000 ± 0.000 (n=1) | 1.000 ± 0.000 (n=1) |"
    assert "| - |" in phase_means(runs, ["prm/acc"], [(1, 4)])  # never logged: no number made up
    assert phase_means(runs[:1], ["eval/expert_prob"], [(0, 0)]).splitlines()[2] == "| RLOO w/ iStar | 0.500 ± 0.000 (n=1) |"


def test_runs_are_averaged_only_when_they_are_seeds_of_one_setting(tmp_path):
    """Runs of one algorithm that differ in a setting (here the learning rate, or the system prompt) get
    the differing flags in their labels and separate rows; seeds, names and lengths do not split a label."""
    rows = [{"iteration": 0, "eval/expert_prob": 0.5}, {"iteration": 1, "env/success": 0.0}]
    runs = [fake_run(tmp_path / "a", rows, algo="rloo", istar=False, lr=1e-4, seed=0, run_name="a", iterations=16),
            fake_run(tmp_path / "b", rows, algo="rloo", istar=False, lr=1e-4, seed=1, run_name="b", iterations=41),
            fake_run(tmp_path / "c", rows, algo="rloo", istar=False, lr=3e-4, system_prompt=False, prm_lr=6e-4),
            fake_run(tmp_path / "d", rows, algo="grpo", istar=False, lr=3e-4)]
    assert [label for label, _ in read_runs(runs)] == ["RLOO (--lr 0.0001, --system-prompt)", "RLOO (--lr 0.0001, --system-prompt)",
                                "RLOO (--lr 0.0003, --no-system-prompt)", "GRPO"]
    table = phase_means(runs, ["eval/expert_prob"], [(0, 0)]).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| GRPO", "| RLOO (--lr 0.0001, --system-prompt)",
                                                            "| RLOO (--lr 0.0003, --no-system-prompt)"]
    assert "(n=2)" in table[3] and "(n=1)" in table[4]
    assert [label for label, _ in read_runs(runs[:2])] == ["RLOO", "RLOO"]
    istar = [fake_run(tmp_path / "e", rows, algo="rloo", istar=True, prm_lr=2e-4),  # the PRM's lr matters with iStar
             fake_run(tmp_path / "f", rows, algo="rloo", istar=True, prm_lr=6e-4)]
    assert [label for label, _ in read_runs(istar)] == ["RLOO w/ iStar (--prm-lr 0.0002)", "RLOO w/ iStar (--prm-lr 0.0006)"]
