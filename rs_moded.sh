#!/bin/bash
#SBATCH --job-name=rs_moded
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#
# The sweep: tasks x seeds x variants (baseline, modular, svd), on SLURM job arrays or locally.
# Run `rs_moded.sh --help`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: rs_moded.sh [mode] [options]

The sweep: every (task, seed, variant) fine-tune, plus one module stage (capture + mha + ffn) per task
that all its seeds share (only the "modular" variant needs it), then consolidate.py's table.
Variants: baseline (uncompressed), modular (compressed, trained modules), svd (compressed, SVD init,
no module training), random (compressed, random init).

Modes:
  (none)              submit the sweep: with SLURM (sbatch on PATH) as job arrays, else locally
  --local             run it here, job after job (even when sbatch exists; also the default inside a
                      SLURM allocation, i.e. `sbatch rs_moded.sh ...` runs the whole sweep in that one job)
  --parallel N        local: N jobs at a time (xargs -P; OMP_NUM_THREADS = cores / N unless set)
  --wait              SLURM: wait until all jobs have ended, then print the table; exit 1 if any failed
  --print-jobs        print the job-array mapping, one line per index: `i task seed variant`
  --run-index I       worker: run fine-tune job I (I = a number, or `array` = $SLURM_ARRAY_TASK_ID)
  --run-modules T     worker: the module stage of task T (a name, an index into TASKS, or `array`)
  --consolidate       worker: consolidate.py over OUT_DIR -> OUT_DIR/table.txt (and print it)

Index mapping (task-major): with nS seeds and nV variants, index i is
  task = TASKS[i / (nS*nV)], seed = SEEDS[(i / nV) % nS], variant = VARIANTS[i % nV]
e.g. --tasks "rte cb" --seeds "1 2 3" --variants "baseline modular svd": 0 = rte 1 baseline,
1 = rte 1 modular, ..., 17 = cb 3 svd.

Options (also environment variables, in brackets; flags win):
  --tasks "T ..."        [TASKS]     default: cb copa rte wsc stsb mrpc
  --seeds "S ..."        [SEEDS]     default: 1 2 3 4 5
  --variants "V ..."     [VARIANTS]  default: baseline modular svd
  --data_dir D           [DATA_DIR]  default: per task, data/ or else ../shared/data (see modular_pipeline.sh)
  --out_dir D            [OUT_DIR]   default: runs/modular; fine-tunes go to OUT_DIR/TASK/VARIANT/seedS,
                                     modules to OUT_DIR/TASK/{activations,modules}, logs to OUT_DIR/logs
  --model --compression --init --capture_samples --augment --module_epochs --module_seed --mixup
  --no_mixup --ft_epochs --max_train_samples --max_eval_samples --save_model --capture_args
  --module_args --ft_args: as in modular_pipeline.sh (same variables, same defaults)
  --sbatch_args "..."    [RS_SBATCH_ARGS]  extra sbatch options for every job (e.g. "-p gpu --gres=gpu:1")
  --module_sbatch_args   [RS_MODULE_SBATCH_ARGS]  extra sbatch options for the module jobs only
  --max_running N        [RS_MAX_RUNNING]  SLURM: at most N elements of each array at once (%N)
Relative paths are taken from the repository root. Finished jobs are skipped (a fine-tune when its results.json holds the same settings and inputs, else it reruns; modules by their markers), so a
rerun of the same command only does what is missing.
EOF
}

die() { echo "rs_moded.sh: error: $*" >&2; exit 2; }

find_root() {
    local d
    local job_cmd=""  # under sbatch this script is a copy in the spool dir; the job record has the original
    if [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null 2>&1; then
        job_cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -1) || true
        [ -z "$job_cmd" ] || job_cmd=$(dirname "$job_cmd")
    fi
    for d in "${PIPELINE_ROOT:-}" "$(dirname "${BASH_SOURCE[0]}")" "$job_cmd" "${SLURM_SUBMIT_DIR:-}" "$PWD"; do
        if [ -n "$d" ] && [ -f "$d/rs_moded.sh" ] && [ -f "$d/modular_pipeline.sh" ]; then
            (cd "$d" && pwd)
            return 0
        fi
    done
    echo "rs_moded.sh: error: cannot find the repository (modular_pipeline.sh); set PIPELINE_ROOT" >&2
    return 1
}
ROOT=$(find_root)
cd "$ROOT"
export PIPELINE_ROOT=$ROOT
SELF=$ROOT/rs_moded.sh
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export PYTHON

