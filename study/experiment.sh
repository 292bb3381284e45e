#!/usr/bin/env bash
# The whole study in one command (make experiment): data, learning rates chosen
# on dev questions, eight skill experts, the baselines (the mixed LoRA at equal
# steps and at equal parameters, a full fine-tune of each skill, one LoRA and the
# whole model fine-tuned skill after skill), clusters and cluster experts, router
# variants, a skill added to a seven-skill mixture, evaluation of every
# configuration, the forgetting curves, and out/REPORT.md with the study's goals
# answered (python -m study report). Every stage skips or resumes what is already done,
# so a killed run continues where it stopped.
#
# It first moves to the repository root: every path below, and MODEL, DATA, OUT given
# as relative paths, are the repository's.
#
#   bash study/experiment.sh                    # phi-tiny, CPU: a quick run, 1 h 45 min on 2 cores (+25 min data)
#   SMOKE=1 bash study/experiment.sh            # every stage at toy sizes, in minutes (make experiment SMOKE=1)
#   make study          # the study at size of docs/study/ (kept in checkpoints/phi-tiny-study)
#   MODEL=microsoft/phi-2 DEVICE=cuda bash study/experiment.sh    # the real phi-2 on a GPU
#
# Knobs (environment): MODEL (a folder or a Hugging Face id), DATA (evaluation:
# its test split; default data/lila, generated), TRAIN_DATA (training; default a
# fresh draw beside the generated DATA, or DATA itself when DATA is given), OUT,
# DOCS (a copy of the report, if set), STEPS (LoRA steps per expert), ROUTER_STEPS,
# BATCH (LoRA batch), EVAL_EVERY (steps between dev evaluations; the best is kept),
# LIMIT (test questions per skill in every evaluation), DEVICE, DTYPE (evaluation
# dtype, e.g. bfloat16 on a GPU), LORA_LRS and FULL_LRS (the learning rates tried
# for the LoRAs and the full fine-tune), JOBS (commands of a stage run at once: 2 on
# a CPU, each with half the cores; a GPU takes several, and with DEVICE=cuda they are
# spread over the GPUs, see job() below), PY (python), SMOKE (below).
#
#   DEVICE=cuda PY=python3 STEPS=300 BATCH=16 ROUTER_STEPS=300 EVAL_EVERY=100 JOBS=8 bash study/experiment.sh
set -euo pipefail
cd "$(dirname "$0")/.."     # the repository root: MODEL, DATA, OUT and the scripts are relative to it
# When DATA is not given, the questions are generated into DRAWN, data/generate.py's sizes per
# submodule: DRAW those of make data, FRESH_DRAW a fresh draw to train on (TRAIN_DATA, below), and
# COMPOSED_DRAW composed questions, which exist for the five COMPOSED skills.
SKILLS="algebra arithmetic calculus comparison measurement numbers polynomials probability"
COMPOSED="algebra calculus comparison numbers polynomials"
DRAWN=data/lila DRAW=(--train 10000) FRESH_DRAW=(--train 4000 --dev 100) COMPOSED_DRAW=(--train 200 --test 50)
# SMOKE=1: a smoke run, a check that every stage runs, not a result: three skills, a few questions
# of each drawn into data/smoke, two steps per run, one test question per skill, written to its own
# OUT (out/smoke); 8 min on 2 idle cores (15 min of CPU time), questions drawn included
# (time SMOKE=1 bash study/experiment.sh). A knob given as well still wins.
if [ -n "${SMOKE:-}" ]; then
    echo "SMOKE=1: a smoke run at toy sizes into ${OUT:-out/smoke}; its numbers are not results"
    SKILLS="algebra arithmetic numbers" COMPOSED="algebra numbers"
    DRAWN=data/smoke/lila DRAW=(--train 30 --dev 1 --test 3) FRESH_DRAW=(--train 30 --dev 1)
    COMPOSED_DRAW=(--train 5 --test 2)
    : "${OUT:=out/smoke}" "${STEPS:=2}" "${ROUTER_STEPS:=2}" "${BATCH:=2}" "${EVAL_EVERY:=2}" "${LIMIT:=1}" \
      "${LORA_LRS:=1e-3 4e-3}" "${FULL_LRS:=1e-4 3e-4}"
