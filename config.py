"""Every knob of a training run: one dataclass, one documented field per knob, parsed from the CLI.

`python train.py --help` prints these fields grouped as below, with the help text taken from each
field's `doc`. Per-env presets (PRESETS, and LOCAL_MODEL_PRESETS when no --model is given) change the
defaults so the bare `python train.py --env X` uses good settings; any flag given on the command line
wins over the preset. The paper's values (paper.md) are the defaults where they make sense for a
few-million-parameter model; where we differ (learning rates, batch sizes), the field's doc says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from envs import REGISTRY


def knob(default, doc: str, group: str, choices=None):
    return field(default=default, metadata={"doc": doc, "group": group, "choices": choices})


@dataclass
class Config:
    # --- env ------------------------------------------------------------------------------
    env: str = knob("sokoban", "environment: sokoban | webshop | sotopia | locks (a diagnostic of step credit, not in the paper)", "env", list(REGISTRY))
    max_steps: int = knob(0, "episode step limit; 0 = the env's own (paper: Sokoban 15, WebShop 10; Locks: its number of doors, 6)", "env")
    carvings: int = knob(0, "Locks only: number of distinct carvings, a multiple of 4 up to 64 (a larger hidden rule, each carving seen at fewer doors per batch); 0 = the env's own (4)", "env")
    system_prompt: bool = knob(True, "start every row with the env's system prompt (its rules and answer format, as the paper's prompts); --no-system-prompt: observations and actions only (a model trained from scratch learns the format from demonstrations and cannot read the prompt; bench.board_ceiling --transformer measures what the constant prefix costs its warm start). The sokoban preset turns it off for the locally built model, not with --model", "env")
    numbered_results: bool = knob(False, "WebShop only: label the results page's items 1-10 and click one with click[<k>], instead of by product ID (a from-scratch model never learned to copy an ID; README Results, WebShop). The webshop preset turns it on for the locally built model, not with --model (a pretrained LM copies IDs)", "env")
    shuffle_ids: bool = knob(False, "WebShop only: show the products of each task under a permutation of the catalogue's IDs (goals, pages and rewards unchanged), so a click must copy an ID from the page, not recall one memorised from demonstrations", "env")
    # --- model ----------------------------------------------------------------------------
    model: str = knob("", "path of a local Hugging Face causal LM; empty = build the small default model locally", "model")
    model_size: str = knob("small", "size of the locally built default model", "model", ["tiny", "small"])
    vocab_size: int = knob(1024, "BPE vocabulary of the locally built tokenizer (an env's copyable names, e.g. WebShop's product IDs, are added on top)", "model")
    device: str = knob("auto", "auto | cpu | cuda | cuda:K", "model")
    bf16: bool = knob(True, "bf16 autocast for forward passes on CUDA (fp32 master weights); ignored on CPU", "model")
    warmstart: str = knob("auto", "SFT on noisy expert demos before RL: auto (only for the locally built model) | on | off", "model", ["auto", "on", "off"])
    warmstart_episodes: int = knob(1500, "number of demonstration episodes for the warm start", "model")
    warmstart_random_frac: float = knob(0.3, "fraction of demo actions replaced by random ones (keeps the start imperfect; the Sokoban preset and WebShop's for the locally built model: 0, the small model stays imperfect by itself)", "model")
    warmstart_epochs: int = knob(3, "passes over the demonstrations (in steps of 16 episodes; how much of a Sokoban board a budget teaches: python -m bench.warmstart_probe)", "model")
    warmstart_lr: float = knob(1e-3, "peak learning rate of the warm start", "model")
    warmstart_schedule: str = knob("cosine", "warm-start lr over its steps: cosine = linear warm-up over the first twentieth of the steps, then cosine decay to a tenth of the peak | constant (the schedule of runs before 2026-12-05)", "model", ["cosine", "constant"])
    warmstart_cache: bool = knob(True, "reuse the warm start of a run with identical warm-start settings (<out_dir>/.warmstart/)", "model")
    init_seed: int = knob(-1, "seed of the starting policy (the default model's init and its warm start); -1 = --seed. One value for every seed of a sweep starts all its RL runs from one policy, as the paper's seeds start from one pretrained LLM (and one cached warm start serves them all)", "model")
    # --- rollout --------------------------------------------------------------------------
    tasks_per_iter: int = knob(32, "N tasks (env seeds) per iteration (paper: Sokoban 32, WebShop 16)", "rollout")
    group_size: int = knob(8, "G rollouts per task, one group (paper: 8)", "rollout")
    temperature: float = knob(1.0, "sampling temperature of training rollouts (PPO ratio and E1 use the untempered π_θold: keep 1)", "rollout")
    top_p: float = knob(1.0, "nucleus sampling of training rollouts (as temperature: keep 1 for on-policy ratios)", "rollout")
    max_action_tokens: int = knob(48, "generation limit of one action (tokens); a longer answer is cut and invalid", "rollout")
    max_context: int = knob(1024, "context limit; longer trajectories keep the prompt + most recent steps", "rollout")
    history_steps: int = knob(0, "past steps kept in the context (paper's Sokoban: 2); 0 = all that fit in max_context", "rollout")
    rollout_engine: str = knob("auto", "decode cache: static (engine.py: preallocated cache, functional Llama-family forward) | hf (the model's own forward; any HF causal LM) | auto (static when the model passes its check)", "rollout", ["auto", "static", "hf"])
    cuda_graphs: bool = knob(True, "capture the static engine's decode step in CUDA graphs (CUDA only; falls back to eager on any failure)", "rollout")
    # --- implicit PRM (paper.md E1-E4, E9) ------------------------------------------------
    istar: bool = knob(True, "add iStar's implicit step rewards (α·A^S) to the base algorithm", "prm")
    beta: float = knob(0.05, "β of the implicit reward, paper Eq. 1 (paper: 0.05)", "prm")
    prm_lr: float = knob(0.0, "PRM AdamW learning rate; 0 = auto: twice the policy's, as the paper (1e-6 vs 5e-7): 2e-4 for the locally built model, 1e-6 with --model", "prm")
    prm_grad_clip: float = knob(10.0, "PRM gradient-norm clip (paper: 10)", "prm")
    q_reduce: str = knob("sum", "trajectory score Q: sum of step rewards (paper Eq. 2) | mean (released code)", "prm", ["sum", "mean"])
    pair_rule: str = knob("threshold", "DPO pairs: threshold = won x lost in a group (paper) | graded = every better/worse pair", "prm", ["threshold", "graded"])
    prm_steps: int = knob(1, "PRM DPO optimiser steps per iteration on its pairs (paper: 1); more keeps π_φ ahead of the policy its rewards are measured against (README Results, Locks)", "prm")
    prm_nll_coef: float = knob(0.0, "weight λ of an NLL term on the preferred trajectories' action tokens added to the PRM's DPO loss (RPO, Pang et al. 2024; not in the paper: 0); keeps π_φ from drifting away from what won", "prm")
    prm_reference: str = knob("old", "reference policy of the implicit reward, paper Eq. 1: old = π_θold, the policy that sampled the batch (paper) | start = the policy RL started from (after the warm start), frozen, as DPO's and PRIME's π_ref (not the paper: an ablation; on Locks all 10 runs with it ended writing invalid text, the policy climbing r_φ, which π_θold as the reference bounds: README Results, Locks)", "prm", ["old", "start"])
    prm_order: str = knob("before", "score steps with the PRM before its update (released code) | after (one more forward)", "prm", ["before", "after"])
    granularity: str = knob("step", "implicit reward per step (iStar) | token (PRIME ablation, paper.md E9)", "prm", ["step", "token"])
    scale_step_rewards: bool = knob(False, "divide step rewards by the batch max |r| (released code, paper.md E4)", "prm")
    # --- advantage (paper.md E5-E7) -------------------------------------------------------
    algo: str = knob("rloo", "base algorithm of the episode advantage (paper: RLOO w/ iStar)", "advantage", ["rloo", "grpo", "reinforce++"])
    step_adv_coef: float = knob(1.0, "α: weight of the step-level advantage, paper Eq. 5 (paper: 1.0)", "advantage")
    combine: str = knob("advantages", "how iStar joins the step rewards to the outcome: advantages = A^E + α·A^S, each normalised on its own (paper Eq. 5, E7) | rewards = the paper's \"merged rewards\" ablation: every step gets R + α·r, then the base algorithm's group formula over the group's steps (advantage.py::merged_advantage; the paper finds it clearly worse)", "advantage", ["advantages", "rewards"])
    step_reward_source: str = knob("prm", "where the step rewards r of E6 come from: prm = the implicit PRM (iStar) | oracle = the env's ground-truth step labels (1 good, 0 not; credit.py), a diagnostic upper bound on step credit, not iStar (Sokoban and Locks; the PRM is not trained)", "advantage", ["prm", "oracle"])
    # --- policy / PPO (paper.md E8) -------------------------------------------------------
    lr: float = knob(0.0, "policy AdamW learning rate; 0 = auto: 1e-4 for the locally built model (3e-4 can wreck it in one iteration: python -m bench.lr_probe, README Results), 5e-7 with --model (paper, 7B)", "policy")
    clip_eps: float = knob(0.2, "PPO clip ε (paper: 0.2)", "policy")
    dual_clip: float = knob(3.0, "dual-clip c for negative advantages (released code: 3); 0 = off", "policy")
    ratio_level: str = knob("token", "PPO ratio per token (verl, default) | per step (paper Eq. 6)", "policy", ["token", "step"])
    loss_agg: str = knob("token-mean", "how the PPO loss averages its terms: token-mean = every action token (step for --ratio-level step) of the minibatch equally (released code, verl) | seq-mean-token-mean = every trajectory equally, its tokens share its weight (long failed episodes no longer outweigh short wins)", "policy", ["token-mean", "seq-mean-token-mean"])
    ppo_epochs: int = knob(1, "passes over each batch (paper: 1)", "policy")
    minibatches: int = knob(4, "optimiser steps per epoch (the batch is split by trajectory)", "policy")
    micro_batch: int = knob(64, "most trajectories per forward/backward (gradient accumulation; memory only)", "policy")
    micro_batch_tokens: int = knob(32768, "most padded row tokens (rows x longest row) per forward/backward; a trajectory larger than this gets one of its own (memory only)", "policy")
    entropy_coef: float = knob(0.001, "entropy bonus (released code: 0.001, for 7B LLMs at policy lr 5e-7 to 1e-6). At the small model's lr 3e-4 with rare wins it alone raised RLOO's entropy on Locks, where 0 kept it falling (README Results, Locks); policy/logp_adv_cov tells a bonus-driven rise (near 0) from an advantage-driven one (far below 0)", "policy")
    kl_coef: float = knob(0.0, "KL penalty to the policy RL started from (after the warm start), k3 (paper: none)", "policy")
    grad_clip: float = knob(1.0, "policy gradient-norm clip", "policy")
    adam_beta2: float = knob(0.999, "β2 of the policy's AdamW: its second-moment estimate remembers about 1/(1-β2) optimiser steps (iterations × minibatches × epochs); 0.999 is PyTorch's default. On Locks' 16-carving plateau 0.99 learned the rule sooner with RLOO and with iStar (docs/results.md, Locks)", "policy")
    # --- kernels --------------------------------------------------------------------------
    kernels: str = knob("auto", "auto = Triton on CUDA, torch reference elsewhere | triton | reference", "kernels", ["auto", "triton", "reference"])
    # --- run and logging ------------------------------------------------------------------
    iterations: int = knob(100, "RL iterations (one rollout batch + PRM step + policy update each)", "logging")
    max_env_steps: int = knob(0, "stop after the iteration that reaches this many training env steps (equal budgets across algorithms); 0 = off", "logging")
    seed: int = knob(0, "seed of everything (task seeds, sampling, init)", "logging")
    run_name: str = knob("", "run folder name under out_dir; empty = <env>-<algo>[-istar]-s<seed>", "logging")
    out_dir: str = knob("runs", "where run folders go", "logging")
    eval_every: int = knob(10, "evaluate on held-out tasks every K iterations (0 = only at start and end)", "logging")
    eval_tasks: int = knob(64, "number of held-out task seeds per evaluation", "logging")
    eval_temperature: float = knob(0.4, "temperature of the sampled evaluation (paper: 0.4); greedy is also reported", "logging")
    save_every: int = knob(10, "checkpoint every K iterations (and at the end)", "logging")
    tensorboard: bool = knob(False, "also write TensorBoard logs (needs the tensorboard package)", "logging")
    # --- distributed (torchrun data parallelism; distributed.py) ---------------------------------
    fsdp: bool = knob(False, "under torchrun, shard policy and PRM with FSDP2 (fully_shard) instead of full copies per rank", "distributed")

    def __post_init__(self):
        # "auto" learning rates: the paper's for a pretrained LM (--model), larger for the from-scratch model
        if self.lr == 0:
            self.lr = 5e-7 if self.model else 1e-4
        if self.prm_lr == 0:
            self.prm_lr = 1e-6 if self.model else 2e-4

    @property
    def start_seed(self) -> int:
        """The seed of the starting policy: --init-seed, or --seed when it is -1."""
        return self.seed if self.init_seed == -1 else self.init_seed

    @property
    def kernel_impl(self) -> str | None:
        """The `impl` argument of the kernels' public functions (None = dispatch on the device)."""
        return None if self.kernels == "auto" else self.kernels


