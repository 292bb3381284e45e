#!/usr/bin/env bash
# The study with its experts trained to their plateau, every choice made on dev
# questions, the headline configurations with three seeds (make plateau). It is
# run stage by stage, and every stage skips or resumes what is done, so a
# stopped run continues where it stopped (train.py --resume, and an evaluation
# once written is kept).
#
#   make plateau                     # the kept study: OUT=checkpoints/phi-tiny-plateau
#   OUT=out/plateau bash study/plateau.sh
#   SMOKE=1 bash study/plateau.sh    # every stage at toy sizes, into out/plateau-smoke: not results
#
# Its stages:
#   data      DATA (data/lila: phi-tiny's pretraining rows, and the test split the
#             study reports) and TRAIN_DATA (data/plateau: a fresh draw of 4,000
#             train and 100 dev questions per submodule, disjoint from all of DATA);
#             the dev split chooses, the test split is read once per final configuration.
#             Both are kept in OUT/questions.tar.xz (and their checksums in
#             OUT/data.sha256): a study resumed on a new machine unpacks them
#             rather than spend an hour generating them again
#   curves    the sizing: dev learning curves of one large skill (arithmetic) and one
#             small (calculus), at three learning rates and ranks 8 and 32, checked
#             every EVAL_EVERY steps on DEV_QUESTIONS dev questions with 4 nearest
#             shots (the protocol of the reported evaluation), up to 1,000 steps or 3
#             passes over the skill's rows, whichever comes first; python -m study
#             curves draws them and picks the rank, the rate and the experts' steps
#   experts   every skill's expert at that rank, rate and length, for each of SEEDS,
#             each keeping the step of its best dev accuracy; the longer curves (seed
#             1's expert of each skill that was not swept, up to 1,000 steps or 3
#             passes where the experts stop short of both: does training longer
#             help?); beside them the mixed LoRA's rate sweep (one LoRA on all skills
#             at rank 8, runs of MIXED_SWEEP_STEPS) and the data curve (the swept
#             skills' experts on 1/4 and 1/2 of their rows)
#   mixed     the mixed LoRA at the rate chosen on dev, per seed as many steps as
#             the experts together, keeping its own best dev step (its plateau);
#             beside it the other seeds' experts of each skill whose longer curve
#             beat seed 1's expert on dev by more than one standard error, trained
#             that long (OUT/chosen/seed-N links each seed's experts), ROUTERS,
#             variants of the two-level router over seed 1's experts, and the
#             clusters: k-means of meta-questions on a uniform
#             sample of the train split, k chosen by silhouette (no label read) in
#             K_RANGE, whose top caps the number of cluster experts; an expert per
#             cluster (one seed), the skill experts' steps shared among them (as
#             much training as one seed's skill experts); and the data curve past
#             all the rows where it still rises (a swept skill whose expert, seed
#             1, beat its run on 1/2 of the rows on dev by more than one standard
#             error): an expert on twice the rows, the fresh draw continued with
#             its own seed (its rows and as many again). The mixed LoRA's checks
#             read every skill's dev questions, each costing as much as about 70
#             steps: every 2 x EVAL_EVERY steps in the sweep, 4 x in the long runs
#   routers   the variant with the best dev accuracy over each seed's experts, and
#             the best variant that routes over experts over the cluster experts
#   test      every final configuration on DATA's test split, LIMIT questions per
#             skill, once: the base (0-shot, 4 nearest shots, 4 random shots of the
#             skill), every seed's experts (seed 1's on every skill: what each
#             forgets), mixed LoRAs and routers, the cluster router, the data curve
#
# Knobs (environment): MODEL, DATA, TRAIN_DATA, OUT, BATCH (LoRA rows per step),
# EVAL_EVERY, DEV_QUESTIONS, SEEDS, LRS (the rates swept), ROUTERS, ROUTER_STEPS,
# MIXED_SWEEP_STEPS, LIMIT, DOCS (a copy of the report and its pictures, if set),
# DEVICE, JOBS (commands at once: 2 on a CPU, one thread each), PY, SMOKE.
set -euo pipefail
cd "$(dirname "$0")/.."     # the repository root: every path is relative to it
SKILLS="algebra arithmetic calculus comparison measurement numbers polynomials probability"
SWEPT="arithmetic calculus"                    # one large skill, one small
DRAWN=data/lila DRAW=(--train 10000) FRESH=data/plateau FRESH_DRAW=(--train 4000 --dev 100) FRESH_SEED=2468
MORE_DRAW=(--train 8000 --dev 100)     # the data curve past all the rows: the fresh draw, continued
MAX_STEPS=1000 RANKS="8 32" RANK1=(--rank1 64 --n-groups 8) K_RANGE=2-16 SAMPLE=2000
if [ -n "${SMOKE:-}" ]; then    # a check that every stage runs, at toy sizes
    echo "SMOKE=1: a smoke run at toy sizes into ${OUT:-out/plateau-smoke}; its numbers are not results"
    SKILLS="algebra arithmetic numbers" SWEPT="arithmetic numbers"
    DRAWN=data/smoke/lila DRAW=(--train 30 --dev 1 --test 3) FRESH=data/smoke/plateau FRESH_DRAW=(--train 30 --dev 2)
    MORE_DRAW=(--train 60 --dev 2)
    MAX_STEPS=4 RANKS="2" RANK1=(--rank1 4 --n-groups 2) K_RANGE=2-3 SAMPLE=40
    : "${OUT:=out/plateau-smoke}" "${BATCH:=2}" "${EVAL_EVERY:=2}" "${DEV_QUESTIONS:=3}" "${SEEDS:=1 2}" \
      "${LRS:=1e-3 2e-3}" "${ROUTERS:=centroid-token rank1}" "${ROUTER_STEPS:=2}" "${MIXED_SWEEP_STEPS:=2}" \
      "${LIMIT:=1}"
