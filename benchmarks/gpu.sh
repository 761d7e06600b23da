#!/usr/bin/env bash
# GPU benchmark set, side by side with the PyTorch peers, one JSON summary at the end.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default OUT_DIR: gpu-results
#   STEP_TIMEOUT=240 ONLY="askllm_large embed_minilm" bash benchmarks/gpu.sh
#
# Needs a CUDA jaxlib (`pip install -U "jax[cuda12]"`) and torch with CUDA in the same venv (or
# PEER_PYTHON pointing at one). Steps (each its own processes, each under STEP_TIMEOUT seconds):
#   askllm_large / askllm_xl        FLAN-T5-Large / -XL shapes, random weights in the HF layout, bf16,
#                                   seq 512: gristmill (XLA attention) vs HF transformers eager bf16
#   askllm_xl_cudnn                 the same with the fused cuDNN attention (T5 position bias as bias)
#   buckets_large                   real C4 length mix, length buckets vs fixed 512 (in askllm_large)
#   embed_minilm / embed_st5        MiniLM (real weights) and Sentence-T5-Base shapes vs sentence-transformers
#   train_large                     T5-Large training step, bf16, MFU against the chip's dense bf16 peak
# A failed or timed-out step is recorded as such; the others still run.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
PY=${PYTHON:-.venv/bin/python}
PEER=${PEER_PYTHON:-$PY}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
ONLY=${ONLY:-}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}  # leave room for torch
unset JAX_PLATFORMS

"$PY" - <<'EOF' > "$OUT/device.json" || { echo '{"error": "no JAX GPU device"}'; exit 1; }
import json, jax
devices = jax.devices()
assert devices[0].platform == "gpu", f"JAX sees {devices}, not a GPU: install jax[cuda12]"
print(json.dumps({"device": devices[0].device_kind, "count": len(devices), "jax": jax.__version__}))
EOF
"$PEER" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA'" \
    || { echo '{"error": "torch without CUDA"}'; exit 1; }

step() {  # step NAME COMMAND...: runs COMMAND under the timeout, log in OUT/NAME.log
    local name=$1; shift
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    echo "=== $name" >&2
    local start=$SECONDS
    timeout --kill-after=20 "$STEP_TIMEOUT" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" > "$OUT/$name.status.json"
    tail -3 "$OUT/$name.log" >&2
}

B=benchmarks
step askllm_large "$PY" $B/askllm_throughput.py --preset flan_t5_large --dtype bfloat16 --batch-size 64 \
    --batches 8 --torch-device cuda --peer-python "$PEER" --bucket-docs 512 --json "$OUT/askllm_large.json"
step askllm_xl "$PY" $B/askllm_throughput.py --preset flan_t5_xl --dtype bfloat16 --batch-size 32 --batches 8 \
    --torch-device cuda --peer-python "$PEER" --no-buckets --json "$OUT/askllm_xl.json"
step askllm_xl_cudnn "$PY" $B/askllm_throughput.py --preset flan_t5_xl --dtype bfloat16 --batch-size 32 \
    --batches 8 --attention-impl cudnn --skip-torch --no-buckets --json "$OUT/askllm_xl_cudnn.json"
step embed_minilm "$PY" $B/embedding_throughput.py --device cuda --dtypes float32,bfloat16 --docs 1000 \
    --batch-size 256 --rounds 3 --json "$OUT/embed_minilm.json"
step embed_st5 "$PY" $B/embedding_throughput.py --model st5-base-random --device cuda --dtypes bfloat16 \
    --docs 1000 --batch-size 256 --rounds 3 --json "$OUT/embed_st5.json"
step train_large "$PY" $B/train_throughput.py --sizes large --batch_size 64 --dtype bfloat16 --steps 10 \
    --remat dots_with_no_batch_dims

"$PY" $B/gpu_summary.py "$OUT"