# Per-env presets: applied before the CLI, so a flag on the command line always wins.
PRESETS: dict[str, dict] = {
    # Sokoban demos without random moves: the 30% random labels kept the small model from learning the board
    # (held-out expert-action probability 0.26 vs 0.40 after 300 SFT steps; docs/results.md, Sokoban, "Read this first").
    # 6,000 demos (1,125 SFT steps): without the system prompt (LOCAL_MODEL_PRESETS) expert-action probability
    # 0.78, held-out success 62.5% greedy vs 31% for random moves; with it 0.50 and 39% (1,500 demos: 0.33, 8%).
    "sokoban": dict(tasks_per_iter=32, group_size=8, max_action_tokens=24, history_steps=2, warmstart_random_frac=0.0,
                    warmstart_episodes=6000),
    "webshop": dict(tasks_per_iter=16, group_size=8, max_action_tokens=40, max_context=1536),
    "sotopia": dict(tasks_per_iter=16, group_size=8, algo="grpo", max_action_tokens=32),
    # Locks (a diagnostic, not in the paper): the tiny model learns the carving -> key rule after a plateau at
    # 0.25 (256 SFT steps stay on it, these 512 pass it); 25% random demo keys leave it at 0.75-0.79 per door,
    # ~20% of 6-door episodes won (README Results, "Locks").
    "locks": dict(model_size="tiny", vocab_size=384, warmstart_episodes=2048, warmstart_epochs=4, warmstart_random_frac=0.25,
                  max_action_tokens=8, max_context=512, tasks_per_iter=8, group_size=8, iterations=100,
                  eval_every=10),
    # A CPU smoke run: two iterations end to end in well under a minute.
    "tiny": dict(model_size="tiny", vocab_size=384, tasks_per_iter=2, group_size=2, iterations=2, warmstart_episodes=8,
                 warmstart_epochs=1, eval_tasks=2, eval_every=1, save_every=1, max_action_tokens=16, max_context=1024),
}