fi
K=$(echo $SKILLS | wc -w)    # clusters of meta-questions: one per skill, a cluster expert for each skill expert
MODEL=${MODEL:-checkpoints/phi-tiny}
DATA=${DATA:-$DRAWN}
# Training questions: a draw the base never saw (data/generate.py --exclude DATA), so that the experts
# and the baselines learn something beyond the prompt shape; DATA's test split is the evaluation.
TRAIN_DATA=${TRAIN_DATA:-$([ "$DATA" = "$DRAWN" ] && echo "$(dirname "$DRAWN")/fresh" || echo "$DATA")}
OUT=${OUT:-out}
DOCS=${DOCS:-}     # if set, the report and its pictures are copied there at the end (make study: docs/study)
# The defaults are a quick run (103 min on 2 CPU cores, the data made); the study at size
# (make study) is STEPS=100 ROUTER_STEPS=100 LIMIT=200 (200 test questions per skill).
STEPS=${STEPS:-25}
ROUTER_STEPS=${ROUTER_STEPS:-25}
BATCH=${BATCH:-8}
EVAL_EVERY=${EVAL_EVERY:-100}   # also how often a run saves the state it resumes from
LIMIT=${LIMIT:-40}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-float32}
# On a CPU two one-thread jobs at a time keep two cores busier than one two-thread job.
JOBS=${JOBS:-$([ "$DEVICE" = cpu ] && echo 2 || echo 1)}
if [ "$DEVICE" = cpu ]; then
    n=$(( $(nproc) / JOBS ))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( n > 0 ? n : 1 ))}
fi
PY=${PY:-.venv/bin/python}
COMMON=(--model "$MODEL" --data "$DATA" --device "$DEVICE")
MIXED=(--data "$TRAIN_DATA" --batch-size "$BATCH" --eval-every "$EVAL_EVERY" --eval-questions 64 --resume)
LORA=("${MIXED[@]}" --steps "$STEPS")   # the mixed LoRAs take --steps-per-skill "$STEPS" instead
source study/jobs.sh    # job (at most JOBS commands at once, spread over the GPUs) and stage
# Each run is evaluated on LIMIT test questions per skill (4-shot unless named) in the
# stage after the one that trained it, beside that stage's training (a full fine-tune and
# a sequential stage: in the job that trains it): the cores stay busy, and a study
# stopped halfway already holds the results of what it trained.
# Shots are random ones of the question's skill unless named: OUT/eval/nearest/ holds the
# same configurations with the nearest train questions as shots (the strongest prompt
# that reads no label), and OUT/eval/submodule/ the base with shots of the question's
# own submodule (an oracle).
evaluate() {  # evaluate NAME [eval.py flags]: one configuration -> OUT/eval/NAME.json (once); a routed
              # mixture's routing report goes to OUT/routing-other/NAME unless its flags name an --out
    local name=$1 routing=(); shift
    if [[ " $* " == *" --moe "* && " $* " != *" --out "* ]]; then routing=(--out "$OUT/routing-other/$name"); fi
    [ -e "$OUT/eval/$name.json" ] || "$PY" eval.py "${COMMON[@]}" --dtype "$DTYPE" --limit "$LIMIT" \
        --shots-from skill --json "$OUT/eval/$name.json" "${routing[@]}" "$@"
}
ev() { [ -e "$OUT/eval/$1.json" ] || job evaluate "$@"; }     # the same, as a job
# A full fine-tune's weights are the whole model (126 MB on phi-tiny with its optimizer state,
# 33 GB for phi-2): each is evaluated in the job that trains it, and once evaluated it is done.
# A study kept in git keeps their logs and evaluations, not their weights (.gitignore).
finetune() {  # finetune NAME DIR [train.py flags]: train --full into DIR, then evaluate it as NAME
    local name=$1 dir=$2; shift 2
    "$PY" train.py "${COMMON[@]}" "$@" --out "$dir" && evaluate "$name" --model "$dir"
}

stage "data"
# The questions are part of the study: OUT records their checksums, and a study resumed on
# other questions (another draw of the generator, another DATA) stops rather than mix them.
if [ "$DATA" = "$DRAWN" ]; then   # generated; a LiLA download (DATA=...) is used as it is
    GEN=.venv-gen/bin/python
    # phi-tiny's pretraining data (make data), whose test split is the evaluation; excluding
    # all of it, not a sample, keeps every training question of the study new to the base
    have_all "$DATA" || "$GEN" data/generate.py --out "$DATA" --skills "${SKILLS// /,}" "${DRAW[@]}"
    have_all "$TRAIN_DATA" || "$GEN" data/generate.py --out "$TRAIN_DATA" --skills "${SKILLS// /,}" \
        "${FRESH_DRAW[@]}" --test 0 --seed 4321 --exclude "$DATA"
    have_all "$DATA/composed" $COMPOSED || "$GEN" data/generate.py --out "$DATA" --composed-only \
        --skills "${COMPOSED// /,}" "${COMPOSED_DRAW[@]}" --dev 0
