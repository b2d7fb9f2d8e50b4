"""Train an LLM agent with iStar (or its base algorithm alone) on a bundled environment.

    python train.py --env sokoban                      # RLOO w/ iStar, the paper's main configuration
    python train.py --env sokoban --algo grpo --no-istar
    python train.py --env sokoban --preset tiny        # a CPU smoke run: 2 iterations, seconds
    python train.py --resume runs/sokoban-rloo-istar-s0
    python train.py --plot runs/*                      # learning curves to a PNG
    python train.py --show runs/sokoban-rloo-istar-s0  # replay an episode with its implicit step rewards
    torchrun --nproc_per_node=K train.py --env sokoban  # K data-parallel ranks (add --fsdp for big models)

The loop is paper.md "The loop" (paper Algorithm 1): roll out N tasks × G rollouts with π_θold,
update the implicit PRM with the trajectory DPO loss and score every step with it (E1-E3),
combine episode- and step-level advantages (E5-E7), PPO-clip the policy (E8). The stages live in
istar.py; this file is the wiring: config → seeding → setup → warm start → loop → logging.
Config fields are documented in config.py (`--help`); metrics are defined in README.md.

Under torchrun each rank rolls out its share of whole tasks and the updates are synchronised
(distributed.py: what each rank does); rank 0 alone logs, plots and checkpoints. Training and
evaluation rollouts give every task its own sampling generator, seeded from (seed, iteration, task),
so that K ranks sample what one process samples.

Deviations from the paper: the default model is a few-million-parameter Llama built locally and
warm-started on noisy expert demonstrations (warmstart.py), since it knows nothing otherwise;
learning rates and batch sizes are set for that model (config.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import distributed
from config import Config, parse_config, saved_config, validate
from envs import make_env, parse_action
from istar import NonFiniteError, istar_update
from model import build_default_model, clone_model, disable_dropout, format_prompt, load_model, save_model
from rollout import Trajectory, pack, rollout
from warmstart import EVAL_SEED_BASE, cached_warm_start, env_tokenizer, expert_probe, expert_rows, warm_start



# ---------------------------------------------------------------------------------------------
# Setup (TRY NOT TO MODIFY: boilerplate)
# ---------------------------------------------------------------------------------------------
def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: CUDA is not available on this machine")
    return torch.device(cfg.device)


def env_factory(cfg: Config):
    kwargs = {"max_steps": cfg.max_steps} if cfg.max_steps else {}
    if cfg.carvings:  # Locks only (config.validate)
        kwargs["carvings"] = cfg.carvings
    for name in ("shuffle_ids", "numbered_results"):  # WebShop only (config.validate)
        if getattr(cfg, name):
            kwargs[name] = True
    make_env(cfg.env, **kwargs)  # fail early on a bad env name or argument
    make = partial(make_env, cfg.env, **kwargs)
    return make if cfg.system_prompt else partial(without_system_prompt, make)


def without_system_prompt(make):
    """An env from ``make`` whose rows start with the first observation (--no-system-prompt)."""
    env = make()
    env.system_prompt = ""
    return env


def autocast(cfg: Config, device: torch.device):
    on = cfg.bf16 and device.type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16) if on else nullcontext()


def build_models(cfg: Config, make, device, run_dir: Path):
    """Policy + tokenizer (built locally, or loaded from --model), the PRM as a copy, optimisers."""
    if cfg.model:
        policy, tokenizer = load_model(cfg.model, device)
    elif (run_dir / "tokenizer").is_dir():  # resuming a run: reuse its tokenizer
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer", local_files_only=True)
        policy = build_default_model(tokenizer, cfg.model_size, seed=cfg.start_seed).to(device)
    else:
        tokenizer = env_tokenizer(make, cfg.vocab_size)
        tokenizer.save_pretrained(run_dir / "tokenizer")
        policy = build_default_model(tokenizer, cfg.model_size, seed=cfg.start_seed).to(device)
    disable_dropout(policy)  # a loaded LM may have dropout: old log-probs, PRM passes and PPO ratios need none
    prm = clone_model(policy)  # π_φ initialised from the policy (paper.md E3)
    policy_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=0.0)  # constant lr (paper.md E8)
    prm_opt = torch.optim.AdamW(prm.parameters(), lr=cfg.prm_lr, weight_decay=0.0)
    return tokenizer, policy, prm, policy_opt, prm_opt


def reference_policy(cfg: Config, policy):
    """A frozen copy of the policy, π_0 (train() gives it the weights RL starts from, after the warm start,
    and a resume those of the run's start), when something needs it: the KL penalty (``kl_coef``) or E1
    against a fixed reference (``prm_reference="start"``); else None."""
    needed = cfg.kl_coef > 0 or (cfg.istar and cfg.step_reward_source == "prm" and cfg.prm_reference == "start")
    return clone_model(policy).eval().requires_grad_(False) if needed else None


def check_context(cfg: Config, tokenizer, make) -> None:
    """Fail before any work when --max-context cannot hold a task's prompt (system + first observation)
    and one action: every row would overflow it (rollout.py keeps such rows whole, with a warning)."""
    env = make()
    need = len(format_prompt(tokenizer, env.system_prompt, env.reset(EVAL_SEED_BASE))) + cfg.max_action_tokens
    if need > cfg.max_context:
        raise ValueError(f"--max-context: expected at least {need} tokens (the prompt of a {cfg.env} task and "
                         f"--max-action-tokens {cfg.max_action_tokens}), got {cfg.max_context}")


# ---------------------------------------------------------------------------------------------
# Checkpoints: written atomically (tmp file + os.replace), everything needed to resume exactly
# ---------------------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, iteration: int, policy, prm, policy_opt, prm_opt, rngs: dict, env_steps: int,
                    ref_policy=None) -> Path:
    """Full, unsharded state (the one-process format, so any number of ranks resumes it); rank 0 writes.
    ``ref_policy``: the frozen policy RL started from (``reference_policy``), kept so a resume keeps it."""
    state = {
        "iteration": iteration, "env_steps": env_steps,
        "policy": distributed.model_state(policy), "prm": distributed.model_state(prm),
        "ref": None if ref_policy is None else ref_policy.state_dict(),
        "policy_opt": distributed.optim_state(policy, policy_opt), "prm_opt": distributed.optim_state(prm, prm_opt),
        "torch_rng": torch.get_rng_state(), "shuffle_rng": rngs["shuffle"].get_state(),
        "numpy_rng": rngs["tasks"].bit_generator.state, "python_rng": random.getstate(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    path = run_dir / "checkpoint.pt"
    if not distributed.is_main():
        return path
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic on POSIX: a crash leaves the previous checkpoint intact
    return path


# Flags a resumed run takes from the command line; every other setting is the run's own (config.json).
# step_reward_source: continue a run with the env's labels as step credit (an experiment, docs/results.md).
RESUME_FLAGS = ("iterations", "device", "eval_every", "save_every", "fsdp", "step_reward_source")
NO_CHECKPOINT = ("no checkpoint.pt: the run stopped before its first checkpoint (written every --save-every "
                 "iterations and at the end), so there is nothing to continue; delete the folder to start it again")


def resumed_config(run_dir, cfg: Config, argv: list[str]) -> Config:
    """The config of the run saved in ``run_dir``, with the RESUME_FLAGS given in ``argv`` taken from ``cfg``."""
    if not (Path(run_dir) / "config.json").is_file():
        raise SystemExit(f"--resume {run_dir}: no run there (a run folder holds the config.json a run writes when it starts)")
    if not (Path(run_dir) / "checkpoint.pt").is_file():
        raise SystemExit(f"--resume {run_dir}: {NO_CHECKPOINT}")
    saved = saved_config(Path(run_dir) / "config.json")
    given = {a.split("=")[0] for a in argv}
    saved.update({k: getattr(cfg, k) for k in RESUME_FLAGS
                  if {f"--{k.replace('_', '-')}", f"--no-{k.replace('_', '-')}"} & given})
    resumed = Config(**saved)
    validate(resumed)
    return resumed


def load_checkpoint(run_dir: Path, policy, prm, policy_opt, prm_opt, rngs: dict,
                    fresh_policy_opt: bool = False, ref_policy=None) -> tuple[int, int]:
    """Restore everything ``save_checkpoint`` wrote; ``fresh_policy_opt`` keeps the policy's new AdamW
    (no moments, step 0) instead: an experiment on the optimiser's memory (docs/results.md, Locks).
    A checkpoint without a reference policy (a run that needed none, or one from before checkpoints kept
    it) gives ``ref_policy`` the resumed policy."""
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    policy.load_state_dict(state["policy"])
    prm.load_state_dict(state["prm"])
    if ref_policy is not None:
        ref_policy.load_state_dict(state["policy"] if state.get("ref") is None else state["ref"])
    if not fresh_policy_opt:
        policy_opt.load_state_dict(state["policy_opt"])
    prm_opt.load_state_dict(state["prm_opt"])
    torch.set_rng_state(state["torch_rng"])
    rngs["shuffle"].set_state(state["shuffle_rng"])
    rngs["tasks"].bit_generator.state = state["numpy_rng"]
    random.setstate(state["python_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["iteration"], state["env_steps"]


# ---------------------------------------------------------------------------------------------
# Rollouts, evaluation, metrics
# ---------------------------------------------------------------------------------------------
def rollout_kwargs(cfg: Config, device) -> dict:
    return dict(top_p=cfg.top_p, max_action_tokens=cfg.max_action_tokens, max_context=cfg.max_context,
                max_history_steps=cfg.history_steps or None, device=device, engine=cfg.rollout_engine,
                cuda_graphs=cfg.cuda_graphs)


def env_metrics(trajs, prefix="env") -> dict:
    steps = [t.num_steps for t in trajs]
    valid = [v for t in trajs for v in t.step_valid]
    unreadable = [parse_action(a) is None for t in trajs for a in t.actions]  # (S,) the answer format broke
    return {
        f"{prefix}/success": float(np.mean([t.won for t in trajs])),
        f"{prefix}/return": float(np.mean([t.outcome for t in trajs])),
        f"{prefix}/steps": float(np.mean(steps)),
        f"{prefix}/invalid_frac": 1.0 - float(np.mean(valid)) if valid else 0.0,
        # the share of invalid_frac with no readable <action> tag (Env.step parses with the same function)
        f"{prefix}/format_error_frac": float(np.mean(unreadable)) if unreadable else 0.0,
    }


@torch.no_grad()
def evaluate(policy, tokenizer, make, cfg: Config, device, modes=("greedy", "sampled", "expert")) -> dict:
    """Held-out tasks (seeds ≥ 2**31), one rollout each: greedy and/or sampled at eval_temperature;
    and ("expert") the policy's mean probability of the expert's action along ``eval_tasks`` held-out
    expert episodes, and its mean entropy at those actions' tokens (warmstart.expert_probe). Under
    torchrun each rank plays its share of the seeds and the episodes are gathered."""
    seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + cfg.eval_tasks))
    lo, hi = distributed.shard(len(seeds))
    out = {}
    for name, temperature in (("greedy", 0.0), ("sampled", cfg.eval_temperature)):
        if name not in modes:
            continue
        gens = distributed.task_generators(seeds, (12345,), device)[lo:hi]  # fixed: never touches the training RNG
        with distributed.gathered(policy):
            trajs = rollout(distributed.unwrap(policy), tokenizer, make, seeds[lo:hi], 1, temperature=temperature, generator=gens,
                            **rollout_kwargs(cfg, device))
        m = env_metrics(gather_episodes(trajs), "eval")
        out.update({f"{k}_{name}": v for k, v in m.items()})
    if "expert" in modes:  # the same rows on every rank: no gather needed
        rows = expert_rows(tokenizer, make, cfg, cfg.eval_tasks)
        with distributed.gathered(policy):
            prob, entropy = expert_probe(distributed.unwrap(policy), rows, tokenizer.pad_token_id, device)
            out["eval/expert_prob"], out["eval/expert_entropy"] = prob, entropy
    return out


def gather_episodes(trajs: list[Trajectory]) -> list[Trajectory]:
    """Every rank's episodes, without their token rows (what env_metrics needs); as is on one process."""
    if distributed.world_size() == 1:
        return trajs
    light = [Trajectory(t.task_seed, t.group_id, step_rewards=t.step_rewards, step_valid=t.step_valid,
                        actions=t.actions, won=t.won, score=t.score) for t in trajs]
    return distributed.gather_objects(light)


def log_metrics(run_dir: Path, row: dict, writer=None) -> None:
    row = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}  # strict JSON
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and v is not None and k not in ("iteration", "env_steps"):
                writer.add_scalar(k, v, row["env_steps"])


