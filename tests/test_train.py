"""train.py end to end on CPU: smoke run, exact resume, config errors, plot and replay."""
import dataclasses
import fnmatch
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from config import Config, parse_config
from train import train

ROOT = Path(__file__).resolve().parents[1]


def tiny(out_dir, **kw) -> Config:
    cfg, _ = parse_config(["--env", "sokoban", "--preset", "tiny", "--out-dir", str(out_dir), "--max-steps", "4", "--kernels", "reference"])
    return Config(**{**cfg.__dict__, **kw})


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_cli_smoke_run_two_iterations_with_finite_metrics(tmp_path):
    """The real entry point, as a user runs it (STYLE R13): exit 0, finite losses and stats."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "train.py", "--env", "sokoban", "--preset", "tiny", "--out-dir", str(tmp_path), "--run-name", "smoke"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "before RL" in proc.stdout and "after RL" in proc.stdout
    got = rows(tmp_path / "smoke")
    assert [r["iteration"] for r in got] == [0, 1, 2]
    for r in got[1:]:
        for key in ("env/success", "env/return", "policy/pg_loss", "policy/entropy", "policy/approx_kl", "adv/episode_std", "perf/tokens_per_s"):
            assert math.isfinite(r[key]), (key, r[key])
        assert 0 <= r["credit/optimal_frac"] <= 1  # Sokoban labels its steps (credit.py)
    for r in (got[0], got[2]):  # evaluations: before RL and at the end
        assert 0 < r["eval/expert_prob"] < 1 and r["eval/expert_entropy"] > 0
    for name in ("checkpoint.pt", "policy/config.json", "prm/config.json", "summary.json", "config.json"):
        assert (tmp_path / "smoke" / name).exists(), name
    names = readme_metric_names()
    undefined = sorted({k for r in got for k in r if not any(fnmatch.fnmatchcase(k, n) for n in names)})
    assert not undefined, f"metrics logged but not defined in README's Logged metrics table: {undefined}"


def readme_metric_names() -> set[str]:
    """The metric names in the rows of README's "Logged metrics" table (issue #5: every metric
    defined); a name may be a glob (`eval/return_*`, `*_safe_gap`)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Logged metrics"):text.index("## Kernels")]
    names = {"iteration", "env_steps"}  # the index columns, defined above the table
    for line in table.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line))
    return names


def test_four_iterations_equal_two_plus_resumed_two(tmp_path):
    full = train(tiny(tmp_path, run_name="full", iterations=4, eval_every=0))
    assert full["after"]
    train(tiny(tmp_path, run_name="split", iterations=2, eval_every=0))
    saved = json.loads((tmp_path / "split" / "config.json").read_text())
    train(Config(**{**saved, "iterations": 4}), resume=str(tmp_path / "split"))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert a["iteration"] == b["iteration"] == 4 and a["env_steps"] == b["env_steps"]
    for key in ("policy", "prm"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], atol=1e-5, rtol=1e-4, msg=f"{key}.{name}")
    # --fresh-policy-optimizer: the same resume with the policy's AdamW restarted (2 iterations of steps, not 4)
    train(tiny(tmp_path, run_name="fresh", iterations=2, eval_every=0))
    train(Config(**{**saved, "run_name": "fresh", "iterations": 4}), resume=str(tmp_path / "fresh"), fresh_policy_opt=True)
    c = torch.load(tmp_path / "fresh" / "checkpoint.pt", weights_only=False)
    steps = lambda opt: {float(v["step"]) for v in opt["state"].values()}  # noqa: E731
    assert steps(c["policy_opt"]) == {s / 2 for s in steps(a["policy_opt"])} and steps(c["prm_opt"]) == steps(a["prm_opt"])
    ra = {r["iteration"]: r for r in rows(tmp_path / "full")}
    rb = {r["iteration"]: r for r in rows(tmp_path / "split")}
    assert sorted(ra) == sorted(rb) == [0, 1, 2, 3, 4]  # the resumed run rewrote nothing twice
    for it in (3, 4):
        for key in ("env/return", "policy/pg_loss", "policy/approx_kl"):
            assert math.isclose(ra[it][key], rb[it][key], rel_tol=1e-4, abs_tol=1e-6), (it, key)