fi
MODEL=${MODEL:-checkpoints/phi-tiny}
DATA=${DATA:-$DRAWN}
TRAIN_DATA=${TRAIN_DATA:-$FRESH}
OUT=${OUT:-out/plateau}
BATCH=${BATCH:-8}
EVAL_EVERY=${EVAL_EVERY:-100}
DEV_QUESTIONS=${DEV_QUESTIONS:-300}      # an expert's; the mixed LoRA's and the routers': ALL below
SEEDS=${SEEDS:-1 2 3}
LRS=${LRS:-5e-4 1e-3 2e-3}
ROUTERS=${ROUTERS:-centroid-token learned-token centroid-sequence rank1}
ROUTER_STEPS=${ROUTER_STEPS:-300}
MIXED_SWEEP_STEPS=${MIXED_SWEEP_STEPS:-1000}
LIMIT=${LIMIT:-200}                      # test questions per skill
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-$([ "$DEVICE" = cpu ] && echo 2 || echo 1)}
if [ "$DEVICE" = cpu ]; then
    n=$(( $(nproc) / JOBS ))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( n > 0 ? n : 1 ))}
fi
PY=${PY:-.venv/bin/python}
GEN=.venv-gen/bin/python      # DeepMind's generator, in its own environment (make data)
for name in $ROUTERS; do
    case $name in centroid-token | learned-token | centroid-sequence | rank1) ;;
        *) echo "$0: ROUTERS: unknown variant '$name'; expected centroid-token, learned-token," \
               "centroid-sequence or rank1" >&2; exit 2 ;;
    esac
done
source study/jobs.sh
# every LoRA run of the study: its dev checks, and --resume to continue a stopped one
LORA=(--model "$MODEL" --data "$TRAIN_DATA" --device "$DEVICE" --batch-size "$BATCH" --eval-every "$EVAL_EVERY"
      --eval-questions "$DEV_QUESTIONS" --resume)
N_SKILLS=$(echo $SKILLS | wc -w)
ALL=(--eval-questions $((N_SKILLS * DEV_QUESTIONS / 3)))   # the mixed LoRA's and routers' dev questions (100 a skill)

stage "data"
QUESTIONS=$OUT/questions.tar.xz   # the study's questions, kept: a resumed study unpacks them, not regenerates
if ! { have_all "$DATA" && have_all "$TRAIN_DATA"; } && [ -e "$QUESTIONS" ]; then
    echo "unpacking the study's questions from $QUESTIONS"
    tar -xJPf "$QUESTIONS"
fi
if [ "$DATA" = "$DRAWN" ]; then   # generated; a LiLA download (DATA=...) is used as it is
    have_all "$DATA" || "$GEN" data/generate.py --out "$DATA" --skills "${SKILLS// /,}" "${DRAW[@]}"
    have_all "$TRAIN_DATA" || "$GEN" data/generate.py --out "$TRAIN_DATA" --skills "${SKILLS// /,}" \
        "${FRESH_DRAW[@]}" --test 0 --seed "$FRESH_SEED" --exclude "$DATA"