# Presets for the locally built model only: with --model a pretrained LM keeps the env's own settings.
# Sokoban rows drop the system prompt: the model trained from scratch cannot read it, and the constant
# 188-token prefix held its warm start to expert-action probability 0.50 where the same 6,000 demonstrations
# without it reach 0.78 (bench.board_ceiling --transformer --context system; README Results, Sokoban).
# WebShop's results page numbers its items: the model trained from scratch never learned to copy a product ID
# from the page (0 of 64 held-out tasks won, 85-90% invalid clicks, with IDs as 9 BPE pieces or one token); with
# numbered items and demos without random actions its warm start wins 2 of 64 with 12% invalid actions, playing
# in the expert's order: search, item, options, buy (README Results, WebShop).
LOCAL_MODEL_PRESETS: dict[str, dict] = {"sokoban": dict(system_prompt=False),
                                        "webshop": dict(numbered_results=True, warmstart_random_frac=0.0)}


# Envs whose steps carry a ground-truth label (info["optimal"]): credit.py scores against it, and
# --step-reward-source oracle trains on it.
STEP_LABELLED_ENVS = ("sokoban", "locks")


# Fields added after runs were saved, with the value every run saved before them used: a run folder's
# config.json without the field means that value (resume, replay and bench.heldout rebuild it exactly).
LEGACY_DEFAULTS: dict[str, object] = {"warmstart_schedule": "constant", "carvings": 0, "init_seed": -1, "adam_beta2": 0.999,
                                      "shuffle_ids": False, "system_prompt": True, "numbered_results": False}


