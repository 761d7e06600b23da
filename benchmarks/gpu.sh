#!/usr/bin/env bash
# GPU benchmark set, side by side with the PyTorch peers, under one deadline; installs nothing.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]     # default: $OUT if set, else gpu-results (here)
#   DEADLINE=330 ONLY="askllm_xl train_large" bash benchmarks/gpu.sh
#   SMOKE=1 bash benchmarks/gpu.sh /tmp/r    # the same script on CPU, tiny shapes (tests/test_gpu_bench_smoke.py)
#   CAP_XL=150 CAP_TRAIN=100 CAP_LARGE=90 CAP_EMBED=60: each step's own cap in seconds (SMOKE: none)
#
# Python: $PYTHON, else .venv/bin/python, else python3 (the accelerator machine has no venv: jax
# with the CUDA plugin, torch with CUDA, transformers, sentence-transformers; no Beam, TensorFlow,
# gguf, model wheels or gristmill install: it runs from here with PYTHONPATH=.); the peers run in
# $PEER_PYTHON (default: the same). Weights are random (speed does not depend on them); only
# tokenizer files travel with the repository. Steps, in order of value, each in its own processes
# and under min(its cap, what is left of DEADLINE seconds); each writes its JSON as soon as it has
# a number, and a step cut by the deadline (or not started) is recorded as cut:
#   askllm_xl    FLAN-T5-XL shape, bf16, seq 512, batch 32: XLA attention, HF transformers eager bf16,
#                then the fused cuDNN attention, in one process (the peer in a subprocess)
#   train_large  T5-Large training step, bf16, batch 64, 512/114: tokens/s and MFU
#   askllm_large FLAN-T5-Large shape, batch 64; the C4 sample's length mix: length buckets vs padding
#                everything to 512; then the peer with the same weights (log-prob check)
#   embed_minilm all-MiniLM-L6-v2 shape vs sentence-transformers, bf16 then float32
#   embed_st5    Sentence-T5-Base shape vs sentence-transformers, bf16
# Results (at most 4 files, rewritten after every step): device.json (device, driver, versions),
# summary.json and summary.txt (every ratio to its peer, docs or tokens/s, MFU, fraction of the
# chip's dense bf16 peak, the targets of issue 19), steps.tar.gz (each step's log, status and JSON).
# XLA_FLOPS=1 adds the unrolled compile that lets XLA count the Ask-LLM FLOPs (printout only).
set -u
RESULTS=${1:-${OUT:-gpu-results}}
case $RESULTS in /*) ;; *) RESULTS="$PWD/$RESULTS" ;; esac  # relative to where it was called from
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
PEER=${PEER_PYTHON:-$PY}
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then DEADLINE=${DEADLINE:-900}; NO_CAP=$DEADLINE; else DEADLINE=${DEADLINE:-330}; NO_CAP=; fi
CAP_XL=${CAP_XL:-${NO_CAP:-150}} CAP_TRAIN=${CAP_TRAIN:-${NO_CAP:-100}}
CAP_LARGE=${CAP_LARGE:-${NO_CAP:-90}} CAP_EMBED=${CAP_EMBED:-${NO_CAP:-60}}
ONLY=${ONLY:-}
RESERVE=${RESERVE:-20}    # seconds kept for the kill grace and the final summary
MIN_STEP=${MIN_STEP:-15}  # a step is not started with less than this left
END=$((SECONDS + DEADLINE))
mkdir -p "$RESULTS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gristmill-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ "$SMOKE" = 1 ]; then
    # CPU, tiny shapes; what the accelerator machine lacks is made unimportable (gpu_absent/sitecustomize.py).
    export JAX_PLATFORMS=cpu PYTHONPATH="$PWD/benchmarks/gpu_absent:$PYTHONPATH"
    DEVICE=cpu SMOKE_FLAG=--smoke
else
    unset JAX_PLATFORMS
    export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}  # room for the torch peer
    export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/gristmill-jax-cache}  # a rerun compiles less
    DEVICE=cuda SMOKE_FLAG=
fi
ORDER=0

summarize() {  # rewrites summary.json, summary.txt and steps.tar.gz from what the steps have written so far
    "$PY" benchmarks/gpu_summary.py "$WORK" "$RESULTS" --deadline "$DEADLINE" --elapsed "$((SECONDS - END + DEADLINE))" \
        $SMOKE_FLAG "$@" || echo "gpu_summary.py failed" >&2
}

status() {  # status NAME STATE RC SECONDS LIMIT [NOTE]
    ORDER=$((ORDER + 1))
    printf '{"step": "%s", "order": %d, "state": "%s", "rc": %s, "seconds": %d, "limit_s": %d, "note": "%s"}\n' \
        "$1" "$ORDER" "$2" "$3" "$4" "$5" "${6:-}" > "$WORK/$1.status.json"
}

step() {  # step NAME CAP_SECONDS COMMAND...: COMMAND under min(CAP, time left), log in WORK/NAME.log
    local name=$1 cap=$2; shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    local left=$((END - SECONDS - RESERVE))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt "$MIN_STEP" ]; then
        status "$name" cut null 0 "$limit" "not started: ${left}s left of the ${DEADLINE}s deadline"
        echo "=== $name: cut (not started, ${left}s left)" >&2
        summarize
        return
    fi
    echo "=== $name (limit ${limit}s)" >&2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$? state=ok note=
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        if [ "$limit" -lt "$cap" ]; then state=cut note="stopped by the ${DEADLINE}s deadline"
        else state=timed_out note="over its ${cap}s cap"; fi
    elif [ $rc -ne 0 ]; then state=failed; fi
    status "$name" "$state" "$rc" "$((SECONDS - start))" "$limit" "$note"
    grep -v "it/s]" "$WORK/$name.log" | tail -3 >&2
    summarize
}

echo "=== device" >&2
if ! timeout 120 "$PY" benchmarks/gpu_device.py "$RESULTS/device.json" $SMOKE_FLAG >&2; then
    summarize --print
    echo "no usable GPU: see $RESULTS/device.json" >&2
    exit 1
fi

B=benchmarks
XLA_FLOPS_ARG=; [ "${XLA_FLOPS:-0}" = 1 ] && XLA_FLOPS_ARG=--xla-flops
if [ "$SMOKE" = 1 ]; then
    XL=(--preset tiny --seq-len 128 --batch-size 4 --batches 2)
    LARGE=(--preset tiny --seq-len 256 --batch-size 4 --batches 2 --bucket-docs 16)
    TRAIN=(--sizes tiny --batch_size 4 --steps 2 --warmup 1 --vocab_size 512)
    EMBED=(--docs 8 --batch-size 8 --rounds 1)
    MINILM_DTYPES=bfloat16 ST5=(--st5-preset tiny)
else
    XL=(--preset flan_t5_xl --seq-len 512 --batch-size 32 --batches 8)
    LARGE=(--preset flan_t5_large --seq-len 512 --batch-size 64 --batches 8 --bucket-docs 512)
    TRAIN=(--sizes large --batch_size 64 --steps 10 --warmup 2 --remat "${TRAIN_REMAT:-dots_with_no_batch_dims}")
    EMBED=(--docs 1000 --batch-size 256 --rounds 3)
    MINILM_DTYPES=bfloat16,float32 ST5=(--st5-preset t5_1_1_base)
fi

step askllm_xl "$CAP_XL" "$PY" $B/askllm_throughput.py "${XL[@]}" --dtype bfloat16 --attention-impl xla,cudnn \
    --torch-device $DEVICE --peer-python "$PEER" --no-buckets $XLA_FLOPS_ARG --json "$WORK/askllm_xl.json"
# No peer shares the chip during training: JAX may take most of its memory.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 step train_large "$CAP_TRAIN" "$PY" $B/train_throughput.py "${TRAIN[@]}" \
    --dtype bfloat16 --json "$WORK/train_large.json"
step askllm_large "$CAP_LARGE" "$PY" $B/askllm_throughput.py "${LARGE[@]}" --dtype bfloat16 \
    --torch-device $DEVICE --peer-python "$PEER" $XLA_FLOPS_ARG --json "$WORK/askllm_large.json"
step embed_minilm "$CAP_EMBED" "$PY" $B/embedding_throughput.py --model minilm-random --device $DEVICE \
    --dtypes $MINILM_DTYPES "${EMBED[@]}" --json "$WORK/embed_minilm.json"
step embed_st5 "$CAP_EMBED" "$PY" $B/embedding_throughput.py --model st5-base-random "${ST5[@]}" \
    --device $DEVICE --dtypes bfloat16 "${EMBED[@]}" --json "$WORK/embed_st5.json"

summarize --print
