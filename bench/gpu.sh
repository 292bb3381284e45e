#!/usr/bin/env bash
# Everything a GPU machine should measure, in one run of under 10 minutes on one
# GPU, written to one file ($OUT/gpu.md):
#   1. the CUDA and bf16 tests (tests/test_cuda.py, and every test about bf16 or autocast);
#   2. the peak memory of LoRA training at phi-2 width, extrapolated to 32 layers
#      (lora_memory.py): what `train.py --expert ... --dtype bfloat16` needs on phi-2;
#   3. bf16 LoRA training at phi-2 width against PEFT + transformers on the same
#      weights: step time, tokens/s and peak memory (bench_lora.py);
#   4. decode and prefill against transformers, phi-tiny and phi-2 width (bench_model.py);
#   5. routed decode against the base, phi-tiny and phi-2 width (bench_router.py);
#   6. batched evaluation of phi-tiny at batch 1, 8 and 32 (bench_eval.py).
#
#   bash bench/gpu.sh                        # on a GPU machine
#   DEVICE=cpu TINY=1 bash bench/gpu.sh      # the same steps at a tiny size on a CPU (tests run this)
#
# Knobs (environment): DEVICE (default cuda), DTYPE (default bfloat16), LAYERS
# (phi-2-width layers of the random models, default 4), OUT (default out/gpu),
# PY (default .venv/bin/python when it exists, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
LAYERS=${LAYERS:-4}
OUT=${OUT:-out/gpu}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
if [ "${TINY:-0}" = 1 ]; then   # every step runs, on phi-tiny and a few tokens
    MEMORY=(--layers 1 2 --batch-size 1 --seq-len 8 --hidden-size 160)
    LORA=(--model checkpoints/phi-tiny --batch-size 2 --seq-len 16 --steps 1)
    MODEL=(--phi2-layers --prompt-len 8 --new-tokens 2 --repeats 1)
    ROUTER=(--model checkpoints/phi-tiny --experts 2 --prompt-len 8 --new-tokens 2 --batch-sizes 1 --repeats 1)
    ROUTER_WIDE=()
    EVAL=(--data tests/fixtures/ours --questions 4 --batch-sizes 1 4 --dtype float32)   # bf16 decode crawls on a CPU
else
    MEMORY=(--layers 2 "$LAYERS")
    LORA=(--phi2-width "$LAYERS" --batch-size 16 --seq-len 256 --steps 10)
    MODEL=(--phi2-layers 2 "$LAYERS")
    ROUTER=(--batch-sizes 1,8)
    ROUTER_WIDE=(--phi2-width "$LAYERS" --batch-sizes 1,8)
    EVAL=(--questions 64 --batch-sizes 1 8 32)
fi
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.md") 2>&1
step() { echo; echo "## $* (at $SECONDS s)"; echo; }

echo "# GPU run: $DEVICE, $DTYPE, $(date -u '+%Y-%m-%d %H:%M UTC')"
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

step "1. CUDA and bf16 tests"
if [ "$DEVICE" = cpu ]; then
    echo "skipped: no GPU"
else
    "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
    "$PY" -m pytest -q -p no:cacheprovider tests -k "bf16 or bfloat16 or autocast or half"
fi

step "2. LoRA training memory at phi-2 width, base in $DTYPE, extrapolated to 32 layers"
"$PY" bench/lora_memory.py --device "$DEVICE" --dtype "$DTYPE" "${MEMORY[@]}"

step "3. LoRA training against PEFT + transformers, base in $DTYPE"
"$PY" bench/bench_lora.py --device "$DEVICE" --dtype "$DTYPE" "${LORA[@]}"

step "4. Prefill and decode against transformers, $DTYPE"
"$PY" bench/bench_model.py --device "$DEVICE" --dtype "$DTYPE" --skip-load "${MODEL[@]}"

step "5. Routed decode against the base, $DTYPE"
"$PY" bench/bench_router.py --device "$DEVICE" --dtype "$DTYPE" "${ROUTER[@]}"
if [ ${#ROUTER_WIDE[@]} -gt 0 ]; then
    "$PY" bench/bench_router.py --device "$DEVICE" --dtype "$DTYPE" "${ROUTER_WIDE[@]}"
fi

step "6. Batched evaluation, $DTYPE"
"$PY" bench/bench_eval.py --device "$DEVICE" --dtype "$DTYPE" "${EVAL[@]}"

step "done in $SECONDS s"
