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

The sweep: every (task, seed, variant) fine-tune, plus the module stages (capture + mha + ffn) that the
"modular" variant needs, then consolidate.py's table.
Variants: baseline (uncompressed), modular (compressed, trained modules), svd (compressed, SVD init,
no module training), random (compressed, random init).

Two recipes:
  independent (the default: --teacher pretrained --distill 0, the paper's setting): one module stage per task,
      captured from the pretrained MODEL and shared by all its seeds; no fine-tune needs another.
  chained (--teacher finetuned and/or --distill 1; modular_pipeline.sh's default recipe): the compressed runs
      need their seed's fine-tuned baseline model. --teacher finetuned: the module stage is per (task, seed)
      and captures from that seed's baseline (into OUT_DIR/TASK/teacher_seedS/{activations,modules});
      --distill 1: every compressed fine-tune is distilled from its seed's baseline. "baseline" must then be
      in --variants (else the sweep stops with an error): its runs keep their model (baseline/seedS/model),
      and for each (task, seed): baseline -> module stage -> compressed fine-tunes.

Modes:
  (none)              submit the sweep: with SLURM (sbatch on PATH) as job arrays, else locally
  --local             run it here (even when sbatch exists; also the default inside a SLURM allocation, i.e.
                      `sbatch rs_moded.sh ...` runs the whole sweep in that one job), in phases: chained, the
                      baselines first; then the module stages; then the (other) fine-tunes
  --parallel N        local: N jobs at a time within each phase (xargs -P; OMP_NUM_THREADS = cores / N unless set)
  --wait              SLURM: wait until all jobs have ended, then print the table; exit 1 if any failed
  --print-jobs        print the fine-tune job mapping, one line per index: `i task seed variant`
  --run-index I       worker: run fine-tune job I (I = a number, or `array` = $SLURM_ARRAY_TASK_ID)
  --run-variant V P   worker: run the variant-V fine-tune of (task, seed) pair P (a number, or `array`), i.e.
                      job P*nV + (position of V in VARIANTS)
  --run-modules T     worker: the module stage of task T (a name, an index into TASKS, or `array`);
                      pretrained teacher only
  --run-seed-modules P  worker: the module stage of (task, seed) pair P (a number, or `array`); --teacher
                      finetuned only
  --consolidate       worker: consolidate.py over OUT_DIR -> OUT_DIR/table.txt (and print it)

Index mapping (task-major): with nS seeds and nV variants, fine-tune job i is
  task = TASKS[i / (nS*nV)], seed = SEEDS[(i / nV) % nS], variant = VARIANTS[i % nV]
e.g. --tasks "rte cb" --seeds "1 2 3" --variants "baseline modular svd": 0 = rte 1 baseline,
1 = rte 1 modular, ..., 17 = cb 3 svd. Job i belongs to (task, seed) pair P = i / nV, which is
task = TASKS[P / nS], seed = SEEDS[P % nS]; i = P*nV + (position of its variant).

SLURM job arrays (logs: OUT_DIR/logs/NAME-ARRAYJOB_ELEMENT.out; --kill-on-invalid-dep=yes with a dependency,
so a job whose prerequisite failed is cancelled):
  independent: rsm-modules (element = task index, if "modular" is swept); per task, rsm-ft-TASK (elements = job
      indices i; a second one for the modular jobs, afterok on the task's module element); rsm-table afterany
      on all.
  chained: the arrays' element P is pair P, so `aftercorr` ties each element to the same (task, seed):
      rsm-baseline (element P = job P*nV + position of baseline);
      rsm-modules: --teacher finetuned: element P after rsm-baseline's element P (aftercorr); pretrained
          teacher: one element per task, no dependency, as in the independent recipe;
      rsm-ft-V for each compressed variant V (element P = job P*nV + position of V): with --distill 1 aftercorr
          on rsm-baseline; the modular one also after its module element (aftercorr on rsm-modules; pretrained
          teacher: one array per task, afterok on that task's module element);
      rsm-table afterany on all.

Options (also environment variables, in brackets; flags win):
  --tasks "T ..."        [TASKS]     default: cb copa rte wsc stsb mrpc
  --seeds "S ..."        [SEEDS]     default: 1 2 3 4 5
  --variants "V ..."     [VARIANTS]  default: baseline modular svd
  --data_dir D           [DATA_DIR]  default: per task, data/ or else ../shared/data (see modular_pipeline.sh)
  --out_dir D            [OUT_DIR]   default: runs/modular; fine-tunes go to OUT_DIR/TASK/LABEL/seedS (LABEL: the
                                     row label modular_pipeline.sh gives, e.g. svd, modular-data-alloc-ft+kd),
                                     modules to OUT_DIR/TASK/{activations,modules} (with --teacher finetuned
                                     OUT_DIR/TASK/teacher_seedS/{activations,modules}), logs to OUT_DIR/logs
  --teacher T            [TEACHER]   pretrained | finetuned (each seed's baseline)   default: pretrained
  --distill 0|1          [DISTILL]   distil the compressed fine-tunes from their seed's baseline   default: 0
  --init I               [INIT]      svd | data | random: start of the low-rank blocks   default: svd
  --allocate 0|1         [ALLOCATE]  with --init data: allocate the head dims per layer   default: 0
  --augment N            [AUGMENT]   default: 1
  --module_epochs E      [MODULE_EPOCHS]   default: 2
  --model --compression --capture_samples --fit_tokens --module_seed --mixup --no_mixup --ft_epochs --ft_lr
  --max_train_samples --max_eval_samples --save_model --capture_args --module_args --ft_args: as in
                         modular_pipeline.sh (same variables, same defaults)
  --sbatch_args "..."    [RS_SBATCH_ARGS]  extra sbatch options for every job (e.g. "-p gpu --gres=gpu:1")
  --module_sbatch_args   [RS_MODULE_SBATCH_ARGS]  extra sbatch options for the module jobs only
  --max_running N        [RS_MAX_RUNNING]  SLURM: at most N elements of each array at once (%N)
The defaults are the sweep's original quick ones; modular_pipeline.sh's default recipe is
  rs_moded.sh --teacher finetuned --distill 1 --init data --allocate 1 --module_epochs 0 --augment 0 ...
Relative paths are taken from the repository root. Finished jobs are skipped (a fine-tune when its results.json
holds the same settings and inputs, else it reruns; modules by their markers), so a rerun of the same command
only does what is missing. Locally, a job whose prerequisite failed is not run (reported, and counted as failed).
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
        --run-variant)
            [ $# -ge 3 ] || die "--run-variant needs VARIANT and a pair index (or 'array')"
            MODE=variant; MODE_ARG="$2 $3"; shift 3 ;;
        --consolidate) MODE=consolidate; shift ;;
        --mixup) export MIXUP=1; shift ;;
        --no_mixup) export MIXUP=0; shift ;;
        --save_model) export SAVE_MODEL=1; shift ;;
        --run-index|--run-modules|--run-seed-modules|--parallel|--tasks|--seeds|--variants|--out_dir|--data_dir|--sbatch_args|\
        --module_sbatch_args|--max_running|--model|--compression|--init|--capture_samples|--augment|\
        --module_epochs|--module_seed|--ft_epochs|--max_train_samples|--max_eval_samples|--capture_args|\
        --module_args|--ft_args|--teacher|--distill|--allocate|--ft_lr|--fit_tokens)
            [ $# -ge 2 ] || die "$opt needs a value"
            val=$2
            case $opt in
                --run-index) MODE=index; MODE_ARG=$val ;;
                --run-modules) MODE=modules; MODE_ARG=$val ;;
                --run-seed-modules) MODE=seedmodules; MODE_ARG=$val ;;
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
NP=$((NT * NS))   # (task, seed) pairs: pair P = task TASK_LIST[P / NS], seed SEED_LIST[P % NS]; job i is in pair i / NV
HAS_MODULAR=0 HAS_BASELINE=0 HAS_COMPRESSED=0
for v in "${VARIANT_LIST[@]}"; do
    case $v in modular) HAS_MODULAR=1 HAS_COMPRESSED=1 ;; baseline) HAS_BASELINE=1 ;; *) HAS_COMPRESSED=1 ;; esac