def saved_config(path) -> dict:
    """The fields of a run folder's ``config.json`` (train.py writes it), completed with LEGACY_DEFAULTS."""
    return {**LEGACY_DEFAULTS, **json.loads(Path(path).read_text())}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train an LLM agent with iStar (implicit step rewards) or its base algorithms.",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(Config):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            group.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=None, help=meta["doc"].replace("%", "%%") + f" (default: {f.default})")
            group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", default=None, help=argparse.SUPPRESS)
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            group.add_argument(flag, type=typ, default=None, choices=meta["choices"], help=meta["doc"].replace("%", "%%") + f" (default: {f.default!r})")
    run = parser.add_argument_group("commands")
    run.add_argument("--preset", default=None, choices=sorted(PRESETS), help="apply a preset on top of the env's (e.g. tiny for a CPU smoke run)")
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR exactly where it stopped")
    run.add_argument("--fresh-policy-optimizer", action="store_true", help="with --resume: start the policy's AdamW afresh (its moments and step count) instead of loading its state; an experiment, not an exact continuation")
    run.add_argument("--plot", nargs="+", default=None, metavar="RUN_DIR", help="plot success and return vs env steps of these runs to a PNG and exit")
    run.add_argument("--show", default=None, metavar="RUN_DIR", help="replay an evaluation episode of RUN_DIR's policy with each step's implicit reward, and exit")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """CLI -> Config: defaults, then the env preset (and, without --model, its local-model preset),
    then --preset, then explicit flags; validated."""
    args = build_parser().parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    env = given.get("env", Config.env)
    local = {} if given.get("model") else LOCAL_MODEL_PRESETS.get(env, {})
    values = {**PRESETS.get(env, {}), **local, **(PRESETS[args.preset] if args.preset else {}), **given}
    cfg = Config(**values)
    validate(cfg)
    return cfg, args


