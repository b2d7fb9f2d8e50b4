#!/usr/bin/env bash
# Every GPU check and measurement the README waits for, in one call on one GPU, within BUDGET_S seconds.
#
#   bash bench/gpu_evidence.sh                          # all stages in about BUDGET_S = 540 s
#   STAGES="tests kernels" bash bench/gpu_evidence.sh
#   BUDGET_S=300 VARIANTS=rloo+istar SEEDS=0 bash bench/gpu_evidence.sh
#
# Stages, in this order, each writing under $OUT (the device tool brings $OUT back, at most 8 files;
# elsewhere it defaults to runs/gpu-evidence):
#   env      env.txt        nvidia-smi, torch / triton / transformers versions
#   kernels  kernels.md     bench/kernels.py: Triton vs eager vs torch.compile vs the copy-bandwidth floor
#   rollout  rollout.md     python -m bench.rollout at batch 1, 64, 512 vs plain model.generate, and a
#                           host profile of the batch-512 rollout (where the next speed-up is)
#   lrprobe  lr_probe.md    python -m bench.lr_probe: one update's KL per policy learning rate (PROBE_LRS)
#                           on one Sokoban batch of 8 tasks x 8 (the probe's default)
#   warmstart warmstart.md  python -m bench.warmstart_probe: the held-out expert-action probability per
#                           warm-start step over WS_EPOCHS (3) passes of WS_EPISODES (12,000, twice the
#                           Sokoban preset's) demos, ~2,250 steps (on the CPU, 6,000 x 3 reached 0.78 without
#                           the system prompt, the preset's since 2026-12-06, and 0.50 with it (WS_ARGS=
#                           --system-prompt): does more data take it further?), then held-out success of the
#                           result and of uniformly random moves. WS_ENV (sokoban) and WS_ARGS (train.py flags)
#                           point it elsewhere, e.g. the WebShop copy test of docs/results.md:
#                           WS_ENV=webshop WS_EPISODES=6000 WS_ARGS="--shuffle-ids --warmstart-random-frac 0"
#   sweep    results.md, curves.png, metrics.tar.gz
#                           sweep.py on Sokoban, VARIANTS x SEEDS in parallel, stopped gracefully
#                           (sweep.py --deadline-min) STOP_MARGIN_S before the budget ends: learning
#                           curves and the iStar vs GRPO vs RLOO table; metrics.tar.gz holds the
#                           sweep's log and every run's metrics.jsonl, config, summary and log,
#                           re-packed every 30 s so a call cut short still brings back what ran
#   tests    gpu_tests.log  GPU_TESTS: the CUDA-only tests (real CUDA graphs vs eager, compiled Triton
#                           kernels vs their references), run beside the sweep: they time nothing
# The two benchmarks run alone on the GPU (their numbers are timings); the sweep gets whatever time
# they leave. A stage that fails or runs out of time is reported and the next one still runs; the
# script's exit status is the number of failed stages.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-evidence}
BUDGET_S=${BUDGET_S:-540}
STOP_MARGIN_S=${STOP_MARGIN_S:-100}  # a run's iteration in flight + final evaluation + checkpoint, and the table
STAGES=${STAGES:-env kernels rollout lrprobe warmstart sweep tests}
WS_EPOCHS=${WS_EPOCHS:-3}
WS_EPISODES=${WS_EPISODES:-12000}
WS_ENV=${WS_ENV:-sokoban}
WS_ARGS=${WS_ARGS:-}
PROBE_LRS=${PROBE_LRS:-1e-4,3e-4,1e-3,3e-3}
GPU_TESTS=${GPU_TESTS:-tests/test_engine.py tests/test_kernels.py}
VARIANTS=${VARIANTS:-rloo+istar,grpo,rloo}
SEEDS=${SEEDS:-0}
TRAIN_ARGS=${TRAIN_ARGS:---eval-every 5 --eval-tasks 128}
SWEEP_DIR=runs/sweep-gpu
PY=$(command -v python3 || command -v python)
mkdir -p "$OUT"
export OUT VARIANTS SEEDS TRAIN_ARGS SWEEP_DIR PY PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
failed=0