def test_prm_reference_start_keeps_the_warm_start_as_e1s_reference_through_a_resume(tmp_path):
    """--prm-reference start: E1's reference is the warm-started policy π_0, frozen; the checkpoint
    keeps it, so 3 iterations equal 1 + resumed 2 (a resume must not take the resumed policy as π_0);
    --show and bench.drift_probe score against it."""
    cfg, _ = parse_config(["--env", "locks", "--preset", "tiny", "--out-dir", str(tmp_path), "--kernels", "reference", "--max-steps", "1",
                           "--tasks-per-iter", "4", "--group-size", "4", "--iterations", "3", "--eval-every", "0", "--prm-reference", "start"])
    train(dataclasses.replace(cfg, run_name="full"))  # (E1 against π_0 itself: tests/test_istar.py)
    train(dataclasses.replace(cfg, run_name="split", iterations=1))
    saved = json.loads((tmp_path / "split" / "config.json").read_text())
    train(Config(**{**saved, "iterations": 3}), resume=str(tmp_path / "split"))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    start = torch.load(next((tmp_path / ".warmstart").iterdir()) / "policy.pt", weights_only=True)  # π_0
    for name in start:
        assert torch.equal(a["ref"][name], start[name]) and torch.equal(b["ref"][name], start[name]), name
    assert any(not torch.equal(a["ref"][n], a["policy"][n]) for n in start)  # the policy moved, π_0 did not
    for key in ("policy", "prm"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], atol=1e-5, rtol=1e-4, msg=f"{key}.{name}")
    ra, rb = rows(tmp_path / "full"), rows(tmp_path / "split")
    for it in (2, 3):
        for key in ("env/return", "policy/pg_loss", "policy/approx_kl"):
            assert math.isclose(ra[it][key], rb[it][key], rel_tol=1e-4, abs_tol=1e-6), (it, key)
    from bench.drift_probe import main as drift
    from replay import replay_episode

    probe = drift([str(tmp_path / "full"), "--tasks", "2", "--group-size", "2"])[0]
    assert probe["r_phi_mean"] == pytest.approx(probe["prm_change_mean"], abs=1e-6)  # E1 against π_0: no drift term
    assert all(math.isfinite(s["implicit_reward"]) for s in replay_episode(tmp_path / "full", cfg))
    from train import reference_policy

    assert reference_policy(tiny(tmp_path), None) is None  # nothing frozen when nothing needs it


@pytest.mark.parametrize("argv, field", [
    (["--group-size", "0"], "--group-size"),
    (["--lr", "-1"], "--lr"),
    (["--dual-clip", "0.5"], "--dual-clip"),
    (["--warmstart-random-frac", "2"], "--warmstart-random-frac"),
    (["--minibatches", "1000"], "--minibatches"),
    (["--device", "tpu"], "--device"),
    (["--init-seed", "-2"], "--init-seed"),
    (["--adam-beta2", "1"], "--adam-beta2"),
    (["--shuffle-ids"], "--shuffle-ids"),  # sokoban has no product IDs
    (["--numbered-results"], "--numbered-results"),
    (["--group-size", "1"], "--group-size"),  # no group baseline, no preference pair: nothing trains
    (["--step-adv-coef", "nan"], "--step-adv-coef"),  # NaN passes every comparison
    (["--lr", "inf"], "--lr"),
    (["--eval-temperature", "-0.5"], "--eval-temperature"),
])
def test_bad_config_fails_before_any_work_naming_the_field(argv, field):
    with pytest.raises(ValueError, match=field):
        parse_config(["--env", "sokoban", *argv])


def test_sokoban_drops_the_system_prompt_only_for_the_locally_built_model():
    """LOCAL_MODEL_PRESETS: the bare sokoban command trains the model built from scratch without the
    prompt; a pretrained --model keeps the env's prompt; an explicit flag wins either way; other envs keep it."""
    assert parse_config([])[0].system_prompt is False  # sokoban is the default env
    assert parse_config(["--env", "sokoban", "--preset", "tiny"])[0].system_prompt is False
    assert parse_config(["--env", "sokoban", "--model", "/some/lm"])[0].system_prompt is True
    assert parse_config(["--env", "sokoban", "--system-prompt"])[0].system_prompt is True
    assert parse_config(["--env", "sokoban", "--model", "/some/lm", "--no-system-prompt"])[0].system_prompt is False
    assert all(parse_config(["--env", env])[0].system_prompt for env in ("locks", "sotopia", "webshop"))


def test_webshop_numbers_its_results_only_for_the_locally_built_model():
    """LOCAL_MODEL_PRESETS: the model built from scratch clicks items by their place on the results page and
    learns from demos without random actions; a pretrained --model clicks product IDs, as in WebShop."""
    cfg = parse_config(["--env", "webshop"])[0]
    assert cfg.numbered_results is True and cfg.warmstart_random_frac == 0.0
    cfg = parse_config(["--env", "webshop", "--model", "/some/lm"])[0]
    assert cfg.numbered_results is False and cfg.warmstart_random_frac == 0.3
    assert parse_config(["--env", "webshop", "--no-numbered-results"])[0].numbered_results is False
    assert not any(parse_config(["--env", env])[0].numbered_results for env in ("sokoban", "locks", "sotopia"))


