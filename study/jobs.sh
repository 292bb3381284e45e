# The machinery of the study scripts (study/experiment.sh, study/plateau.sh), sourced
# from the repository root once JOBS and DEVICE are set.
#
# Every stage starts its commands with `job` (at most JOBS at once); the next
# stage first waits for all of them, and a failed command stops the study there.
#
# Several GPUs: with DEVICE=cuda and JOBS > 1, the jobs running at once hold slots
# 0..JOBS-1, and slot i sees only GPU i mod (number of GPUs) through
# CUDA_VISIBLE_DEVICES (so its `--device cuda` is that GPU). A job takes the first
# slot whose job has ended, so JOBS=8 on an 8-GPU node trains eight experts side
# by side, one per GPU. The GPUs are those CUDA_VISIBLE_DEVICES names if it is set,
# else all that `nvidia-smi -L` lists (N_GPUS=n overrides that count).
GPUS=()
if [ "$DEVICE" = cuda ] && [ "$JOBS" -gt 1 ]; then
    if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
        IFS=, read -ra GPUS <<< "$CUDA_VISIBLE_DEVICES"
    else
        n=${N_GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)}
        for ((i = 0; i < n; i++)); do GPUS+=("$i"); done
    fi
    if [ "${#GPUS[@]}" -gt 1 ]; then echo "jobs spread over GPUs ${GPUS[*]}"; fi
fi
PIDS=()
declare -A COMMAND   # pid -> the command it runs, to name a failed one
SLOT_PID=()   # slot -> the job that holds (or held) it
job() {
    if [ "${#GPUS[@]}" -gt 1 ]; then
        local slot running=" $(jobs -rp | tr '\n' ' ') "
        for ((slot = 0; slot < JOBS - 1; slot++)); do     # the first free slot
            [[ $running == *" ${SLOT_PID[slot]:-none} "* ]] || break
        done
        CUDA_VISIBLE_DEVICES=${GPUS[slot % ${#GPUS[@]}]} "$@" & PIDS+=($!); SLOT_PID[slot]=$!
    else
        "$@" & PIDS+=($!)
    fi
    COMMAND[$!]="$*"
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.1; done
}
stage() {   # wait for the jobs started so far; a failed one stops the study, named
    local p
    for p in "${PIDS[@]}"; do
        wait "$p" || { echo "$0: stopped: exit status $? from ${COMMAND[$p]}" >&2; exit 1; }
    done
    PIDS=(); echo; echo "=== $* (at $((SECONDS / 60)) min)"
}

# The questions are part of a study: its OUT records their checksums (sums DIR...),
# and a study resumed on other questions stops rather than mix them.
sums() { local d; for d in "$@"; do [ ! -d "$d" ] || (cd "$d" && find . -name '*.json' | sort \
    | xargs -r sha256sum | sed "s|  \./|  $d/|"); done; }
have_all() {   # have_all DIR [SKILL...]: each skill's task file is there (the generator writes them one by one)
    local d=$1 s; shift
    for s in ${@:-$SKILLS}; do [ -e "$d/$s.json" ] || return 1; done
}
same_data() {   # same_data OUT DIR...: record the questions' checksums in OUT/data.sha256, or stop if they differ
    local out=$1; shift
    mkdir -p "$out"
    if [ ! -e "$out/data.sha256" ]; then sums "$@" > "$out/data.sha256"
    elif ! sums "$@" | cmp -s - "$out/data.sha256"; then
        echo "$0: the data ($*) holds other questions than $out/data.sha256 records; use another OUT" >&2
        exit 2
    fi
}