def validate(cfg: Config) -> None:
    """Fail before any work starts, naming the field and what was expected."""
    for f in dataclasses.fields(cfg):  # NaN passes every comparison below, and inf is no setting
        if isinstance(getattr(cfg, f.name), float) and not math.isfinite(getattr(cfg, f.name)):
            raise ValueError(f"--{f.name.replace('_', '-')}: expected a finite number, got {getattr(cfg, f.name)}")
    positive = ["tasks_per_iter", "group_size", "max_action_tokens", "max_context", "iterations", "ppo_epochs", "minibatches", "micro_batch", "micro_batch_tokens", "vocab_size"]
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(cfg, name)}")
    if cfg.group_size < 2:
        raise ValueError(f"--group-size: expected >= 2 rollouts per task (a lone rollout gets episode advantage 0, "
                         f"paper.md E5, and forms no preference pair, E3: nothing would train), got {cfg.group_size}")
    for name in ["beta", "lr", "prm_lr", "clip_eps", "grad_clip", "prm_grad_clip"]:
        if not getattr(cfg, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive number, got {getattr(cfg, name)}")
    for name in ["step_adv_coef", "entropy_coef", "kl_coef", "warmstart_random_frac", "eval_every", "save_every", "max_steps", "max_env_steps", "warmstart_episodes", "history_steps"]:
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected >= 0, got {getattr(cfg, name)}")
    if cfg.carvings < 0 or (cfg.carvings and cfg.env != "locks"):
        raise ValueError(f"--carvings: only the locks env has carvings (0 = its own 4, else a multiple of 4 up to 64); "
                         f"got {cfg.carvings} with env={cfg.env}")
    for name in ("shuffle_ids", "numbered_results"):
        if getattr(cfg, name) and cfg.env != "webshop":
            raise ValueError(f"--{name.replace('_', '-')}: only the webshop env has product IDs; got env={cfg.env}")
    if cfg.prm_nll_coef < 0 or (cfg.prm_nll_coef and cfg.granularity != "step"):
        raise ValueError(f"--prm-nll-coef: expected >= 0, and only with --granularity step (the DPO loss of E3); "
                         f"got {cfg.prm_nll_coef} with granularity={cfg.granularity}")
    if not 0.0 <= cfg.adam_beta2 < 1.0:
        raise ValueError(f"--adam-beta2: expected a value in [0, 1), got {cfg.adam_beta2}")
    if cfg.init_seed < -1:
        raise ValueError(f"--init-seed: expected a seed >= 0, or -1 for --seed, got {cfg.init_seed}")
    if cfg.prm_steps < 1:
        raise ValueError(f"--prm-steps: expected >= 1 DPO steps per iteration, got {cfg.prm_steps}")
    if not 0 <= cfg.warmstart_random_frac <= 1:
        raise ValueError(f"--warmstart-random-frac: expected a fraction in [0, 1], got {cfg.warmstart_random_frac}")
    if cfg.dual_clip and cfg.dual_clip <= 1:
        raise ValueError(f"--dual-clip: expected 0 (off) or a value > 1, got {cfg.dual_clip}")
    if not 0 < cfg.top_p <= 1 or cfg.temperature < 0 or cfg.eval_temperature < 0:
        raise ValueError(f"--top-p must be in (0, 1], --temperature and --eval-temperature >= 0, got "
                         f"{cfg.top_p}, {cfg.temperature}, {cfg.eval_temperature}")
    if cfg.minibatches > cfg.tasks_per_iter * cfg.group_size:
        raise ValueError(f"--minibatches: {cfg.minibatches} is more than the {cfg.tasks_per_iter * cfg.group_size} trajectories of a batch")
    if cfg.combine != "advantages" and not cfg.istar:
        raise ValueError(f"--combine {cfg.combine}: joins iStar's step rewards to the outcome, so it needs --istar (got --no-istar)")
    if cfg.step_reward_source == "oracle" and (cfg.env not in STEP_LABELLED_ENVS or not cfg.istar or cfg.granularity != "step"):
        raise ValueError(f"--step-reward-source oracle: needs an env that labels its steps ({' or '.join(STEP_LABELLED_ENVS)}), iStar on and "
                         f"--granularity step; got env={cfg.env}, istar={cfg.istar}, granularity={cfg.granularity}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:K, got {cfg.device!r}")