done

job_of() {  # job_of I -> sets J_TASK J_SEED J_VARIANT
    local i=$1
    if ! [[ $i =~ ^[0-9]+$ ]] || [ "$i" -ge "$NJOBS" ]; then die "job index '$i' is not in [0, $NJOBS)"; fi
    J_TASK=${TASK_LIST[$((i / (NS * NV)))]}
    J_SEED=${SEED_LIST[$(((i / NV) % NS))]}
    J_VARIANT=${VARIANT_LIST[$((i % NV))]}
}
pair_of() {  # pair_of P -> sets P_TASK P_SEED
    local p=$1
    if ! [[ $p =~ ^[0-9]+$ ]] || [ "$p" -ge "$NP" ]; then die "(task, seed) pair index '$p' is not in [0, $NP)"; fi
    P_TASK=${TASK_LIST[$((p / NS))]}
    P_SEED=${SEED_LIST[$((p % NS))]}
}
variant_pos() {  # variant_pos V -> its position in VARIANTS
    local k
    for ((k = 0; k < NV; k++)); do [ "${VARIANT_LIST[$k]}" != "$1" ] || { echo "$k"; return 0; }; done
    die "variant '$1' is not in --variants (${VARIANT_LIST[*]})"
}
array_id() {
    [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || die "'array' needs SLURM_ARRAY_TASK_ID (run inside a job array)"
    echo "$SLURM_ARRAY_TASK_ID"
}
# The recipe. The sweep's defaults stay the original quick ones: the pretrained model as the teacher (the paper's
# setting; the module stage is shared by a task's seeds) and no distillation. With --teacher finetuned or
# --distill 1 (modular_pipeline.sh's default recipe) the compressed runs depend on their seed's baseline model:
# the sweep is then chained (CHAINED=1): baseline (task, seed) -> module stage (task, seed) -> compressed fine-tunes.
export TEACHER=${TEACHER:-pretrained} DISTILL=${DISTILL:-0} INIT=${INIT:-svd} AUGMENT=${AUGMENT:-1} \
    MODULE_EPOCHS=${MODULE_EPOCHS:-2} ALLOCATE=${ALLOCATE:-0}
case $TEACHER in pretrained|finetuned) ;; *) die "--teacher must be pretrained or finetuned, got '$TEACHER'" ;; esac
case $DISTILL in 0|1) ;; *) die "--distill must be 0 or 1, got '$DISTILL'" ;; esac
case $INIT in svd|data|random) ;; *) die "--init must be svd, data or random, got '$INIT'" ;; esac
case $ALLOCATE in 0|1) ;; *) die "--allocate must be 0 or 1, got '$ALLOCATE'" ;; esac
CHAINED=0   # as modular_pipeline.sh's NEED_BASELINE_MODEL, over the swept variants
if { [ $HAS_MODULAR = 1 ] && [ "$TEACHER" = finetuned ]; } || { [ $HAS_COMPRESSED = 1 ] && [ "$DISTILL" = 1 ]; }; then
    CHAINED=1