fi
same_data "$OUT" "$DATA" "$TRAIN_DATA"    # OUT/data.sha256: these questions, or stop

stage "learning rates: each family's, chosen on dev questions"
# No strawmen: the experts, the full fine-tune and the mixed LoRA each get the best
# of three learning rates (two in a smoke run) by dev accuracy (TRAIN_DATA's dev split,
# never the test split), at the study's steps. The experts and the full fine-tune are swept on one
# skill, the mixed LoRA on all of them; its best run is the study's mixed LoRA.
# A tie in dev accuracy goes to the lower dev loss (then to the rate named first).
LORA_LRS=${LORA_LRS:-1e-3 2e-3 4e-3}
FULL_LRS=${FULL_LRS:-3e-5 1e-4 3e-4}
SWEEP_SKILL=arithmetic
for lr in $LORA_LRS; do
    job "$PY" train.py --expert "$SWEEP_SKILL" "${COMMON[@]}" "${LORA[@]}" --lr "$lr" --eval-questions 100 \
        --out "$OUT/lr/expert-$lr"
    job "$PY" train.py --mixed "${COMMON[@]}" "${MIXED[@]}" --steps-per-skill "$STEPS" --lr "$lr" \
        --eval-questions 400 --out "$OUT/lr/mixed-$lr"
done
for lr in $FULL_LRS; do    # evaluated on every skill too: how forgetting grows with the rate
    [ -e "$OUT/eval/sweep-$SWEEP_SKILL/full-$lr.json" ] || job finetune "sweep-$SWEEP_SKILL/full-$lr" \
        "$OUT/lr/full-$lr" --expert "$SWEEP_SKILL" --full "${LORA[@]}" --lr "$lr" --eval-questions 100
done

stage "skill experts"
best_lr() {   # best_lr FAMILY LR...: the learning rate of OUT/lr/FAMILY-LR with the best dev accuracy
    local family=$1 lr runs=() best; shift
    for lr in "$@"; do runs+=("$OUT/lr/$family-$lr"); done
    best=$("$PY" -m study best "${runs[@]}")
    echo "${best#"$OUT/lr/$family-"}"
}
LR_EXPERT=$(best_lr expert $LORA_LRS)
LR_FULL=$(best_lr full $FULL_LRS)
LR_MIXED=$(best_lr mixed $LORA_LRS)
echo "learning rates chosen on dev: experts $LR_EXPERT, full fine-tune $LR_FULL, mixed LoRA $LR_MIXED"
EXPERT=("${LORA[@]}" --lr "$LR_EXPERT")
FULL=(--full "${LORA[@]}" --lr "$LR_FULL")
MIXED+=(--lr "$LR_MIXED")    # from here on, every mixed LoRA trains at its chosen rate
mkdir -p "$OUT" && ln -sfnT "lr/mixed-$LR_MIXED" "$OUT/mixed"
for s in $SKILLS; do
    job "$PY" train.py --expert "$s" "${COMMON[@]}" "${EXPERT[@]}" --out "$OUT/experts/$s"
done
# evaluated beside them: the base, the mixed LoRA of the learning-rate stage, and every
# rate of the one-skill sweeps on all skills (how forgetting grows with the rate)
ev base-0shot --shots 0
ev base-4shot
ev mixed --adapter "$OUT/mixed"
for lr in $LORA_LRS; do ev "sweep-$SWEEP_SKILL/expert-$lr" --adapter "$OUT/lr/expert-$lr"; done

stage "baselines that can forget: a full fine-tune of each skill, one LoRA at the experts' parameters"
for s in $SKILLS; do
    [ -e "$OUT/eval/full/$s.json" ] || job finetune "full/$s" "$OUT/full/$s" --expert "$s" "${FULL[@]}"