def test_help_reads_well_and_unknown_env_is_rejected():
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for group in ("env:", "model:", "rollout:", "prm:", "advantage:", "policy:", "kernels:", "logging:"):
        assert group in proc.stdout
    assert "β of the implicit reward" in proc.stdout
    proc = subprocess.run([sys.executable, "train.py", "--env", "chess"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "invalid choice: 'chess'" in proc.stderr


def test_plot_and_show(tmp_path):
    cfg = tiny(tmp_path, run_name="viz", iterations=1)
    train(cfg)
    from plot import plot_runs

    png = plot_runs([str(tmp_path / "viz")], tmp_path / "curves.png")
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    from replay import replay_episode

    steps = replay_episode(tmp_path / "viz", cfg)
    assert steps and all(math.isfinite(s["implicit_reward"]) for s in steps)
    assert all(s["optimal"] in (True, False, None) and s["fatal"] in (True, False, None) for s in steps)
    assert all(not s["fatal"] for s in steps if s["optimal"])  # a move along a shortest solution is never fatal
    assert (tmp_path / "viz" / "replay.png").read_bytes()[:4] == b"\x89PNG"
    # --show (and bench.heldout) take the newest weights: the final policy, or a newer checkpoint
    # (a run resumed after it ended), or the checkpoint alone (a run in flight or killed)
    from replay import load_run
    run, ckpt = tmp_path / "viz", tmp_path / "viz" / "checkpoint.pt"
    _, final, _, _, which = load_run(run)
    assert which == "the final policy"
    os.utime(ckpt, (time.time() + 60, time.time() + 60))
    _, from_ckpt, _, _, which = load_run(run)
    assert which == "the checkpoint of iteration 1"
    for (name, a), b in zip(final.state_dict().items(), from_ckpt.state_dict().values()):
        assert torch.equal(a, b), name
    for d in ("policy", "prm"):
        shutil.rmtree(run / d)
    assert replay_episode(run, cfg) == steps
    ckpt.unlink()
    with pytest.raises(SystemExit, match="neither a final policy"):
        load_run(run)


def test_env_step_budget_stops_the_run_with_a_final_evaluation(tmp_path):
    summary = train(tiny(tmp_path, run_name="budget", iterations=5, max_env_steps=1, eval_every=0, save_every=10, adam_beta2=0.99))
    got = rows(tmp_path / "budget")
    assert [r["iteration"] for r in got] == [0, 1]  # the first iteration already passes 1 env step
    assert "eval/success_greedy" in got[-1] and summary["after"]["iteration"] == 1
    state = torch.load(tmp_path / "budget" / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 1
    assert tuple(state["policy_opt"]["param_groups"][0]["betas"]) == (0.9, 0.99)  # --adam-beta2 is the policy's
    assert tuple(state["prm_opt"]["param_groups"][0]["betas"]) == (0.9, 0.999)


def test_warm_start_is_cached_and_shared(tmp_path, capsys):
    a = train(tiny(tmp_path, run_name="a", iterations=1, eval_every=0))
    caches = list((tmp_path / ".warmstart").iterdir())
    assert len(caches) == 1 and (caches[0] / "policy.pt").is_file() and not (caches[0] / "lock").exists()
    capsys.readouterr()
    b = train(tiny(tmp_path, run_name="b", iterations=1, eval_every=0, algo="grpo", istar=False))  # same warm start
    assert "'cached'" in capsys.readouterr().out
    assert a["before"] == b["before"]  # the same policy before RL
    train(tiny(tmp_path, run_name="c", iterations=1, eval_every=0, seed=1))  # another seed: its own warm start
    assert len(list((tmp_path / ".warmstart").iterdir())) == 2
    capsys.readouterr()
    d = train(tiny(tmp_path, run_name="d", iterations=1, eval_every=0, seed=2, init_seed=0))  # a's starting policy
    assert "'cached'" in capsys.readouterr().out and d["before"] == a["before"]
    assert len(list((tmp_path / ".warmstart").iterdir())) == 2
    e = train(tiny(tmp_path / "nocache", run_name="e", iterations=1, eval_every=0, seed=2, init_seed=0, warmstart_cache=False))
    assert e["before"] == a["before"]  # trained again from --init-seed's init: the same policy, without the cache
    train(tiny(tmp_path, run_name="f", iterations=1, eval_every=0, seed=3, init_seed=5))  # a third starting policy
    recorded = sorted(json.loads((c / "info.json").read_text())["settings"]["seed"] for c in (tmp_path / ".warmstart").iterdir())
    assert recorded == [0, 1, 5]  # each cache records the seed of its starting policy (--init-seed), not the run's


def test_warm_start_lock(tmp_path):
    from warmstart import _take_lock
    lock = tmp_path / "lock"
    assert _take_lock(lock) and lock.read_text() == str(os.getpid())
    assert not _take_lock(lock)  # held by a live process (us): wait
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # a holder that died without finishing
    assert _take_lock(lock) and lock.read_text() == str(os.getpid())


def test_sigterm_ends_the_run_after_its_iteration_with_eval_checkpoint_and_summary(tmp_path):
    """A preempted run (SIGTERM, or a first Ctrl-C) loses nothing: it finishes the iteration in flight,
    evaluates, checkpoints, writes a summary marked stopped, exits 0, and --resume continues it."""
    cmd = [sys.executable, "train.py", "--env", "sokoban", "--preset", "tiny", "--iterations", "200", "--eval-every", "0",
           "--save-every", "100", "--out-dir", str(tmp_path), "--run-name", "pre"]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "pre" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.is_file() and any(r["iteration"] >= 1 for r in rows(tmp_path / "pre"))):
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before its first iteration"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM: stopping after this iteration" in out and "--resume" in out
    got = rows(tmp_path / "pre")
    last = got[-1]["iteration"]
    assert 1 <= last < 200 and "eval/success_greedy" in got[-1]  # a final evaluation, as at a normal end
    assert torch.load(tmp_path / "pre" / "checkpoint.pt", weights_only=False)["iteration"] == last
    summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert summary["stopped"] == "signal" and summary["after"]["iteration"] == last
    saved = json.loads((tmp_path / "pre" / "config.json").read_text())
    resumed = train(Config(**{**saved, "iterations": last + 1}), resume=str(tmp_path / "pre"))
    assert "stopped" not in resumed and [r["iteration"] for r in rows(tmp_path / "pre")] == list(range(last + 2))


def test_lr_probe_reports_the_kl_of_one_update_per_learning_rate(tmp_path):
    cmd = [sys.executable, "-m", "bench.lr_probe", "--lrs", "1e-5,1e-2", "--", "--env", "sokoban", "--preset", "tiny",
           "--tasks-per-iter", "2", "--group-size", "4", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kls = [float(line.split("KL after the update")[1].split()[0]) for line in proc.stdout.splitlines() if "KL after the update" in line]
    assert len(kls) == 2 and all(math.isfinite(k) and k >= 0 for k in kls)
    assert kls[1] > kls[0]  # a thousand times the learning rate moves the policy further


def test_heldout_replays_the_runs_own_evaluations(tmp_path, capsys):
    """bench.heldout on the run's own task count reproduces its evaluations exactly: the warm start's
    (iteration 0, before RL) and the final policy's, greedy and sampled (same seeds, same keys)."""
    from bench.heldout import main as heldout
    # a 9-step warm start at a constant lr leaves the policy partly valid, so the evaluations below differ
    train(tiny(tmp_path, run_name="h", iterations=1, eval_tasks=3, warmstart_episodes=48, warmstart_epochs=3, warmstart_lr=3e-3,
               warmstart_schedule="constant"))
    got = {r["iteration"]: r for r in rows(tmp_path / "h")}
    capsys.readouterr()
    heldout([str(tmp_path / "h"), "--warmstart", "--tasks", "3", "--temperatures", "0,0.4", "--random"])
    out = capsys.readouterr().out.strip().splitlines()
    lines = [line for line in out if "invalid actions" in line]
    assert len(lines) == 4  # (warm start, run) x (greedy, sampled)
    experts = [line for line in out if "expert's action" in line]
    assert experts == [line for line in out if "entropy at its tokens" in line]
    assert [(e.split()[-8].rstrip(";"), e.split()[-1]) for e in experts] == [
        (f"{got[it]['eval/expert_prob']:.3f}", f"{got[it]['eval/expert_entropy']:.3f}") for it in (0, 1)]
    assert "uniform random actions" in out[-1] and "/3 =" in out[-1]
    for line, (it, key) in zip(lines, [(0, "greedy"), (0, "sampled"), (1, "greedy"), (1, "sampled")]):
        assert f"success {round(got[it][f'eval/success_{key}'] * 3):4d}/3" in line, (line, it, key)
        assert f"invalid actions {got[it][f'eval/invalid_frac_{key}']:.4f}" in line, (line, it, key)
    assert len({line.split("invalid actions")[1] for line in lines}) > 1  # the fractions tell the policies apart
    with pytest.raises(SystemExit, match="no config.json"):
        heldout([str(tmp_path / "missing")])



def test_prm_probe_cache_gives_the_same_batches(tmp_path, capsys):
    """bench.prm_probe --cache: the second call loads the first call's rollouts (same settings) and
    reports the same numbers; a PRM-only setting (--q-reduce) does not invalidate the cache."""
    from bench.prm_probe import main as prm_probe
    argv = ["--batches", "2", "--epochs", "1", "--prm-lrs", "1e-3", "--cache", str(tmp_path / "b.pt"), "--",
            "--env", "sokoban", "--preset", "tiny", "--tasks-per-iter", "2", "--group-size", "3", "--max-steps", "3",
            "--out-dir", str(tmp_path), "--kernels", "reference"]
    first = prm_probe(argv)
    assert "batches loaded" not in capsys.readouterr().out
    second = prm_probe(argv)
    assert "batches loaded" in capsys.readouterr().out
    assert str(first) == str(second)  # nan-safe equality of every number
    prm_probe(argv + ["--q-reduce", "mean"])
    assert "batches loaded" in capsys.readouterr().out


def test_drift_probe_splits_the_step_reward_into_the_prms_change_and_the_policys_drift(tmp_path, capsys):
    """bench.drift_probe: r_φ = prm_change − policy_drift exactly (E1 with π_0 added and taken away);
    π_0 is the run's own warm start, found in the cache beside the run, not trained again; AUCs are
    within [0, 1] (or nan without a pair)."""
    from bench.drift_probe import PARTS, PUSH_COLS, main as drift, step_scores
    gen = torch.Generator().manual_seed(0)
    logp = {k: -torch.rand(7, generator=gen) for k in ("policy", "prm", "start")}  # (T,)
    parts = step_scores(logp, torch.tensor([0, 3, 4, 7]), beta=0.05)  # (S,) = (3,)
    torch.testing.assert_close(parts["r_phi"], parts["prm_change"] - parts["policy_drift"])
    torch.testing.assert_close(step_scores(logp, torch.tensor([0, 3, 4, 7]), 0.05, "start")["r_phi"], parts["prm_change"])
    torch.testing.assert_close(parts["policy_drift"][0], 0.05 * (logp["policy"][:3] - logp["start"][:3]).sum())
    torch.testing.assert_close(parts["headroom"][2], -0.05 * logp["start"][4:].sum())
    assert bool((parts["prm_change"] <= parts["headroom"]).all())  # log π_φ ≤ 0 caps the PRM's change
    train(tiny(tmp_path, run_name="d", iterations=1))
    cached = list((tmp_path / ".warmstart").iterdir())
    rows = drift([str(tmp_path / "d"), "--tasks", "2", "--group-size", "3"])
    assert list((tmp_path / ".warmstart").iterdir()) == cached  # the run's warm start, found, not retrained
    assert "the final policy" == rows[0]["weights"] and rows[0]["episodes"] == 6
    assert all(math.isnan(rows[0][k]) or 0 <= rows[0][k] <= 1 for k in PARTS)
    assert rows[0]["r_phi_mean"] == pytest.approx(rows[0]["prm_change_mean"] - rows[0]["policy_drift_mean"], abs=1e-6)
    assert rows[0]["policy_drift_mean"] != 0.0  # one RL update moved the policy away from its warm start
    assert "| run | weights | won |" in capsys.readouterr().out
    assert all(math.isnan(rows[0][f"{p}_{c}"]) or 0 <= rows[0][f"{p}_{c}"] <= 1 for p in PARTS for c in PUSH_COLS)
    # --rollout-policy start: π_0 plays for every run, so two runs from one warm start are scored on the
    # same episodes (same outcomes, same headroom) while their PRMs and policies still differ
    train(tiny(tmp_path, run_name="e", seed=1, init_seed=0))
    assert list((tmp_path / ".warmstart").iterdir()) == cached  # init_seed 0 = run d's start
    same = drift([str(tmp_path / "d"), str(tmp_path / "e"), "--tasks", "2", "--group-size", "3", "--rollout-policy", "start"])
    assert same[0]["won"] == same[1]["won"] and same[0]["headroom_mean"] == same[1]["headroom_mean"]
    assert same[0]["policy_drift_mean"] != same[1]["policy_drift_mean"]
    assert "played by the warm start" in capsys.readouterr().out


def test_push_labels_read_the_pushes_off_the_observations_and_split_the_credit():
    """bench.drift_probe.push_labels marks exactly the steps whose move changed the boxes (the env's
    own state, on random and malformed actions), −1 off Sokoban; credit_aucs' push columns restrict
    the shortest-path label to pushes / walks (hand-computed AUCs)."""
    from types import SimpleNamespace
    from bench.drift_probe import credit_aucs, push_labels
    from envs.sokoban import SokobanEnv
    env, rng, trajs, truth = SokobanEnv(max_steps=12), random.Random(0), [], []
    for seed in range(6):
        t = SimpleNamespace(observations=[env.reset(seed)])
        done = False
        while not done:
            before = env._boxes
            act = rng.choice(["<action>up</action>", "<action>down</action>", "<action>left</action>",
                              "<action>right</action>", "<action>jump</action>", "no tag"])
            obs, _, done, _ = env.step(act)
            t.observations.append(obs)
            truth.append(int(env._boxes != before))
        trajs.append(t)
    got = push_labels(trajs)  # (S,)
    assert got.tolist() == truth and 0 < sum(truth) < len(truth)
    assert push_labels([SimpleNamespace(observations=["Item A\nprice 3", "bought"])]).tolist() == [-1]
    # one group, 6 steps: shortest-path label 1 1 0 0 1 0, pushes 1 0 1 0 1 -1 (the last unknown)
    batch = SimpleNamespace(group_id=torch.tensor([0]), num_steps=torch.tensor([6]),
                            step_optimal=torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.int8),
                            traj_cu=torch.tensor([0, 6]))
    pushes = torch.tensor([1, 0, 1, 0, 1, -1], dtype=torch.int8)
    score = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.3, 0.0])
    out = credit_aucs(batch, {"s": score}, pushes)
    assert out["s_sp_push"] == pytest.approx(0.0)  # pushes: good 0.1, 0.3 vs bad 0.5
    assert out["s_sp_walk"] == pytest.approx(1.0)  # walks: good 0.9 vs bad 0.2
    assert out["s_push"] == pytest.approx(2 / 6)  # pushes 0.1 0.5 0.3 vs walks 0.9 0.2: 2 of 6 pairs won
    assert out["push_share_sp"] == pytest.approx(2 / 3) and out["push_share_other"] == pytest.approx(1 / 2)


