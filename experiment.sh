#!/usr/bin/env bash
# The whole study in one command (make experiment): data, eight skill experts,
# the mixed-LoRA baseline, clusters and cluster experts, router variants,
# evaluation of every configuration, and out/REPORT.md. Every stage skips or
# resumes what is already done, so a killed run continues where it stopped.
#
#   bash experiment.sh                          # phi-tiny, CPU
#   MODEL=/path/to/phi-2 DEVICE=cuda bash experiment.sh     # the real phi-2 on a GPU
#
# Knobs (environment): MODEL, DATA, OUT, STEPS (LoRA steps per expert),
# ROUTER_STEPS, BATCH (LoRA batch), LIMIT (test questions per skill in every
# evaluation), DEVICE, DTYPE (evaluation dtype, e.g. bfloat16 on a GPU).
set -euo pipefail
cd "$(dirname "$0")"
MODEL=${MODEL:-checkpoints/phi-tiny}
DATA=${DATA:-data/lila}
OUT=${OUT:-out}
STEPS=${STEPS:-60}
ROUTER_STEPS=${ROUTER_STEPS:-100}
BATCH=${BATCH:-8}
LIMIT=${LIMIT:-20}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-float32}
PY=${PY:-.venv/bin/python}
SKILLS="algebra arithmetic calculus comparison measurement numbers polynomials probability"
COMMON=(--model "$MODEL" --data "$DATA" --device "$DEVICE")
LORA=(--steps "$STEPS" --batch-size "$BATCH" --eval-every 1000 --eval-questions 64 --resume)
stage() { echo; echo "=== $* (at $((SECONDS / 60)) min)"; }

stage "data"
[ -e "$DATA/algebra.json" ] || make data

stage "skill experts"
for s in $SKILLS; do
    "$PY" train.py --expert "$s" "${COMMON[@]}" "${LORA[@]}" --out "$OUT/experts/$s"
done

stage "mixed LoRA (as many steps as all experts together)"
"$PY" train.py --mixed "${COMMON[@]}" "${LORA[@]}" --steps-per-skill "$STEPS" --out "$OUT/mixed"

stage "clusters of meta-questions"
[ -e "$OUT/clusters/assignments.json" ] || "$PY" cluster.py --k 8 --split train --limit 300 \
    --model "$MODEL" --data "$DATA" --device "$DEVICE" --out "$OUT/clusters"
[ -e "$OUT/clusters-test/report.md" ] || "$PY" cluster.py --k 8 --split test --limit 100 \
    --model "$MODEL" --data "$DATA" --device "$DEVICE" --out "$OUT/clusters-test"

stage "cluster experts"
for k in 0 1 2 3 4 5 6 7; do
    "$PY" train.py --expert "cluster:$k" --clusters "$OUT/clusters" "${COMMON[@]}" "${LORA[@]}" \
        --out "$OUT/cluster-experts/cluster-$k"
done

stage "routers"
ROUTER=(--router "${COMMON[@]}" --steps "$ROUTER_STEPS" --batch-size "$BATCH" --eval-every 1000
        --eval-questions 64 --router-questions 200 --resume)
"$PY" train.py "${ROUTER[@]}" --experts "$OUT/experts" --prior centroid --level token --out "$OUT/routers/centroid-token"
"$PY" train.py "${ROUTER[@]}" --experts "$OUT/experts" --prior learned --level token --out "$OUT/routers/learned-token"
"$PY" train.py "${ROUTER[@]}" --experts "$OUT/experts" --prior centroid --level sequence --out "$OUT/routers/centroid-sequence"
"$PY" train.py "${ROUTER[@]}" --experts "$OUT/cluster-experts" --clusters "$OUT/clusters" \
    --prior centroid --level token --out "$OUT/routers/clusters-token"
# Intuition-MoR1E's comparison point: 64 fresh rank-1 experts (the parameters of the eight
# rank-8 experts) trained jointly with the gates, as many steps as the mixed LoRA
"$PY" train.py "${ROUTER[@]}" --rank1 64 --n-groups 8 --steps $((8 * STEPS)) --out "$OUT/routers/rank1"

stage "evaluation ($LIMIT test questions per skill, 4-shot unless named)"
ev() {  # ev NAME [eval.py flags]: one configuration -> out/eval/NAME.json
    local name=$1; shift
    [ -e "$OUT/eval/$name.json" ] || "$PY" eval.py "${COMMON[@]}" --dtype "$DTYPE" --limit "$LIMIT" \
        --json "$OUT/eval/$name.json" "$@"
}
ev base-0shot --shots 0
ev base-4shot
ev mixed --adapter "$OUT/mixed"
[ -e "$OUT/forgetting/forgetting.json" ] || "$PY" eval.py "${COMMON[@]}" --dtype "$DTYPE" \
    --limit "$LIMIT" --forgetting "$OUT/experts" --out "$OUT/forgetting"
for r in centroid-token learned-token centroid-sequence clusters-token rank1; do
    ev "moe-$r" --moe "$OUT/routers/$r" --out "$OUT/routing/$r"
done
ev moe-task-soft --moe "$OUT/routers/centroid-token" --variant task-soft
ev moe-task-hard --moe "$OUT/routers/centroid-token" --variant task-hard

stage "report"
"$PY" report.py --out "$OUT"
echo "the study took $((SECONDS / 60)) min"