def truncate_metrics(run_dir: Path, iteration: int) -> None:
    """On resume, drop metric rows written after the checkpoint (they will be written again)."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["iteration"] <= iteration]
        path.write_text("".join(r + "\n" for r in rows))


class GracefulStop:
    """SIGTERM or a first Ctrl-C asks the run to stop after the iteration in flight: it then evaluates,
    checkpoints and writes its summary (marked ``"stopped": "signal"``) as at a normal end, so a
    preempted or deadline-bound run loses nothing and ``--resume`` continues it. A second Ctrl-C
    aborts at once. Under torchrun the ranks agree (any rank's request stops all of them)."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner's worker): no handler
                pass
        return self

    def _handle(self, sig, frame):
        if self.requested and sig == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if distributed.is_main():
            print(f"\n{signal.Signals(sig).name}: stopping after this iteration (evaluation, checkpoint, summary)"
                  + ("; Ctrl-C again to abort now" if sig == signal.SIGINT else ""), flush=True)

    def agreed(self) -> bool:
        return distributed.all_sum([float(self.requested)])[0] > 0

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def collapse_warning(row: dict) -> str | None:
    """The message for an iteration whose training rollouts had no valid action at all: every episode then
    earns the same penalties, every advantage is 0 and RL cannot leave that state (docs/results.md, Sokoban: one
    update at lr 3e-4, α = 4 did this to the small model). None otherwise."""
    if row.get("env/invalid_frac", 0.0) < 1.0:
        return None
    return (f"iteration {row['iteration']}: every action of every training rollout was invalid (env/invalid_frac 1.0): "
            "the returns are all equal, every advantage is 0 and RL cannot recover. An update broke the answer format "
            "(checkpoint.pt will hold the broken policy from the next save on); start again with a lower --lr "
            "(or --step-adv-coef).")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def train(cfg: Config, resume: str | None = None, fresh_policy_opt: bool = False) -> dict:
    # --- config, run folder, seeding ---
    device = distributed.setup(resolve_device(cfg))  # torchrun: join the process group; else unchanged
    if cfg.fsdp and not torch.distributed.is_initialized():
        raise ValueError("--fsdp: expected a torchrun launch (torchrun --nproc_per_node=K train.py ... --fsdp)")
    main = distributed.is_main()
    run_dir = Path(resume) if resume else Path(cfg.out_dir) / (cfg.run_name or f"{cfg.env}-{cfg.algo}{'-istar' if cfg.istar else ''}-s{cfg.seed}")
    if not resume and (run_dir / "metrics.jsonl").exists():  # a second run would append to the first one's metrics
        how = f"continue it with --resume {run_dir}" if (run_dir / "checkpoint.pt").is_file() else NO_CHECKPOINT
        raise SystemExit(f"{run_dir} already holds a run; {how}; or choose another --run-name / --out-dir")
    make = env_factory(cfg)  # a bad env argument fails here, before the run folder exists
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rngs = {"tasks": np.random.default_rng(cfg.seed),  # training task seeds (sampling: one generator per task)
            "shuffle": torch.Generator().manual_seed(cfg.seed)}  # PPO minibatch order

    # --- env, model, PRM setup ---
    with distributed.main_first():  # rank 0 builds and saves the tokenizer, the others then load it
        tokenizer, policy, prm, policy_opt, prm_opt = build_models(cfg, make, device, run_dir)
    check_context(cfg, tokenizer, make)
    start, env_steps = 0, 0
    ref_policy = reference_policy(cfg, policy)
    if resume:
        start, env_steps = load_checkpoint(run_dir, policy, prm, policy_opt, prm_opt, rngs, fresh_policy_opt, ref_policy)
        if main:
            truncate_metrics(run_dir, start)
            print(f"resumed {run_dir} at iteration {start}" + (" with a fresh policy optimiser" if fresh_policy_opt else ""))
    elif cfg.warmstart == "on" or (cfg.warmstart == "auto" and not cfg.model):
        if main:  # rank 0 warm-starts, then broadcasts (below): every rank starts RL from the same weights
            ws = (cached_warm_start if cfg.warmstart_cache else warm_start)(policy, tokenizer, make, cfg, device, progress=True)  # SFT on noisy expert demos
            print(f"warm start: {ws}")
        distributed.broadcast_params(policy)
        prm.load_state_dict(policy.state_dict())  # the PRM starts from the warm-started policy too
    if ref_policy is not None and not resume:
        ref_policy.load_state_dict(policy.state_dict())  # π_0: the policy RL starts from
    if cfg.fsdp:  # shard parameters, gradients and optimiser states; optimisers are rebuilt over the shards
        policy, policy_opt = distributed.shard_model(policy, policy_opt, device)
        prm, prm_opt = distributed.shard_model(prm, prm_opt, device)
    writer = None
    if cfg.tensorboard and main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir / "tb")
    summary = {}
    if start == 0:
        with autocast(cfg, device):
            summary["before"] = evaluate(policy, tokenizer, make, cfg, device)
        if main:
            log_metrics(run_dir, {"iteration": 0, "env_steps": 0, **summary["before"]}, writer)
            print(f"before RL: success greedy {summary['before']['eval/success_greedy']:.3f}, sampled {summary['before']['eval/success_sampled']:.3f}, "
                  f"expert action prob {summary['before']['eval/expert_prob']:.3f}")

    bar = tqdm(range(start + 1, cfg.iterations + 1), initial=start, total=cfg.iterations, desc=run_dir.name, dynamic_ncols=True, disable=not main)
    interrupted = collapsed = False
    with GracefulStop() as stop:  # SIGTERM / Ctrl-C end the run after the iteration in flight
        for it in bar:
            # ALGO LOGIC: one iteration of paper Algorithm 1
            t0 = time.time()
            rng_at_start = (rngs["tasks"].bit_generator.state, rngs["shuffle"].get_state())  # to repeat this iteration
            seeds = rngs["tasks"].integers(0, EVAL_SEED_BASE, size=cfg.tasks_per_iter).tolist()  # the same on every rank
            lo, hi = distributed.shard(len(seeds))  # this rank's whole tasks (groups)
            gens = distributed.task_generators(seeds, (cfg.seed, it), device)[lo:hi]
            policy.eval()
            with torch.no_grad(), autocast(cfg, device), distributed.gathered(policy):
                trajs = rollout(distributed.unwrap(policy), tokenizer, make, seeds[lo:hi], cfg.group_size, temperature=cfg.temperature,
                                generator=gens, **rollout_kwargs(cfg, device))
            t_roll = time.time() - t0
            batch = pack(trajs, device, tokenizer.pad_token_id)
            policy.train()
            try:
                with autocast(cfg, device):
                    stats = istar_update(policy, prm, policy_opt, prm_opt, batch, cfg, ref_policy, rngs["shuffle"])
            except NonFiniteError as err:  # (under --fsdp saving is collective: the last periodic checkpoint stays)
                # The parameters are finite (every step is checked before it is applied), but iteration `it`
                # may be partly applied (the PRM step, earlier minibatches). The checkpoint holds them with
                # the RNG states of the iteration's start, so --resume repeats iteration `it` on the same tasks.
                rngs["tasks"].bit_generator.state, _ = rng_at_start
                rngs["shuffle"].set_state(rng_at_start[1])
                path = run_dir / "checkpoint.pt" if cfg.fsdp else save_checkpoint(run_dir, it - 1, policy, prm, policy_opt, prm_opt, rngs, env_steps, ref_policy)
                raise SystemExit(f"iteration {it}: {err}. Saved the last finite parameters (iteration {it} possibly partly "
                                 f"applied) to {path}. Lower --lr/--prm-lr or check the env's rewards, then --resume.") from err
            episodes = gather_episodes(trajs)  # every rank's
            env_steps += sum(t.num_steps for t in episodes)
            gen_tokens = distributed.all_sum([sum(len(t.logp) for t in trajs)])[0]
            row = {"iteration": it, "env_steps": env_steps, **env_metrics(episodes), **stats,
                   "perf/tokens_per_s": gen_tokens / max(t_roll, 1e-9), "perf/rollout_s": t_roll, "perf/iter_s": time.time() - t0}
            # TRY NOT TO MODIFY: evaluation, logging, checkpoints
            done = it == cfg.iterations or 0 < cfg.max_env_steps <= env_steps  # env_steps is global: all ranks agree
            interrupted = stop.agreed() and not done  # SIGTERM / Ctrl-C: end here as at a normal end (GracefulStop)
            last = done or interrupted
            if cfg.eval_every and it % cfg.eval_every == 0 or last:
                with autocast(cfg, device):
                    row.update(evaluate(policy, tokenizer, make, cfg, device))
            if main:
                log_metrics(run_dir, row, writer)
                if not collapsed and (msg := collapse_warning(row)):
                    tqdm.write(msg)  # once per run
                    collapsed = True
            prm_acc = row.get("prm/acc", row.get("prm/ce_acc"))  # absent without iStar
            bar.set_postfix(success=f"{row['env/success']:.2f}", ret=f"{row['env/return']:.2f}",
                            prm_acc="-" if prm_acc is None else f"{prm_acc:.2f}", kl=f"{row['policy/approx_kl']:.1e}")
            if it % cfg.save_every == 0 or last:
                save_checkpoint(run_dir, it, policy, prm, policy_opt, prm_opt, rngs, env_steps, ref_policy)
            if last:
                if it < cfg.iterations and main and not interrupted:
                    print(f"stopping after iteration {it}: {env_steps} env steps reached --max-env-steps {cfg.max_env_steps}")
                break
    for name, model in (("policy", policy), ("prm", prm)):
        state = distributed.model_state(model)  # full weights (a collective under FSDP)
        if main and not cfg.fsdp:
            save_model(model, tokenizer, str(run_dir / name))
        elif main:
            distributed.unwrap(model).save_pretrained(run_dir / name, state_dict=state)
            tokenizer.save_pretrained(run_dir / name)
    distributed.barrier()  # the others read rank 0's metrics below
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary["before"] = next((r for r in rows if r["iteration"] == 0), {})
    summary["after"] = next((r for r in reversed(rows) if "eval/success_greedy" in r), {})
    b, a = summary["before"], summary["after"]
    if interrupted:
        summary["stopped"] = "signal"  # ended early on request: sweep.py resumes such a run
    if not main:
        return summary
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if b and a:
        print(f"success on {cfg.eval_tasks} held-out tasks (greedy / sampled T={cfg.eval_temperature}): "
              f"before RL {b['eval/success_greedy']:.3f} / {b['eval/success_sampled']:.3f}, "
              f"after RL {a['eval/success_greedy']:.3f} / {a['eval/success_sampled']:.3f}; expert action prob "
              f"{b.get('eval/expert_prob', float('nan')):.3f} -> {a.get('eval/expert_prob', float('nan')):.3f}")
    if interrupted:
        print(f"stopped on request after iteration {rows[-1]['iteration']} of {cfg.iterations}; continue with "
              f"python train.py --resume {run_dir}")
    if writer is not None:
        writer.close()
    return summary


def show(run_dir: str, cfg: Config) -> None:
    """Replay one held-out episode of a trained run, printing each step's implicit reward r_φ (E1)."""
    from replay import replay_episode

    replay_episode(Path(run_dir), cfg)


if __name__ == "__main__":
    cfg, args = parse_config(sys.argv[1:])
    if args.plot:
        from plot import plot_runs

        print(plot_runs(args.plot, Path(args.plot[0]) / "curves.png" if len(args.plot) == 1 else "curves.png"))
    elif args.fresh_policy_optimizer and not args.resume:
        raise SystemExit("--fresh-policy-optimizer: only with --resume RUN_DIR (a new run's optimiser is fresh anyway)")
    elif args.show:
        show(args.show, cfg)
    elif args.resume:
        train(resumed_config(args.resume, cfg, sys.argv[1:]), resume=args.resume, fresh_policy_opt=args.fresh_policy_optimizer)
    else:
        train(cfg)
    distributed.teardown()