wanted() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

stage() {  # stage NAME LIMIT_S LOGFILE COMMAND...: run COMMAND under LIMIT_S seconds, tee'd to $OUT/LOGFILE
    local name=$1 limit=$2 log=$OUT/$3
    shift 3
    wanted "$name" || return 0
    echo "== $name (limit ${limit}s) $(date +%T), ${SECONDS}s into the budget"
    local t0=$SECONDS
    timeout --signal=TERM --kill-after=30 "$limit" "$@" 2>&1 | tee "$log" | tail -n 40
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

versions() {
    nvidia-smi || true
    "$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
}

pack() {  # every run's small files, atomically into $OUT/metrics.tar.gz
    tar czf "$OUT/metrics.tar.gz.tmp" --ignore-failed-read "$SWEEP_DIR"/*.log "$SWEEP_DIR"/*/metrics.jsonl \
        "$SWEEP_DIR"/*/config.json "$SWEEP_DIR"/*/summary.json 2>/dev/null
    mv -f "$OUT/metrics.tar.gz.tmp" "$OUT/metrics.tar.gz"
}

sweep() {  # sweep DEADLINE_MIN
    ( while sleep 30; do pack; done ) &
    local packer=$!
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
    "$PY" sweep.py --env sokoban --variants "$VARIANTS" --seeds "$SEEDS" --parallel 9 --out "$SWEEP_DIR" \
        --deadline-min "$1" -- $TRAIN_ARGS
    local rc=$?
    kill "$packer" 2>/dev/null  # the caller packs once more, after the sweep's log is complete
    cp "$SWEEP_DIR/results.md" "$SWEEP_DIR/curves.png" "$OUT/" 2>/dev/null
    return $rc
}

export -f versions pack sweep  # so that timeout can run them (bash -c)
stage env 30 env.txt bash -c versions
stage kernels 120 kernels.md "$PY" bench/kernels.py
stage rollout 150 rollout.md "$PY" -m bench.rollout --batches 1,64,512 --serial-cap 4 --profile 30
stage lrprobe 120 lr_probe.md "$PY" -m bench.lr_probe --lrs "$PROBE_LRS" -- --env sokoban --out-dir "$SWEEP_DIR"
# shellcheck disable=SC2086  # WS_ARGS: several flags
stage warmstart 240 warmstart.md "$PY" -m bench.warmstart_probe --every 250 --tasks 256 -- --env "$WS_ENV" \
    --warmstart-episodes "$WS_EPISODES" --warmstart-epochs "$WS_EPOCHS" $WS_ARGS

sweep_pid=
if wanted sweep; then
    left=$((BUDGET_S - SECONDS))
    deadline_s=$((left - STOP_MARGIN_S > 30 ? left - STOP_MARGIN_S : 30))  # the stages before overran: 30 s anyway
    deadline_min=$("$PY" -c "print(round($deadline_s / 60, 2))")
    hard_s=$((deadline_s + STOP_MARGIN_S - 5))
    echo "== sweep (deadline ${deadline_min} min, hard limit ${hard_s}s) $(date +%T), ${SECONDS}s into the budget"
    mkdir -p "$SWEEP_DIR"
    timeout --signal=TERM --kill-after=10 "$hard_s" bash -c "sweep $deadline_min" >"$SWEEP_DIR/sweep.log" 2>&1 &
    sweep_pid=$!
fi
# shellcheck disable=SC2086  # GPU_TESTS is a list of test paths
stage tests 150 gpu_tests.log "$PY" -m pytest $GPU_TESTS -q -p no:cacheprovider
if [ -n "$sweep_pid" ]; then
    wait "$sweep_pid"
    rc=$?
    pack
    tail -n 40 "$SWEEP_DIR/sweep.log"
    echo "== sweep: exit $rc, ${SECONDS}s into the budget"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
fi
echo "== done: $failed stage(s) failed; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$failed"