fi
same_data "$OUT" "$DATA" "$TRAIN_DATA"    # OUT/data.sha256: these questions, or stop
if [ ! -e "$QUESTIONS" ] && have_all "$DATA" && have_all "$TRAIN_DATA"; then
    tar -cJPf "$QUESTIONS.tmp" "$DATA" "$TRAIN_DATA" && mv "$QUESTIONS.tmp" "$QUESTIONS"
    echo "kept the study's questions in $QUESTIONS ($(du -h "$QUESTIONS" | cut -f1))"
fi

stage "curves: where the experts' dev accuracy stops rising, by learning rate and rank"
steps_for() {   # steps_for SKILL: 3 passes over its rows (as train.py counts them), in whole checks, at most MAX_STEPS
    "$PY" - "$MODEL" "$TRAIN_DATA" "$1" "$BATCH" "$EVAL_EVERY" "$MAX_STEPS" <<'EOF'
import math, sys
from data.episodes import Episodes
from data.lila import load
from formats.hf import read_tokenizer
model, data, skill, batch, every, most = sys.argv[1:4] + [int(a) for a in sys.argv[4:]]
rows = Episodes(read_tokenizer(f"{model}/tokenizer.json", math.inf, "<|endoftext|>"),
                load(data, split="train", skills=[skill]), 256, 0, "answer", "skill").rows
print(min(most, every * math.ceil(3 * rows / batch / every)))
EOF
}
longer_steps() {   # longer_steps SKILL: the longer curve's steps of a skill not swept, if more than STEPS
    case " $SWEPT " in *" $1 "*) return ;; esac
    local n && n=$(steps_for "$1")
    [ "$n" -le "$STEPS" ] || echo "$n"
}
declare -A SWEEP_STEPS
for s in $SWEPT; do SWEEP_STEPS[$s]=$(steps_for "$s"); echo "$s: ${SWEEP_STEPS[$s]} steps"; done
for s in $SWEPT; do
    for rank in $RANKS; do
        for lr in $LRS; do    # alpha = 2 x rank: the LoRA scale alpha/r stays 2
            job "$PY" train.py --expert "$s" "${LORA[@]}" --rank "$rank" --alpha $((2 * rank)) --lr "$lr" \
                --steps "${SWEEP_STEPS[$s]}" --out "$OUT/curves/$s/r$rank-lr$lr"
        done
    done
done
stage "curves: the table, the picture and the choice"
runs=() && for s in $SWEPT; do for rank in $RANKS; do for lr in $LRS; do runs+=("$OUT/curves/$s/r$rank-lr$lr"); done; done; done
choice=$("$PY" -m study curves "${runs[@]}" --out "$OUT/curves")    # a failure stops the study here
read -r RANK LR STEPS <<< "$choice"
echo "chosen on dev: rank $RANK, learning rate $LR, $STEPS steps per expert"
EXPERT=("${LORA[@]}" --rank "$RANK" --alpha $((2 * RANK)) --lr "$LR" --steps "$STEPS")

# The runs that read no choice made after the curves share a stage, longest first,
# so that both job slots stay busy; a stage ends only where the next reads a choice.
stage "experts: every skill, each seed, and the longer curves; beside them the mixed LoRA's rate sweep and the data curve"
for seed in $SEEDS; do
    for s in $SKILLS; do
        job "$PY" train.py --expert "$s" "${EXPERT[@]}" --seed "$seed" --out "$OUT/experts/seed-$seed/$s"
    done
done
for s in $SKILLS; do    # the longer curves; the swept skills' are the sizing's runs
    long=$(longer_steps "$s")
    [ -z "$long" ] || job "$PY" train.py --expert "$s" "${EXPERT[@]}" --steps "$long" --seed 1 --out "$OUT/long/$s"
done
MIXED=("${LORA[@]}" "${ALL[@]}" --rank 8 --alpha 16)
for lr in $LRS; do
    job "$PY" train.py --mixed "${MIXED[@]}" --lr "$lr" --steps "$MIXED_SWEEP_STEPS" --seed 1 \
        --eval-every $((2 * EVAL_EVERY)) --out "$OUT/mixed-lr/lr$lr"