fi
SEED_MODULES=0   # the module stage is per (task, seed), after that seed's baseline
[ $HAS_MODULAR = 0 ] || [ "$TEACHER" != finetuned ] || SEED_MODULES=1
if [ $CHAINED = 1 ] && [ $HAS_BASELINE = 0 ]; then
    why=
    [ $SEED_MODULES = 0 ] || why="--teacher finetuned captures the modular variant's teacher from it"
    [ "$DISTILL" = 0 ] || why="${why:+$why; }--distill 1 distils the compressed fine-tunes from it"
    die "--variants '${VARIANT_LIST[*]}' has no 'baseline', but each seed's fine-tuned baseline model is needed" \
        "($why): add baseline to --variants (its runs then come first and keep their model; finished ones are reused)"
fi
label_of() {  # the row label modular_pipeline.sh gives a variant
    local l=$1
    if [ "$1" = modular ]; then
        [ "$INIT" = svd ] || l=$l-$INIT
        [ "$INIT" != data ] || [ "$ALLOCATE" = 0 ] || l=$l-alloc
        [ "$TEACHER" = pretrained ] || l=$l-ft
    fi
    [ "$1" = baseline ] || [ "$DISTILL" = 0 ] || l=$l+kd
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
run_variant() {  # run_variant V P: the variant-V fine-tune of pair P (the chained recipe's arrays: element P = pair P)
    local v=$1 p=$2 k
    [ "$p" != array ] || p=$(array_id)
    pair_of "$p"
    k=$(variant_pos "$v")
    run_index $((p * NV + k))
}
run_modules() {
    local t=$1
    [ "$TEACHER" = pretrained ] || die "--run-modules: with --teacher $TEACHER the module stage is per (task, seed):" \
        "--run-seed-modules PAIR"
    [ "$t" != array ] || t=$(array_id)
    if [[ $t =~ ^[0-9]+$ ]]; then
        [ "$t" -lt "$NT" ] || die "task index $t is not in [0, $NT)"
        t=${TASK_LIST[$t]}
    fi
    echo "rs_moded.sh: module stage of task $t (host $(hostname))"
    exec bash "$ROOT/modular_pipeline.sh" --stages capture,modules --task "$t" --variant modular --out_dir "$OUT_DIR"
}
run_seed_modules() {  # the module stage of pair P, from that seed's fine-tuned baseline (--teacher finetuned)
    local p=$1
    [ "$TEACHER" = finetuned ] || die "--run-seed-modules: with --teacher $TEACHER the module stage is per task:" \
        "--run-modules TASK"
    [ "$p" != array ] || p=$(array_id)
    pair_of "$p"
    echo "rs_moded.sh: module stage of task $P_TASK, seed $P_SEED, teacher: its fine-tuned baseline (pair $p," \
         "host $(hostname))"
    exec bash "$ROOT/modular_pipeline.sh" --stages capture,modules --task "$P_TASK" --seed "$P_SEED" --variant modular \
        --out_dir "$OUT_DIR"
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
    variant) run_variant "${MODE_ARG% *}" "${MODE_ARG#* }" ;;
    modules) run_modules "$MODE_ARG" ;;
    seedmodules) run_seed_modules "$MODE_ARG" ;;
    consolidate) consolidate; exit ;;