def test_warmstart_probe_reports_the_expert_probability_per_step(tmp_path, capsys):
    from bench.warmstart_probe import main as probe
    out = probe(["--every", "2", "--probe-episodes", "2", "--tasks", "2", "--", "--env", "sokoban", "--preset", "tiny",
                 "--max-steps", "4", "--warmstart-episodes", "40", "--warmstart-epochs", "1", "--out-dir", str(tmp_path)])
    assert [r["step"] for r in out] == [0, 2, 3]  # 40 episodes in steps of 16: 3 steps, the last probed at the end
    assert all(0 < r["expert_prob"] < 1 for r in out)
    text = capsys.readouterr().out
    assert "held-out success on 2 tasks" in text and "uniform random actions" in text


def test_board_ceiling_the_expert_move_is_shortest_and_learnable_from_the_board(capsys):
    """Every move of an expert episode steps along a shortest solution (so each held-out state has at
    least one shortest move), and an MLP on the one-hot board learns the expert's move well above the
    0.25 of a policy blind to the board, from 400 demonstrations (0.87-0.90 over seeds; the bar is 0.6)."""
    from bench.board_ceiling import expert_states, main as ceiling
    from envs.base import wrap_action
    from envs.sokoban import SokobanEnv
    env = SokobanEnv()
    for seed in range(5):
        env.reset(seed)
        done = False
        while not done:
            _, _, done, info = env.step(wrap_action(env.expert_action()))
            assert info["optimal"] is True
    _, moves, ties = expert_states(range(5), count_ties=True)
    assert len(ties) == len(moves) > 0 and ties.min() >= 1 and ties.max() <= 4
    out = ceiling(["--episodes", "400", "--probe-episodes", "16", "--epochs", "30", "--hidden", "256"])
    assert out["mean_shortest_moves"] >= 1 and out["heldout_expert_prob"] > 0.6
    assert "shortest moves per held-out state" in capsys.readouterr().out