done
for part in 0.25 0.5; do     # the data curve: the swept skills' experts on 1/4 and 1/2 of their rows
    have_all "$OUT/rows/data-$part" $SWEPT || "$PY" -m study subset "$TRAIN_DATA" --skills "${SWEPT// /,}" \
        --fraction "$part" --seed 1 --out "$OUT/rows/data-$part"
    for s in $SWEPT; do
        job "$PY" train.py --expert "$s" "${EXPERT[@]}" --data "$OUT/rows/data-$part" --seed 1 \
            --out "$OUT/rows/$s-$part"
    done
done

stage "mixed: each seed at the rate chosen on dev; beside them the experts trained longer and the data curve past all the rows where dev chose it, the router variants and the clusters"
# Each skill's experts train STEPS, or as long as its longer curve where that beat seed 1's expert on dev
# by more than one standard error (python -m study beats); OUT/chosen/seed-N/SKILL links to the run
# that is seed N's expert of the skill, and the routers and the test read the experts there.
TOTAL=0
for s in $SKILLS; do
    long=$(longer_steps "$s")
    if [ -n "$long" ] && [ "$("$PY" -m study beats "$OUT/experts/seed-1/$s" "$OUT/long/$s")" = "$OUT/long/$s" ]; then
        echo "$s: its experts train $long steps, as its longer curve, which beat seed 1's expert on dev"
    else long=""; fi
    TOTAL=$((TOTAL + ${long:-$STEPS}))
    for seed in $SEEDS; do
        mkdir -p "$OUT/chosen/seed-$seed"
        if [ -z "$long" ]; then target=../../experts/seed-$seed/$s
        elif [ "$seed" = 1 ]; then target=../../long/$s
        else target=../../longer/seed-$seed/$s
            job "$PY" train.py --expert "$s" "${EXPERT[@]}" --steps "$long" --seed "$seed" --out "$OUT/longer/seed-$seed/$s"
        fi
        ln -sfn "$target" "$OUT/chosen/seed-$seed/$s"
    done
done
for s in $SWEPT; do    # the data curve past all the rows, where all beat half of them on dev
    [ "$("$PY" -m study beats "$OUT/rows/$s-0.5" "$OUT/experts/seed-1/$s")" = "$OUT/experts/seed-1/$s" ] || continue
    if [ "$DATA" != "$DRAWN" ] || [ "$TRAIN_DATA" != "$FRESH" ]; then
        echo "$s: the data curve still rises, but stops at all the rows: TRAIN_DATA was not drawn here"; continue
    fi
    echo "$s: the data curve still rises on dev; its expert trains on twice the rows"
    have_all "$OUT/rows/data-2" "$s" || "$GEN" data/generate.py --out "$OUT/rows/data-2" --skills "$s" \
        "${MORE_DRAW[@]}" --test 0 --seed "$FRESH_SEED" --exclude "$DATA"
    job "$PY" train.py --expert "$s" "${EXPERT[@]}" --data "$OUT/rows/data-2" --seed 1 --out "$OUT/rows/$s-2"
done
runs=() && for lr in $LRS; do runs+=("$OUT/mixed-lr/lr$lr"); done
best=$("$PY" -m study best "${runs[@]}")
LR_MIXED=${best##*/lr}
echo "mixed LoRA: learning rate $LR_MIXED chosen on dev, $TOTAL steps (the experts' together)"
for seed in $SEEDS; do
    job "$PY" train.py --mixed "${MIXED[@]}" --lr "$LR_MIXED" --steps "$TOTAL" --seed "$seed" \
        --eval-every $((4 * EVAL_EVERY)) --out "$OUT/mixed/seed-$seed"
done
router_flags() {   # router_flags NAME SEED: train.py's flags of a router variant (ROUTERS checked above)
    case $1 in
        centroid-token) echo --experts "$OUT/chosen/seed-$2" ;;
        learned-token) echo --experts "$OUT/chosen/seed-$2" --prior learned ;;
        centroid-sequence) echo --experts "$OUT/chosen/seed-$2" --level sequence ;;
        rank1) echo "${RANK1[@]}" ;;     # fresh rank-1 experts (Intuition-MoR1E): the same for every seed
    esac
}
ROUTER=("${LORA[@]}" "${ALL[@]}" --steps "$ROUTER_STEPS")
for name in $ROUTERS; do     # the variants, over seed 1's experts
    job "$PY" train.py --router $(router_flags "$name" 1) "${ROUTER[@]}" --seed 1 --out "$OUT/routers/seed-1/$name"