done
LONGER="$((2 * STEPS)) $((4 * STEPS))"
for n in $LONGER; do    # the sweep skill's expert and full fine-tune trained longer: how forgetting grows with steps
    name=sweep-$SWEEP_SKILL/full-$LR_FULL-${n}steps
    [ -e "$OUT/eval/$name.json" ] || job finetune "$name" "$OUT/longer/full-${n}steps" --expert "$SWEEP_SKILL" \
        "${FULL[@]}" --steps "$n"
    job "$PY" train.py --expert "$SWEEP_SKILL" "${COMMON[@]}" "${EXPERT[@]}" --steps "$n" \
        --out "$OUT/longer/expert-${n}steps"
done
# rank 64 = the trainable parameters of eight rank-8 experts; alpha/r stays 2
job "$PY" train.py --mixed "${COMMON[@]}" "${MIXED[@]}" --steps-per-skill "$STEPS" --rank 64 --alpha 128 \
    --out "$OUT/mixed-r64"
for s in $SKILLS; do    # evaluated beside them: every expert on every skill, the forgetting matrix
    ev "experts/$s" --adapter "$OUT/experts/$s"
done

stage "sequential fine-tunes: one LoRA, and the whole model, trained skill after skill"
sequential() {  # sequential lora|full: each stage starts from the one before and is evaluated after it
    local i=0 s dir from=() how last
    if [ "$1" = lora ]; then how=("${EXPERT[@]}"); else how=("${FULL[@]}"); fi
    # the full stages' weights are not kept (see finetune): the chain is done once its last stage is
    # evaluated with both sources of shots (the nearest ones, see the last stages, by the stage's own
    # model where it is a full fine-tune)
    last=$(echo $SKILLS | wc -w)-${SKILLS##* }.json
    [ -e "$OUT/eval/sequential-$1/$last" ] && [ -e "$OUT/eval/nearest/sequential-$1/$last" ] && return
    for s in $SKILLS; do
        i=$((i + 1)) && dir=$OUT/sequential-$1/$i-$s
        "$PY" train.py --expert "$s" "${COMMON[@]}" "${how[@]}" "${from[@]}" --out "$dir"
        if [ "$1" = lora ]; then from=(--adapter "$dir"); else from=(--model "$dir"); fi
        evaluate "sequential-$1/$i-$s" "${from[@]}"
        evaluate "nearest/sequential-$1/$i-$s" --shots-from nearest "${from[@]}"
    done
}
job sequential lora
job sequential full
for n in $LONGER; do    # evaluated beside them: the previous stage's longer experts
    ev "sweep-$SWEEP_SKILL/expert-$LR_EXPERT-${n}steps" --adapter "$OUT/longer/expert-${n}steps"
done

echo; echo "=== clusters of meta-questions (beside the sequential fine-tunes)"
[ -e "$OUT/clusters/assignments.json" ] || job "$PY" cluster.py --k "$K" --split train --limit 300 \
    --model "$MODEL" --data "$TRAIN_DATA" --device "$DEVICE" --out "$OUT/clusters"
[ -e "$OUT/clusters-test/report.md" ] || job "$PY" -m study.clusters --k "$K" --split test --limit 100 \
    --model "$MODEL" --data "$DATA" --device "$DEVICE" --out "$OUT/clusters-test"
# semi-supervised: one cluster per skill, seeded by 10 labelled questions of each
[ -e "$OUT/clusters-seeded/assignments.json" ] || job "$PY" cluster.py --seeded 10 --split train --limit 300 \
    --model "$MODEL" --data "$TRAIN_DATA" --device "$DEVICE" --out "$OUT/clusters-seeded"
ev mixed-r64 --adapter "$OUT/mixed-r64"    # evaluated beside them: the previous stage's LoRA

stage "cluster experts (unsupervised, and seeded by a few labels)"
for ((k = 0; k < K; k++)); do
    job "$PY" train.py --expert "cluster:$k" --clusters "$OUT/clusters" "${COMMON[@]}" "${EXPERT[@]}" \
        --out "$OUT/cluster-experts/cluster-$k"
    job "$PY" train.py --expert "cluster:$k" --clusters "$OUT/clusters-seeded" "${COMMON[@]}" "${EXPERT[@]}" \
        --out "$OUT/seeded-experts/cluster-$k"
done

stage "routers"
# The cluster experts are done: every router can train at once. Like the LoRAs, a router
# saves its state every EVAL_EVERY steps and keeps its best checkpoint on dev questions.
ROUTER=(--router "${COMMON[@]}" --data "$TRAIN_DATA" --steps "$ROUTER_STEPS" --batch-size "$BATCH"
        --eval-every "$EVAL_EVERY" --eval-questions 64 --router-questions 200 --resume)
job "$PY" train.py "${ROUTER[@]}" --experts "$OUT/experts" --prior centroid --level token \
    --out "$OUT/routers/centroid-token"
job "$PY" train.py "${ROUTER[@]}" --experts "$OUT/experts" --prior learned --level token \
    --out "$OUT/routers/learned-token"
job "$PY" train.py "${ROUTER[@]}" --experts "$OUT/experts" --prior centroid --level sequence \
    --out "$OUT/routers/centroid-sequence"
job "$PY" train.py "${ROUTER[@]}" --experts "$OUT/cluster-experts" --clusters "$OUT/clusters" \
    --prior centroid --level token --out "$OUT/routers/clusters-token"
job "$PY" train.py "${ROUTER[@]}" --experts "$OUT/seeded-experts" --clusters "$OUT/clusters-seeded" \
    --prior centroid --level token --out "$OUT/routers/seeded-token"
# Intuition-MoR1E's comparison point: 64 fresh rank-1 experts for eight skills (the parameters of
# the eight rank-8 experts) trained jointly with the gates, as many steps as the mixed LoRA
job "$PY" train.py "${ROUTER[@]}" --rank1 $((8 * K)) --n-groups "$K" --steps $((K * STEPS)) --out "$OUT/routers/rank1"

stage "adding a skill: seven skills first, then the eighth"
# Experts, a router and a mixed LoRA on the first seven skills, from their questions alone. Adding
# the eighth to the mixture is its expert (trained alone) plus a router trained again over all eight,
# with every expert frozen: that is routers/centroid-token. The mixed LoRA adds it by retraining on
# all eight (out/mixed) or by training on the eighth alone from the seven-skill LoRA.
NEW_SKILL=${SKILLS##* }
mkdir -p "$OUT/add-skill/experts7" "$OUT/add-skill/data7"
for s in ${SKILLS% *}; do    # relative links: the study folder can move, or be cloned
    ln -sfn "../../experts/$s" "$OUT/add-skill/experts7/$s"
    ln -sfn "$(realpath -m --relative-to="$OUT/add-skill/data7" "$TRAIN_DATA/$s.json")" "$OUT/add-skill/data7/$s.json"
done
job "$PY" train.py "${ROUTER[@]}" --data "$OUT/add-skill/data7" --experts "$OUT/add-skill/experts7" \
    --prior centroid --level token --out "$OUT/add-skill/router7"
add_to_mixed() {   # the seven-skill mixed LoRA, then the eighth skill alone from it
    "$PY" train.py --mixed "${COMMON[@]}" "${MIXED[@]}" --data "$OUT/add-skill/data7" \
        --steps-per-skill "$STEPS" --out "$OUT/add-skill/mixed7"
    "$PY" train.py --expert "$NEW_SKILL" "${COMMON[@]}" "${EXPERT[@]}" --adapter "$OUT/add-skill/mixed7" \
        --out "$OUT/add-skill/mixed7-then-$NEW_SKILL"
}
job add_to_mixed
for r in centroid-token learned-token centroid-sequence clusters-token seeded-token rank1; do   # beside them
    ev "moe-$r" --moe "$OUT/routers/$r" --out "$OUT/routing/$r"
done
ev moe-task-soft --moe "$OUT/routers/centroid-token" --variant task-soft
ev moe-task-hard --moe "$OUT/routers/centroid-token" --variant task-hard

stage "the last evaluations: adding a skill, composed questions, steering"
ev add-skill/router7 --moe "$OUT/add-skill/router7" --out "$OUT/routing-add-skill/router7"
ev add-skill/mixed7 --adapter "$OUT/add-skill/mixed7"
ev "add-skill/mixed7-then-$NEW_SKILL" --adapter "$OUT/add-skill/mixed7-then-$NEW_SKILL"

if [ -d "$DATA/composed" ]; then    # composed questions (two skills chained): the same configurations
    ev composed/base-4shot --data "$DATA/composed"
    ev composed/mixed --data "$DATA/composed" --adapter "$OUT/mixed"
    for r in centroid-token learned-token centroid-sequence clusters-token seeded-token rank1; do
        ev "composed/moe-$r" --data "$DATA/composed" --moe "$OUT/routers/$r" --out "$OUT/routing-composed/$r"
    done
    ev composed/moe-task-hard --data "$DATA/composed" --moe "$OUT/routers/centroid-token" --variant task-hard
fi

# steering with --route: each skill's questions sent to its own expert, and to the next skill's
set -- $SKILLS
for s in $SKILLS; do
    wrong=$(echo $SKILLS $1 | tr ' ' '\n' | grep -A1 -x "$s" | sed -n 2p)
    ev "steer/own-$s" --skills "$s" --moe "$OUT/routers/centroid-token" --route "$s"
    ev "steer/wrong-$s" --skills "$s" --moe "$OUT/routers/centroid-token" --route "$wrong"
done

stage "the strongest few-shot prompt without labels: the base with the nearest shots, and with an oracle's"
# The first evaluation with nearest shots embeds the pool of train questions, once (cached
# under runs/embed-cache); the next stage's read it.
NEAREST=(--shots-from nearest)
ev nearest/base-4shot "${NEAREST[@]}"
ev submodule/base-4shot --shots-from submodule

stage "what the fine-tunes add over the strongest prompt: every configuration with the nearest shots"
# the mixed LoRAs, each expert on its own skill, the routers and the runs of adding a skill (the
# sequential fine-tunes' stages are evaluated with them in their own stage)
ev nearest/mixed "${NEAREST[@]}" --adapter "$OUT/mixed"
ev nearest/mixed-r64 "${NEAREST[@]}" --adapter "$OUT/mixed-r64"
for s in $SKILLS; do ev "nearest/experts/$s" "${NEAREST[@]}" --skills "$s" --adapter "$OUT/experts/$s"; done
for r in centroid-token learned-token centroid-sequence clusters-token seeded-token rank1; do
    ev "nearest/moe-$r" "${NEAREST[@]}" --moe "$OUT/routers/$r" --out "$OUT/routing-nearest/$r"
done
ev nearest/moe-task-soft "${NEAREST[@]}" --moe "$OUT/routers/centroid-token" --variant task-soft
ev nearest/moe-task-hard "${NEAREST[@]}" --moe "$OUT/routers/centroid-token" --variant task-hard
ev nearest/add-skill/router7 "${NEAREST[@]}" --moe "$OUT/add-skill/router7" --out "$OUT/routing-nearest/router7"
ev nearest/add-skill/mixed7 "${NEAREST[@]}" --adapter "$OUT/add-skill/mixed7"
ev "nearest/add-skill/mixed7-then-$NEW_SKILL" "${NEAREST[@]}" --adapter "$OUT/add-skill/mixed7-then-$NEW_SKILL"

stage "beyond the answer format: experts trained on rows shaped like the nearest shots' prompts, and longer"
# Rows of one submodule's questions are the shape of a prompt of nearest shots (a question's
# nearest train questions are almost all of its submodule); and the sweep skill's expert
# trained 2 and 4 times longer. Each is evaluated with the nearest shots on its own skill.
for s in $SKILLS; do
    job "$PY" train.py --expert "$s" "${COMMON[@]}" "${EXPERT[@]}" --rows submodule --out "$OUT/experts-submodule-rows/$s"
done
for n in $LONGER; do
    ev "nearest/longer/expert-${n}steps" "${NEAREST[@]}" --skills "$SWEEP_SKILL" --adapter "$OUT/longer/expert-${n}steps"
done
stage "beyond the answer format: their evaluations"
for s in $SKILLS; do
    ev "nearest/experts-submodule-rows/$s" "${NEAREST[@]}" --skills "$s" --adapter "$OUT/experts-submodule-rows/$s"
done

stage "report"
"$PY" -m study forgetting "$OUT/eval/base-4shot.json" "$OUT"/eval/experts/*.json --out "$OUT/forgetting"
for kind in lora full; do    # the forgetting curves (stages 1..8 sort by name)
    "$PY" -m study curve "$OUT/eval/base-4shot.json" "$OUT"/eval/sequential-$kind/*.json \
        --out "$OUT/sequential-$kind"
done
"$PY" -m study report "$OUT" ${DOCS:+--docs "$DOCS"}
echo "the ${SMOKE:+smoke }study took $((SECONDS / 60)) min${SMOKE:+ (toy sizes: its numbers are not results)}"
