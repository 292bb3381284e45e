#!/usr/bin/env bash
# The study with its experts trained to their plateau, every choice made on dev
# questions, the headline configurations with three seeds (make plateau). It is
# run stage by stage, and every stage skips or resumes what is done, so a
# stopped run continues where it stopped (train.py --resume, and an evaluation
# once written is kept).
#
#   make plateau        # the kept study: OUT=checkpoints/phi-tiny-plateau
#   OUT=out/plateau bash study/plateau.sh
#
# Its stages so far:
#   data    DATA (data/lila: phi-tiny's pretraining rows, and the test split the
#           study reports) and TRAIN_DATA (data/plateau: a fresh draw of 4,000
#           train and 100 dev questions per submodule, disjoint from all of DATA);
#           the dev split chooses, the test split is read once per final configuration
#   curves  the sizing: dev learning curves of one large skill (arithmetic) and one
#           small (calculus), at three learning rates and ranks 8 and 32, checked
#           every EVAL_EVERY steps on DEV_QUESTIONS dev questions with 4 nearest
#           shots (the protocol of the reported evaluation), up to 1,000 steps or 3
#           passes over the skill's rows, whichever comes first; then python -m
#           study curves tabulates and draws them and picks (rank, lr) on dev
#
# Knobs (environment): MODEL, DATA, TRAIN_DATA, OUT, BATCH (LoRA rows per step),
# EVAL_EVERY, DEV_QUESTIONS, DEVICE, JOBS (commands at once: 2 on a CPU, one
# thread each), PY.
set -euo pipefail
cd "$(dirname "$0")/.."     # the repository root: every path is relative to it
MODEL=${MODEL:-checkpoints/phi-tiny}
DATA=${DATA:-data/lila}
TRAIN_DATA=${TRAIN_DATA:-data/plateau}
OUT=${OUT:-out/plateau}
BATCH=${BATCH:-8}
EVAL_EVERY=${EVAL_EVERY:-100}
DEV_QUESTIONS=${DEV_QUESTIONS:-300}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-$([ "$DEVICE" = cpu ] && echo 2 || echo 1)}
if [ "$DEVICE" = cpu ]; then
    n=$(( $(nproc) / JOBS ))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( n > 0 ? n : 1 ))}
fi
PY=${PY:-.venv/bin/python}
SKILLS="algebra arithmetic calculus comparison measurement numbers polynomials probability"
source study/jobs.sh
# every LoRA run of the study: its dev checks, and --resume to continue a stopped one
LORA=(--model "$MODEL" --data "$TRAIN_DATA" --device "$DEVICE" --batch-size "$BATCH" --eval-every "$EVAL_EVERY"
      --eval-questions "$DEV_QUESTIONS" --resume)

stage "data"
if [ "$DATA" = data/lila ]; then   # generated; a LiLA download (DATA=...) is used as it is
    GEN=.venv-gen/bin/python
    have_all "$DATA" || "$GEN" data/generate.py --out "$DATA" --train 10000
    have_all "$TRAIN_DATA" || "$GEN" data/generate.py --out "$TRAIN_DATA" --train 4000 --dev 100 --test 0 \
        --seed 2468 --exclude "$DATA"
fi
same_data "$OUT" "$DATA" "$TRAIN_DATA"    # OUT/data.sha256: these questions, or stop

stage "curves: where the experts' dev accuracy stops rising, by learning rate and rank"
steps_for() {   # steps_for SKILL: 3 passes over its rows (as train.py counts them), in whole checks, at most 1,000
    "$PY" - "$MODEL" "$TRAIN_DATA" "$1" "$BATCH" "$EVAL_EVERY" <<'EOF'
import math, sys
from data.episodes import Episodes
from data.lila import load
from formats.hf import read_tokenizer
model, data, skill, batch, every = sys.argv[1:4] + [int(a) for a in sys.argv[4:]]
rows = Episodes(read_tokenizer(f"{model}/tokenizer.json", math.inf, "<|endoftext|>"),
                load(data, split="train", skills=[skill]), 256, 0, "answer", "skill").rows
print(min(1000, every * math.ceil(3 * rows / batch / every)))
EOF
}
declare -A SWEEP_STEPS
for s in arithmetic calculus; do SWEEP_STEPS[$s]=$(steps_for "$s"); echo "$s: ${SWEEP_STEPS[$s]} steps"; done
for s in arithmetic calculus; do
    for rank in 8 32; do
        for lr in 5e-4 1e-3 2e-3; do    # alpha = 2 x rank: the LoRA scale alpha/r stays 2
            job "$PY" train.py --expert "$s" "${LORA[@]}" --rank "$rank" --alpha $((2 * rank)) --lr "$lr" \
                --steps "${SWEEP_STEPS[$s]}" --out "$OUT/curves/$s/r$rank-lr$lr"
        done
    done
done
stage "curves: the table, the picture and the choice"
read -r RANK LR < <("$PY" -m study curves "$OUT"/curves/*/r* --out "$OUT/curves")
echo "chosen on dev: rank $RANK, learning rate $LR"