done
# the clusters: k by silhouette on a uniform sample (no label read), an expert per cluster
[ -e "$OUT/clusters/assignments.json" ] || "$PY" -m study.clusters --k "$K_RANGE" --sample "$SAMPLE" \
    --split train --model "$MODEL" --data "$TRAIN_DATA" --device "$DEVICE" --seed 1 --out "$OUT/clusters"
K=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['k'])" "$OUT/clusters/groups.json")
SHARE=$(( TOTAL / K / EVAL_EVERY * EVAL_EVERY ))   # in whole checks, at least one
SHARE=$(( SHARE > EVAL_EVERY ? SHARE : EVAL_EVERY ))
echo "clusters: k = $K, chosen by silhouette; $SHARE steps per cluster expert (the experts' $TOTAL shared)"
for ((k = 0; k < K; k++)); do
    job "$PY" train.py --expert "cluster:$k" --clusters "$OUT/clusters" "${EXPERT[@]}" --steps "$SHARE" --seed 1 \
        --out "$OUT/cluster-experts/cluster-$k"
done
stage "routers: the variant chosen on dev over each seed's experts, and the best over experts over the clusters'"
runs=() && for name in $ROUTERS; do runs+=("$OUT/routers/seed-1/$name"); done
CHOSEN=$(basename "$("$PY" -m study best "${runs[@]}")")
echo "router chosen on dev: $CHOSEN"
for seed in $SEEDS; do
    [ "$seed" = 1 ] || job "$PY" train.py --router $(router_flags "$CHOSEN" "$seed") "${ROUTER[@]}" --seed "$seed" \
        --out "$OUT/routers/seed-$seed/$CHOSEN"
done
runs=() && for name in $ROUTERS; do [ "$name" = rank1 ] || runs+=("$OUT/routers/seed-1/$name"); done
OVER_EXPERTS=$(basename "$("$PY" -m study best "${runs[@]}")")   # the best variant that routes over experts
echo "over the cluster experts: $OVER_EXPERTS"
job "$PY" train.py --router $(router_flags "$OVER_EXPERTS" 1 | sed "s|$OUT/chosen/seed-1|$OUT/cluster-experts|") \
    --clusters "$OUT/clusters" "${ROUTER[@]}" --seed 1 --out "$OUT/routers/clusters"

stage "test: every final configuration, once, on $LIMIT test questions per skill"
ev() {   # ev NAME [eval.py flags]: OUT/eval/NAME.json, once (4 nearest shots unless named)
    local name=$1; shift
    [ -e "$OUT/eval/$name.json" ] || job "$PY" eval.py --model "$MODEL" --data "$DATA" --device "$DEVICE" \
        --limit "$LIMIT" --json "$OUT/eval/$name.json" "$@"
}
ev base-0shot --shots 0
ev base
ev base-skill-shots --shots-from skill
for seed in $SEEDS; do
    for s in $SKILLS; do    # seed 1's experts on every skill (what each forgets), the others on their own
        if [ "$seed" = 1 ]; then ev "experts/seed-1/$s" --adapter "$OUT/chosen/seed-1/$s"
        else ev "experts/seed-$seed/$s" --adapter "$OUT/chosen/seed-$seed/$s" --skills "$s"; fi
    done
    ev "mixed/seed-$seed" --adapter "$OUT/mixed/seed-$seed"
    ev "routers/seed-$seed" --moe "$OUT/routers/seed-$seed/$CHOSEN" --out "$OUT/routing/seed-$seed"
done
ev routers/clusters --moe "$OUT/routers/clusters" --out "$OUT/routing/clusters"
for part in 0.25 0.5 2; do     # twice the rows where the data curve went on
    for s in $SWEPT; do
        [ ! -e "$OUT/rows/$s-$part" ] || ev "rows/$s-$part" --adapter "$OUT/rows/$s-$part" --skills "$s"
    done
done
stage "the report"
"$PY" -m study plateau "$OUT" --data "$DATA" ${DOCS:+--docs "$DOCS"}
echo "the ${SMOKE:+smoke }plateau study took $((SECONDS / 60)) min${SMOKE:+ (toy sizes: its numbers are not results)}"