esac

# ------------------------------------------------------------------ local: one job after another (or N at a time)
# the local log name of a job: local_name modules TASK | seedmodules PAIR | ft INDEX
local_name() {
    case $1 in
        modules) echo "modules-$2" ;;
        seedmodules) pair_of "$2"; echo "modules-$P_TASK-seed$P_SEED" ;;
        ft) job_of "$2"; echo "ft-$J_TASK-$J_VARIANT-seed$J_SEED" ;;
    esac
}
# what a job needs (the local names of the jobs that must have succeeded before it), one a line
prerequisites() {
    local t s
    case $1 in
        modules) ;;
        seedmodules) pair_of "$2"; echo "ft-$P_TASK-baseline-seed$P_SEED" ;;
        ft)
            job_of "$2"
            t=$J_TASK s=$J_SEED
            if [ "$J_VARIANT" = modular ]; then
                if [ $SEED_MODULES = 1 ]; then echo "modules-$t-seed$s"; else echo "modules-$t"; fi
            fi
            [ "$J_VARIANT" = baseline ] || [ "$DISTILL" = 0 ] || echo "ft-$t-baseline-seed$s" ;;
    esac
}
# one job of the local sweep (--local-job KIND ARG), its output appended to a log
local_job() {
    local kind=$1 arg=$2 name log rc=0 need
    name=$(local_name "$kind" "$arg")
    log=$LOG_DIR/$name.log
    while read -r need; do   # an earlier phase ran it: skip this job if it failed
        if [ -n "$need" ] && grep -qxF "$need" "$RS_FAIL_FILE"; then
            echo "[$(date +%H:%M:%S)] SKIPPED $name: $need failed (log $LOG_DIR/$need.log)" >&2
            echo "$name" >> "$RS_FAIL_FILE"
            return 0
        fi
    done < <(prerequisites "$kind" "$arg")
    local start
    start=$(stat -c %s "$log" 2>/dev/null || echo 0)  # the log is appended to: look at this run's part only
    echo "[$(date +%H:%M:%S)] start $name (log $log)"
    case $kind in
        modules) bash "$SELF" --run-modules "$arg" >> "$log" 2>&1 || rc=$? ;;
        seedmodules) bash "$SELF" --run-seed-modules "$arg" >> "$log" 2>&1 || rc=$? ;;
        *) bash "$SELF" --run-index "$arg" >> "$log" 2>&1 || rc=$? ;;
    esac
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
    case ${MODE_ARG% *} in modules|seedmodules|ft) ;; *) die "--local-job: unknown kind '${MODE_ARG% *}'" ;; esac
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
    local t0 n_failed i base_idx=() rest_idx=()
    t0=$(date +%s)
    echo "rs_moded.sh: local sweep: $NT task(s) x $NS seed(s) x $NV variant(s) = $NJOBS fine-tunes," \
         "$PARALLEL at a time; out $OUT_DIR"
    for ((i = 0; i < NJOBS; i++)); do
        job_of "$i"
        if [ $CHAINED = 1 ] && [ "$J_VARIANT" = baseline ]; then base_idx+=("$i"); else rest_idx+=("$i"); fi
    done
    # phases, each N at a time: (chained) the baselines, then the module stages, then the other fine-tunes
    if [ ${#base_idx[@]} -gt 0 ]; then
        echo "rs_moded.sh: the baselines first (teacher: $TEACHER, distill: $DISTILL)"
        printf '%s\n' "${base_idx[@]}" | xargs -P "$PARALLEL" -n 1 bash "$SELF" --local-job ft
    fi
    if [ $SEED_MODULES = 1 ]; then
        seq 0 $((NP - 1)) | xargs -P "$PARALLEL" -n 1 bash "$SELF" --local-job seedmodules
    elif [ $HAS_MODULAR = 1 ]; then
        printf '%s\n' "${TASK_LIST[@]}" | xargs -P "$PARALLEL" -n 1 bash "$SELF" --local-job modules
    fi
    if [ ${#rest_idx[@]} -gt 0 ]; then
        printf '%s\n' "${rest_idx[@]}" | xargs -P "$PARALLEL" -n 1 bash "$SELF" --local-job ft
    fi
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
# the independent recipe: the fine-tunes of a task as arrays of job indices; the modular ones after their task's
# module element
submit_independent() {
    local t ti i mod_idx other_idx j
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
}
# the chained recipe: every array's element P is (task, seed) pair P, so `aftercorr` chains the same pair:
# rsm-baseline -> rsm-modules (--teacher finetuned) -> rsm-ft-VARIANT
submit_chained() {
    local basejob v k p ti pairs="" deps base_dep="" j after
    for ((p = 0; p < NP; p++)); do pair_of "$p"; pairs+="${pairs:+ }$p=$P_TASK/$P_SEED"; done
    basejob=$(submit "${common[@]}" --job-name=rsm-baseline --array="0-$((NP - 1))$throttle" \
              --output="$LOG_DIR/%x-%A_%a.out" "$SELF" --run-variant baseline array)
    echo "baselines (models kept): job array $basejob (element P = (task, seed) pair P: $pairs)"
    ids+=("$basejob")
    [ "$DISTILL" = 0 ] || base_dep="aftercorr:$basejob"
    if [ $SEED_MODULES = 1 ]; then
        modjob=$(submit "${common[@]}" ${mb[@]+"${mb[@]}"} --job-name=rsm-modules --array="0-$((NP - 1))$throttle" \
                 --dependency="aftercorr:$basejob" --kill-on-invalid-dep=yes \
                 --output="$LOG_DIR/%x-%A_%a.out" "$SELF" --run-seed-modules array)
        echo "modules: job array $modjob (element P: pair P's module stage, teacher its baseline; after" \
             "${basejob}_P: aftercorr)"
        ids+=("$modjob")
    elif [ $HAS_MODULAR = 1 ]; then
        modjob=$(submit "${common[@]}" ${mb[@]+"${mb[@]}"} --job-name=rsm-modules --array="0-$((NT - 1))$throttle" \
                 --output="$LOG_DIR/%x-%A_%a.out" "$SELF" --run-modules array)
        echo "modules: job array $modjob (one element per task: ${TASK_LIST[*]})"
        ids+=("$modjob")
    fi
    for v in "${VARIANT_LIST[@]}"; do
        [ "$v" != baseline ] || continue
        k=$(variant_pos "$v")
        if [ "$v" = modular ] && [ $SEED_MODULES = 0 ]; then   # after its task's module element: an array per task
            for ((ti = 0; ti < NT; ti++)); do
                deps="afterok:${modjob}_${ti}${base_dep:+,$base_dep}"
                j=$(submit "${common[@]}" --job-name="rsm-ft-$v" --array="$((ti * NS))-$(((ti + 1) * NS - 1))$throttle" \
                    --dependency="$deps" --kill-on-invalid-dep=yes \
                    --output="$LOG_DIR/%x-%A_%a.out" "$SELF" --run-variant "$v" array)
                echo "fine-tunes $v, task ${TASK_LIST[$ti]}: job array $j (element P = job P*$NV+$k; $deps)"
                ids+=("$j")
            done
            continue
        fi
        deps=$base_dep
        [ "$v" != modular ] || deps="aftercorr:$modjob${base_dep:+,$base_dep}"
        after=()
        [ -z "$deps" ] || after=(--dependency="$deps" --kill-on-invalid-dep=yes)
        j=$(submit "${common[@]}" --job-name="rsm-ft-$v" --array="0-$((NP - 1))$throttle" ${after[@]+"${after[@]}"} \
            --output="$LOG_DIR/%x-%A_%a.out" "$SELF" --run-variant "$v" array)
        echo "fine-tunes $v: job array $j (element P = job P*$NV+$k; ${deps:-no dependency})"
        ids+=("$j")
    done
}
run_slurm() {
    mkdir -p "$LOG_DIR"
    rm -f "$OUT_DIR/table.txt"  # the consolidate job writes it anew
    local common sb mb throttle="" ids=() modjob="" j
    read -r -a sb <<< "$RS_SBATCH_ARGS"
    read -r -a mb <<< "$RS_MODULE_SBATCH_ARGS"
    [ -z "$RS_MAX_RUNNING" ] || throttle="%$RS_MAX_RUNNING"
    common=(--export=ALL --chdir="$ROOT" ${sb[@]+"${sb[@]}"})
    if [ $CHAINED = 1 ]; then submit_chained; else submit_independent; fi
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