# ------------------------------------------------------------------ settings
TASKS=${TASKS:-cb copa rte wsc stsb mrpc}
SEEDS=${SEEDS:-1 2 3 4 5}
VARIANTS=${VARIANTS:-baseline modular svd}
OUT_DIR=${OUT_DIR:-runs/modular}
RS_SBATCH_ARGS=${RS_SBATCH_ARGS:-}
RS_MODULE_SBATCH_ARGS=${RS_MODULE_SBATCH_ARGS:-}
RS_MAX_RUNNING=${RS_MAX_RUNNING:-}
MODE=submit
MODE_ARG=
LOCAL=0
PARALLEL=1
WAIT=0

while [ $# -gt 0 ]; do
    opt=$1
    case $opt in
        --*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt=$1 ;;
    esac
    case $opt in
        -h|--help) usage; exit 0 ;;
        --local) LOCAL=1; shift ;;
        --wait) WAIT=1; shift ;;
        --print-jobs) MODE=print; shift ;;
        --local-job)  # internal (the local sweep's xargs): --local-job modules|ft ARG
            [ $# -ge 3 ] || die "--local-job needs KIND ARG"
            MODE=localjob; MODE_ARG="$2 $3"; shift 3 ;;
        --consolidate) MODE=consolidate; shift ;;
        --mixup) export MIXUP=1; shift ;;
        --no_mixup) export MIXUP=0; shift ;;
        --save_model) export SAVE_MODEL=1; shift ;;
        --run-index|--run-modules|--parallel|--tasks|--seeds|--variants|--out_dir|--data_dir|--sbatch_args|\
        --module_sbatch_args|--max_running|--model|--compression|--init|--capture_samples|--augment|\
        --module_epochs|--module_seed|--ft_epochs|--max_train_samples|--max_eval_samples|--capture_args|\
        --module_args|--ft_args)
            [ $# -ge 2 ] || die "$opt needs a value"
            val=$2
            case $opt in
                --run-index) MODE=index; MODE_ARG=$val ;;
                --run-modules) MODE=modules; MODE_ARG=$val ;;
                --parallel) PARALLEL=$val ;;
                --tasks) TASKS=$val ;;  --seeds) SEEDS=$val ;;  --variants) VARIANTS=$val ;;
                --out_dir) OUT_DIR=$val ;;  --data_dir) DATA_DIR=$val ;;
                --sbatch_args) RS_SBATCH_ARGS=$val ;;  --module_sbatch_args) RS_MODULE_SBATCH_ARGS=$val ;;
                --max_running) RS_MAX_RUNNING=$val ;;
                *)  # a modular_pipeline.sh setting: --module_epochs -> MODULE_EPOCHS, --model -> MODEL
                    name=${opt#--}; name=${name^^}; export "$name=$val" ;;
            esac
            shift 2 ;;
        *) die "unknown argument '$opt' (see --help)" ;;
    esac
done

unique() {  # unique WORDS...: each once, in order
    local x seen=" "
    for x in "$@"; do [[ $seen == *" $x "* ]] || { seen+="$x "; echo "$x"; }; done
}
# shellcheck disable=SC2086
{ mapfile -t TASK_LIST < <(unique $TASKS); mapfile -t SEED_LIST < <(unique $SEEDS)
  mapfile -t VARIANT_LIST < <(unique $VARIANTS); }
