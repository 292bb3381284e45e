#!/usr/bin/env bash
# The recipe that trained the shipped checkpoints/phi-tiny on one lent H100 GPU,
# then (as a head start for the study) the eight skill experts and the mixed LoRA.
# Run from the repository root with data/lila and data/tokenizer.json in place
# (`make data`):      bash recipes/phi-tiny-gpu.sh runs/gpu [MINUTES]
# Everything it writes is also reproducible on the CPU with the same train.py
# commands and --device cpu (slower; see checkpoints/phi-tiny/README.md).
set -uo pipefail
out=${1:-runs/gpu}
minutes=${2:-6}
start=$SECONDS
export PYTHONUNBUFFERED=1
python3 train.py --base --device cuda --compile --out "$out/base" --n-layer 10 --n-embd 320 --n-head 4 \
    --batch-size 128 --seq-len 512 --lr 2e-3 --warmup 300 --minutes "$minutes" --eval-every 1000 \
    --eval-questions 400 --seed 1234 2>&1 | grep -v "it/s\]"
for skill in algebra arithmetic calculus comparison measurement numbers polynomials probability; do
    if (( SECONDS - start > 490 )); then echo "out of time: skipping the expert $skill"; continue; fi
    python3 train.py --expert "$skill" --model "$out/base" --device cuda --out "$out/experts/$skill" \
        2>&1 | grep -E "step [0-9]+:|Error|error"
done
if (( SECONDS - start <= 505 )); then
    python3 train.py --mixed --model "$out/base" --device cuda --steps-per-skill 300 --out "$out/mixed" \
        --eval-every 600 2>&1 | grep -E "step [0-9]+:|Error|error"
fi
echo "recipe took $(( SECONDS - start ))s"