def test_board_ceiling_transformer_rows_and_schedule(capsys):
    """``--transformer`` rows hold the asked-for context and the expert's action (only its tokens
    trained); the Llama takes the warm start's steps (3 passes of ceil(episodes / 16)) and its loss falls."""
    from bench.board_ceiling import context_rows, expert_states, main as ceiling
    from envs.base import wrap_action
    from envs.sokoban import DIRECTIONS, SokobanEnv
    from model import ROLE_TOKENS
    from warmstart import env_tokenizer
    tok = env_tokenizer(SokobanEnv, 1024)
    obs = []
    _, moves, _ = expert_states(range(2), texts=obs)
    system = SokobanEnv().system_prompt
    for sys_text in ("", system):
        rows = context_rows(tok, sys_text, obs, moves)
        assert len(rows) == len(obs) == len(moves)
        for (ids, mask), o, m in zip(rows, obs, moves):
            assert tok.decode([i for i, k in zip(ids, mask) if k]) == wrap_action(DIRECTIONS[m])
            context = tok.decode([i for i, k in zip(ids, mask) if not k])
            assert o in context and (system in context) == bool(sys_text)
            assert (ids[0] == tok.convert_tokens_to_ids(ROLE_TOKENS["system"])) == bool(sys_text)
    out = ceiling(["--episodes", "32", "--probe-episodes", "4", "--epochs", "1", "--hidden", "8", "--transformer"])
    llama = out["transformer"]
    assert [r["step"] for r in llama] == [1, 2, 3, 4, 5, 6]  # 3 passes x ceil(32 / 16) steps
    assert all(0 <= r["heldout_expert_prob"] <= 1 for r in llama) and llama[-1]["loss"] < llama[0]["loss"]
    assert "context 'board'" in capsys.readouterr().out