[ ${#TASK_LIST[@]} -gt 0 ] || die "--tasks is empty"
[ ${#SEED_LIST[@]} -gt 0 ] || die "--seeds is empty"
[ ${#VARIANT_LIST[@]} -gt 0 ] || die "--variants is empty"
for s in "${SEED_LIST[@]}"; do [[ $s =~ ^[0-9]+$ ]] || die "--seeds: '$s' is not a non-negative integer"; done
for v in "${VARIANT_LIST[@]}"; do
    case $v in baseline|modular|svd|random) ;; *) die "--variants: unknown variant '$v' (baseline modular svd random)" ;; esac
done
[[ $PARALLEL =~ ^[1-9][0-9]*$ ]] || die "--parallel must be a positive integer, got '$PARALLEL'"
[ -z "$RS_MAX_RUNNING" ] || [[ $RS_MAX_RUNNING =~ ^[1-9][0-9]*$ ]] || die "--max_running must be a positive integer"
[ -n "$OUT_DIR" ] || die "--out_dir is empty"
case $OUT_DIR in /*) ;; *) OUT_DIR=$ROOT/$OUT_DIR ;; esac   # jobs may start elsewhere
export TASKS SEEDS VARIANTS OUT_DIR RS_SBATCH_ARGS RS_MODULE_SBATCH_ARGS RS_MAX_RUNNING
[ -z "${DATA_DIR+set}" ] || export DATA_DIR
LOG_DIR=$OUT_DIR/logs

NT=${#TASK_LIST[@]} NS=${#SEED_LIST[@]} NV=${#VARIANT_LIST[@]}
NJOBS=$((NT * NS * NV))
HAS_MODULAR=0
for v in "${VARIANT_LIST[@]}"; do [ "$v" != modular ] || HAS_MODULAR=1; done

job_of() {  # job_of I -> sets J_TASK J_SEED J_VARIANT
    local i=$1
    if ! [[ $i =~ ^[0-9]+$ ]] || [ "$i" -ge "$NJOBS" ]; then die "job index '$i' is not in [0, $NJOBS)"; fi
    J_TASK=${TASK_LIST[$((i / (NS * NV)))]}
    J_SEED=${SEED_LIST[$(((i / NV) % NS))]}
    J_VARIANT=${VARIANT_LIST[$((i % NV))]}
}
array_id() {
    [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || die "'array' needs SLURM_ARRAY_TASK_ID (run inside a job array)"
    echo "$SLURM_ARRAY_TASK_ID"
}
# The sweep captures from the pretrained model (the paper's setting) and does not distil: its module stage is
# shared by a task's seeds. (A fine-tuned teacher or distillation depends on each seed's baseline run: use
# modular_pipeline.sh per task and seed for that recipe.) Its defaults stay the original quick ones.
export TEACHER=${TEACHER:-pretrained} DISTILL=${DISTILL:-0} INIT=${INIT:-svd} AUGMENT=${AUGMENT:-1} \
    MODULE_EPOCHS=${MODULE_EPOCHS:-2} ALLOCATE=${ALLOCATE:-0}
[ "$TEACHER" = pretrained ] || die "TEACHER=$TEACHER: the sweep captures from the pretrained model (run" \
    "modular_pipeline.sh --teacher finetuned per task and seed)"
[ "$DISTILL" = 0 ] || die "DISTILL=$DISTILL: the sweep does not distil (run modular_pipeline.sh per task and seed)"
label_of() {  # the row label modular_pipeline.sh gives a variant
    local l=$1
    if [ "$1" = modular ] && [ "$INIT" != svd ]; then
        l=modular-$INIT
        [ "$INIT" != data ] || [ "$ALLOCATE" = 0 ] || l=$l-alloc
    fi
    echo "$l"
}
results_path() { echo "$OUT_DIR/$1/$(label_of "$3")/seed$2/results.json"; }  # task seed variant

# ------------------------------------------------------------------ workers
run_index() {
    local i=$1
    [ "$i" != array ] || i=$(array_id)
    job_of "$i"
    echo "rs_moded.sh: job $i = task $J_TASK, seed $J_SEED, variant $J_VARIANT (host $(hostname))"
    exec bash "$ROOT/modular_pipeline.sh" --stages finetune --task "$J_TASK" --seed "$J_SEED" --variant "$J_VARIANT" \
        --out_dir "$OUT_DIR"
}
run_modules() {
    local t=$1
    [ "$t" != array ] || t=$(array_id)
    if [[ $t =~ ^[0-9]+$ ]]; then
        [ "$t" -lt "$NT" ] || die "task index $t is not in [0, $NT)"
        t=${TASK_LIST[$t]}
    fi
    echo "rs_moded.sh: module stage of task $t (host $(hostname))"
    exec bash "$ROOT/modular_pipeline.sh" --stages capture,modules --task "$t" --variant modular --out_dir "$OUT_DIR"
}
consolidate() {
    "$PYTHON" "$ROOT/consolidate.py" --results_dir "$OUT_DIR" --tasks "${TASK_LIST[@]}" --seeds "${SEED_LIST[@]}" \
        --output "$OUT_DIR/table.txt"
}
# check_results: list the fine-tunes without results.json; status 1 if any
check_results() {
    local i missing=0
    for ((i = 0; i < NJOBS; i++)); do
        job_of "$i"
        if [ ! -f "$(results_path "$J_TASK" "$J_SEED" "$J_VARIANT")" ]; then
            echo "missing: job $i ($J_TASK seed $J_SEED $J_VARIANT): no $(results_path "$J_TASK" "$J_SEED" "$J_VARIANT")" >&2
            missing=$((missing + 1))
        fi
    done
    if [ $missing -gt 0 ]; then
        echo "rs_moded.sh: $missing of $NJOBS fine-tunes have no results (logs: $LOG_DIR)" >&2
        return 1
    fi
    echo "rs_moded.sh: all $NJOBS fine-tunes have results"
}

case $MODE in
    print)
        for ((i = 0; i < NJOBS; i++)); do job_of "$i"; echo "$i $J_TASK $J_SEED $J_VARIANT"; done
        exit 0 ;;
    index) run_index "$MODE_ARG" ;;
    modules) run_modules "$MODE_ARG" ;;
    consolidate) consolidate; exit ;;
esac

# ------------------------------------------------------------------ local: one job after another (or N at a time)
# one job of the local sweep (--local-job KIND ARG), its output appended to a log
local_job() {
    local kind=$1 arg=$2 name log rc=0
    if [ "$kind" = modules ]; then
        name="modules-$arg"
    else
        job_of "$arg"
        name="ft-$J_TASK-$J_VARIANT-seed$J_SEED"
    fi
    log=$LOG_DIR/$name.log
    local start
    start=$(stat -c %s "$log" 2>/dev/null || echo 0)  # the log is appended to: look at this run's part only
    echo "[$(date +%H:%M:%S)] start $name (log $log)"
    if [ "$kind" = modules ]; then
        bash "$SELF" --run-modules "$arg" >> "$log" 2>&1 || rc=$?
    else
        bash "$SELF" --run-index "$arg" >> "$log" 2>&1 || rc=$?
    fi
    if [ $rc -eq 0 ]; then
        if [ "$kind" = ft ] && tail -c +$((start + 1)) "$log" | grep -q "finished with the same settings and inputs; nothing to do"; then
            echo "[$(date +%H:%M:%S)] done  $name (skipped: finished with the same settings)"
        else
            echo "[$(date +%H:%M:%S)] done  $name"
        fi
    else
        echo "[$(date +%H:%M:%S)] FAILED $name (exit $rc); last lines of $log:" >&2
        tail -n 5 "$log" | sed 's/^/    /' >&2
        echo "$name" >> "$RS_FAIL_FILE"
    fi
    return 0
}
if [ $MODE = localjob ]; then
    local_job "${MODE_ARG% *}" "${MODE_ARG#* }"
    exit 0
fi

run_local() {
    mkdir -p "$LOG_DIR"
    rm -f "$OUT_DIR/table.txt"
    RS_FAIL_FILE=$(mktemp "$LOG_DIR/.failed.XXXXXX")
    export RS_FAIL_FILE
    if [ "$PARALLEL" -gt 1 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
        local cores
        cores=${SLURM_CPUS_PER_TASK:-$(nproc)}
        OMP_NUM_THREADS=$((cores / PARALLEL)); [ "$OMP_NUM_THREADS" -ge 1 ] || OMP_NUM_THREADS=1
        export OMP_NUM_THREADS
    fi
    local t0 n_failed
    t0=$(date +%s)
    echo "rs_moded.sh: local sweep: $NT task(s) x $NS seed(s) x $NV variant(s) = $NJOBS fine-tunes," \
         "$PARALLEL at a time; out $OUT_DIR"
    if [ $HAS_MODULAR = 1 ]; then
        printf '%s\n' "${TASK_LIST[@]}" | xargs -P "$PARALLEL" -n 1 bash "$SELF" --local-job modules
    fi
    seq 0 $((NJOBS - 1)) | xargs -P "$PARALLEL" -n 1 bash "$SELF" --local-job ft
    echo "rs_moded.sh: consolidate -> $OUT_DIR/table.txt"
    consolidate || echo "rs_moded.sh: consolidate failed" >&2
    n_failed=$(wc -l < "$RS_FAIL_FILE")
    if [ "$n_failed" -gt 0 ]; then
        echo "rs_moded.sh: $n_failed job(s) failed: $(tr '\n' ' ' < "$RS_FAIL_FILE")(logs in $LOG_DIR)" >&2
    fi
    rm -f "$RS_FAIL_FILE"
    echo "rs_moded.sh: local sweep finished in $(( $(date +%s) - t0 ))s"
    check_results
    [ "$n_failed" -eq 0 ]
}

# ------------------------------------------------------------------ SLURM: job arrays with dependencies
submit() {  # submit SBATCH_ARGS... -> prints the job id
    local out
    out=$(sbatch --parsable "$@") || { echo "rs_moded.sh: error: sbatch $* failed" >&2; exit 1; }
    echo "${out%%;*}"
}
run_slurm() {
    mkdir -p "$LOG_DIR"
    rm -f "$OUT_DIR/table.txt"  # the consolidate job writes it anew
    local common sb mb throttle="" ids=() modjob="" t ti i mod_idx other_idx j
    read -r -a sb <<< "$RS_SBATCH_ARGS"
    read -r -a mb <<< "$RS_MODULE_SBATCH_ARGS"
    [ -z "$RS_MAX_RUNNING" ] || throttle="%$RS_MAX_RUNNING"
    common=(--export=ALL --chdir="$ROOT" ${sb[@]+"${sb[@]}"})
    if [ $HAS_MODULAR = 1 ]; then
        modjob=$(submit "${common[@]}" ${mb[@]+"${mb[@]}"} --job-name=rsm-modules --array="0-$((NT - 1))$throttle" \
                 --output="$LOG_DIR/%x-%A_%a.out" "$SELF" --run-modules array)
        echo "modules: job array $modjob (one element per task: ${TASK_LIST[*]})"
        ids+=("$modjob")
    fi
    for ((ti = 0; ti < NT; ti++)); do
        t=${TASK_LIST[$ti]}
        mod_idx=() other_idx=()
        for ((i = ti * NS * NV; i < (ti + 1) * NS * NV; i++)); do
            job_of "$i"
            if [ "$J_VARIANT" = modular ]; then mod_idx+=("$i"); else other_idx+=("$i"); fi
        done
        if [ ${#other_idx[@]} -gt 0 ]; then
            j=$(submit "${common[@]}" --job-name="rsm-ft-$t" --array="$(IFS=,; echo "${other_idx[*]}")$throttle" \
                --output="$LOG_DIR/%x-%A_%a.out" "$SELF" --run-index array)
            echo "fine-tunes $t (no modules needed): job array $j (indices $(IFS=,; echo "${other_idx[*]}"))"
            ids+=("$j")
        fi
        if [ ${#mod_idx[@]} -gt 0 ]; then
            j=$(submit "${common[@]}" --job-name="rsm-ft-$t" --array="$(IFS=,; echo "${mod_idx[*]}")$throttle" \
                --dependency="afterok:${modjob}_${ti}" --kill-on-invalid-dep=yes \
                --output="$LOG_DIR/%x-%A_%a.out" "$SELF" --run-index array)
            echo "fine-tunes $t (modular, after modules ${modjob}_${ti}): job array $j (indices $(IFS=,; echo "${mod_idx[*]}"))"
            ids+=("$j")
        fi
    done
    j=$(submit "${common[@]}" --job-name=rsm-table --dependency="afterany:$(IFS=:; echo "${ids[*]}")" \
        --output="$LOG_DIR/%x-%j.out" "$SELF" --consolidate)
    echo "consolidate: job $j (afterany) -> $OUT_DIR/table.txt"
    ids+=("$j")
    echo "submitted: ${ids[*]}   (squeue -j $(IFS=,; echo "${ids[*]}"); logs in $LOG_DIR)"
    [ $WAIT = 1 ] || return 0

    local joined left t0 states failed=0
    joined=$(IFS=,; echo "${ids[*]}")
    t0=$(date +%s)
    echo "waiting for the jobs to end..."
    while :; do
        if left=$(squeue -h -j "$joined" -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED -o %i 2>/dev/null); then
            [ -n "$left" ] || break
        elif ! squeue -h -o %i >/dev/null 2>&1; then
            echo "rs_moded.sh: squeue is failing; retrying" >&2
        else
            break  # squeue -j fails once every id has left the controller's memory
        fi
        sleep "${RS_POLL_SECONDS:-10}"
    done
    echo "all jobs ended after $(( $(date +%s) - t0 ))s"
    # job states: sacct when accounting works, else scontrol (finished jobs stay there for MinJobAge)
    if states=$(sacct -n -X -P -j "$joined" -o JobID,JobName,State,ExitCode 2>/dev/null) && [ -n "$states" ]; then
        :
    else
        states=$(for jid in "${ids[@]}"; do scontrol -o show job "$jid" 2>/dev/null; done |
                 awk '{id=""; n=""; st=""; ec=""
                       for (i = 1; i <= NF; i++) {
                           if ($i ~ /^JobId=/) id = substr($i, 7)
                           else if ($i ~ /^ArrayJobId=/) { aj = substr($i, 12) }
                           else if ($i ~ /^ArrayTaskId=/) id = aj "_" substr($i, 13)
                           else if ($i ~ /^JobName=/) n = substr($i, 9)
                           else if ($i ~ /^JobState=/) st = substr($i, 10)
                           else if ($i ~ /^ExitCode=/) ec = substr($i, 10) }
                       if (id != "") print id "|" n "|" st "|" ec }') || states=
    fi
    if [ -n "$states" ]; then
        echo "job states: $(printf '%s\n' "$states" | awk -F'|' '{c[$3]++} END {for (k in c) printf "%s %d  ", k, c[k]}')"
        if printf '%s\n' "$states" | grep -v '^[^|]*|[^|]*|COMPLETED|' | grep -q .; then
            echo "rs_moded.sh: jobs that did not complete:" >&2
            printf '%s\n' "$states" | grep -v '^[^|]*|[^|]*|COMPLETED|' | sed 's/^/    /' >&2
            failed=1
        fi
    else
        echo "rs_moded.sh: no job states (neither sacct nor scontrol); checking the results only" >&2
    fi
    if [ -f "$OUT_DIR/table.txt" ]; then cat "$OUT_DIR/table.txt"; else echo "rs_moded.sh: no $OUT_DIR/table.txt (see $LOG_DIR/rsm-table-$j.out)" >&2; failed=1; fi
    check_results || failed=1
    return $failed
}

if [ $LOCAL = 1 ] || ! command -v sbatch >/dev/null 2>&1 || [ -n "${SLURM_JOB_ID:-}" ]; then
    run_local
else
    run_slurm
fi