@pytest.mark.parametrize("env, extra", [("webshop", []), ("webshop", ["--no-numbered-results"]), ("sotopia", [])])
def test_other_envs_run_end_to_end(tmp_path, env, extra):
    """``--env webshop`` (items clicked by place, the local model's preset, or by ID) and ``--env sotopia`` run
    the same loop: one iteration with both evaluations."""
    cfg, _ = parse_config(["--env", env, "--preset", "tiny", "--out-dir", str(tmp_path), "--kernels", "reference",
                           "--iterations", "1", "--eval-tasks", "1", "--max-steps", "3", *extra])
    assert cfg.numbered_results == (env == "webshop" and not extra)
    summary = train(cfg)
    got = rows(tmp_path / f"{env}-{cfg.algo}-istar-s0")
    assert [r["iteration"] for r in got] == [0, 1]
    assert math.isfinite(got[1]["policy/pg_loss"]) and 0 <= got[1]["env/success"] <= 1
    assert 0 <= summary["before"]["eval/expert_prob"] <= 1 and 0 <= summary["after"]["eval/expert_prob"] <= 1


def test_a_local_model_trains_end_to_end_without_dropout(tmp_path):
    """--model PATH: any local HF causal LM, here a tiny Llama saved with attention dropout 0.5; the policy and
    the PRM it is copied into run deterministic forwards in train mode (model.disable_dropout)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from model import build_tokenizer, save_model
    from train import build_models, env_factory
    from warmstart import env_corpus

    cfg = tiny(tmp_path, run_name="local", iterations=1, eval_every=0, eval_tasks=2, model=str(tmp_path / "lm"))
    make = env_factory(cfg)
    tok = build_tokenizer(env_corpus(make, seeds=range(20)), 384)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, attention_dropout=0.5, pad_token_id=tok.pad_token_id))
    save_model(lm, tok, cfg.model)
    _, policy, prm, _, _ = build_models(cfg, make, torch.device("cpu"), tmp_path / "unused")
    x = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        for model in (policy.train(), prm.train()):
            torch.testing.assert_close(model(x).logits, model(x).logits)
    summary = train(cfg)
    assert summary["before"] and summary["after"]
    assert math.isfinite(rows(tmp_path / "local")[1]["policy/pg_loss"])


def test_a_run_saved_before_a_field_existed_loads_with_the_value_it_used(tmp_path):
    """config.json of a run from before ``warmstart_schedule`` existed means its constant lr (so resume,
    --show and bench.heldout --warmstart find and rebuild its warm start); a newer run keeps its own."""
    from bench.heldout import run_config
    from config import LEGACY_DEFAULTS, saved_config
    fields = {f: getattr(Config(), f) for f in Config.__dataclass_fields__}
    old = {k: v for k, v in fields.items() if k not in LEGACY_DEFAULTS}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "config.json").write_text(json.dumps(fields))
    assert Config().warmstart_schedule == "cosine"
    assert run_config(tmp_path / "old", 5, 0.4).warmstart_schedule == "constant"
    assert run_config(tmp_path / "new", 5, 0.4).warmstart_schedule == "cosine"
    assert saved_config(tmp_path / "new" / "config.json") == fields


def test_a_run_whose_rollouts_are_all_invalid_is_flagged():
    """All-invalid training rollouts (a collapsed answer format) get a message naming the iteration and the
    way out; any valid action, or no rollout stats, get none."""
    from train import collapse_warning
    msg = collapse_warning({"iteration": 6, "env/invalid_frac": 1.0})
    assert msg and "iteration 6" in msg and "--lr" in msg
    assert collapse_warning({"iteration": 5, "env/invalid_frac": 0.999}) is None
    assert collapse_warning({"iteration": 1}) is None


@pytest.mark.parametrize("env_name", ["sokoban", "webshop", "sotopia", "locks"])
def test_format_errors_are_the_invalid_actions_without_a_readable_tag(env_name):
    """env/format_error_frac counts the actions with no readable <action> tag: each is also invalid
    (a subset of env/invalid_frac); a well-formed action that names no legal move is invalid only
    (SOTOPIA has none: free text is small talk)."""
    from envs import make_env
    from rollout import Trajectory
    from train import env_metrics
    env = make_env(env_name)
    env.reset(7)
    texts = [f"<action>{env.expert_action()}</action>", "up", "<action>fly to the moon</action>", "<action>up", ""]
    traj = Trajectory(7, 0)
    for text in texts:
        _, reward, done, info = env.step(text)
        traj.actions.append(text)
        traj.step_rewards.append(reward)
        traj.step_valid.append(bool(info["valid_action"]))
    legal_text = env_name == "sotopia"
    assert traj.step_valid == [True, False, legal_text, False, False], traj.step_valid
    m = env_metrics([traj])
    assert m["env/invalid_frac"] == pytest.approx((3 if legal_text else 4) / 5)
    assert m["env/format_error_frac"] == pytest.approx(3 / 5)
    assert env_metrics([Trajectory(7, 0)])["env/format_error_frac"] == 0.0  # no step: no error, no NaN


def test_locks_runs_end_to_end_with_oracle_step_credit(tmp_path, capsys):
    """``--env locks`` (labelled steps, fixed length: ``--max-steps`` doors) runs the loop with the
    oracle's step rewards, which replace the PRM (not trained)."""
    argv = ["--env", "locks", "--preset", "tiny", "--out-dir", str(tmp_path), "--kernels", "reference", "--max-steps", "3",
            "--step-reward-source", "oracle", "--run-name", "locks", "--tasks-per-iter", "4", "--group-size", "4"]
    train(parse_config(argv)[0])
    got = rows(tmp_path / "locks")
    assert [r["iteration"] for r in got] == [0, 1, 2]
    for r in got[1:]:
        assert r["env/steps"] == 3 and 0 <= r["credit/optimal_frac"] <= 1 and math.isfinite(r["policy/pg_loss"])
        assert "prm/dpo_loss" not in r
    # bench.locks_keys: P(key | carving) of the run's checkpoint and of its warm start; the table's
    # stats against a hand-made table (4 carvings, the rule's key of each first, then a shared favourite)
    from bench.locks_keys import key_stats, main
    main([str(tmp_path / "locks"), "--warmstart"])
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert lines[0].startswith("warm start p_right") and lines[1].startswith(str(tmp_path / "locks"))
    from envs.locks import KEYS, RULE, SHAPES
    table = np.full((4, 4), 0.1)
    for c, shape in enumerate(SHAPES[:4]):
        table[c, KEYS.index(RULE[shape])] = 0.6
    stats = key_stats(table, list(SHAPES[:4]))
    assert stats["p_right"] == pytest.approx(0.6) and stats["p_keys"] == pytest.approx(0.9) and stats["argmax_right"] == 1.0
    table[:, 0] = 0.7  # one key for every carving
    stats = key_stats(table, list(SHAPES[:4]))
    assert stats["same_argmax"] == 1.0 and stats["argmax_right"] == sum(RULE[s] == KEYS[0] for s in SHAPES[:4]) / 4


def test_resume_takes_only_its_flags_from_the_command_line(tmp_path):
    """``--resume RUN`` keeps the run's settings except RESUME_FLAGS given on the command line (e.g.
    --iterations, or --step-reward-source oracle to continue with the env's labels as step credit);
    other flags are ignored, and a combination that fails validation is refused."""
    from train import resumed_config
    run = tmp_path / "run"
    run.mkdir()
    saved = tiny(tmp_path, env="locks", iterations=2, lr=3e-4)
    (run / "config.json").write_text(json.dumps(saved.__dict__))
    (run / "checkpoint.pt").write_bytes(b"")  # resumed_config only checks that it is there
    argv = ["--resume", str(run), "--iterations=6", "--step-reward-source", "oracle", "--lr", "1e-3", "--no-fsdp"]
    cfg = resumed_config(run, parse_config(argv)[0], argv)
    assert (cfg.iterations, cfg.step_reward_source, cfg.lr, cfg.env) == (6, "oracle", 3e-4, "locks")
    (run / "config.json").write_text(json.dumps({**saved.__dict__, "env": "webshop"}))  # no step labels
    with pytest.raises(ValueError, match="--step-reward-source"):
        resumed_config(run, parse_config(argv)[0], argv)


def test_a_run_folder_is_never_overwritten_and_resume_says_what_to_do(tmp_path):
    """A new run into a folder that holds one is refused, naming ``--resume``; ``--resume`` of a folder with no run, or of a run stopped before its first checkpoint, stops with
    a message naming what is missing; and a fresh start into such a run's folder says to delete it
    rather than to --resume it (which could not work)."""
    from train import resumed_config
    cfg = tiny(tmp_path, run_name="r")
    with pytest.raises(SystemExit, match="no run there"):
        resumed_config(tmp_path / "nothing", cfg, [])
    run = Path(cfg.out_dir) / cfg.run_name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.__dict__))
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 0}) + "\n")  # the evaluation before RL, then killed
    with pytest.raises(SystemExit, match="no checkpoint.pt.*delete the folder"):
        resumed_config(run, cfg, [])
    with pytest.raises(SystemExit, match="already holds a run; no checkpoint.pt"):
        train(cfg)
    (run / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="continue it with --resume " + re.escape(str(run))):
        train(cfg)
    assert (run / "metrics.jsonl").read_text() == '{"iteration": 0}\n'  # never overwritten


def test_a_context_too_short_for_the_prompt_fails_before_any_work(tmp_path):
    cfg = tiny(tmp_path, run_name="short", max_context=64)
    with pytest.raises(ValueError, match=r"--max-context: expected at least \d+ tokens"):
        train(cfg)
    assert not (tmp_path / "short" / "metrics.jsonl").exists()  # no warm start, no evaluation ran


def test_no_system_prompt_rows_start_with_the_observation_and_replay_uses_the_runs_env(tmp_path, capsys):
    """--no-system-prompt: every env the run makes has no system prompt, so a prompt starts with the user
    turn; the warm-start cache tells it apart from the default (test_warmstart: whose hash is that of
    runs before the knob); --show replays a run in its own env (here Locks with 16 carvings, no system prompt)."""
    import dataclasses
    from model import ROLE_TOKENS, format_prompt
    from replay import replay_episode
    from train import env_factory
    from warmstart import EVAL_SEED_BASE, cache_dir, env_tokenizer
    cfg = tiny(tmp_path, run_name="bare", env="locks", carvings=16, iterations=1, system_prompt=False)
    make = env_factory(cfg)
    assert make().system_prompt == "" and env_factory(dataclasses.replace(cfg, system_prompt=True))().system_prompt
    tok = env_tokenizer(make, cfg.vocab_size)
    prompt = format_prompt(tok, make().system_prompt, make().reset(5))
    assert prompt[0] == tok.convert_tokens_to_ids(ROLE_TOKENS["user"])
    assert cache_dir(cfg, tok) != cache_dir(dataclasses.replace(cfg, system_prompt=True), tok)
    train(cfg)
    capsys.readouterr()
    replay_episode(tmp_path / "bare", cfg)
    first = make().reset(EVAL_SEED_BASE)
    assert first in capsys.readouterr().out
    assert first != env_factory(dataclasses.replace(cfg, carvings=0))().reset(EVAL_SEED_BASE)  # the test can tell
