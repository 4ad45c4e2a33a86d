#!/bin/bash
#SBATCH --job-name=modular
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
#
# Modular training for transformer compression, one task and one seed:
#   capture -> mha -> ffn -> finetune -> table        (run `modular_pipeline.sh --help`)
#
# Works the same with `bash modular_pipeline.sh ...` (laptop) and `sbatch modular_pipeline.sh ...` (cluster).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: modular_pipeline.sh [options]          (or: sbatch modular_pipeline.sh [options])

Runs the staged pipeline for ONE task and ONE seed:
  baseline  run_superglue.py -> OUT_DIR/TASK/baseline/seedSEED (model saved)   (when the teacher is the fine-tuned
                                                           baseline, when distilling, or for --variant baseline)
  capture   capture_data.py  -> activations               (from MODEL with --teacher pretrained: OUT_DIR/TASK/activations;
                                                           from this seed's baseline with --teacher finetuned:
                                                           OUT_DIR/TASK/teacher_seedSEED/activations)
  mha, ffn  mha_modular.py / ffn_modular.py -> modules (beside the activations)
  finetune  run_superglue.py --resume -> OUT_DIR/TASK/LABEL/seedSEED/results.json
  table     consolidate.py --results_dir OUT_DIR/TASK      (always runs; median-over-seeds table + retention)
Every stage resumes: the capture by its manifest and settings marker, the modules by .mha.done/.ffn.done markers
that hold their settings (and the trainers skip finished layers), a fine-tune by run_superglue.py --resume (a
finished run is reused only with the same settings and input weights; an unfinished one continues from its
last epoch checkpoint). A killed run rerun with the same command continues where it stopped.

The default recipe (what measured best on this project's CPU budget, results/RESULTS.md section 7): the
teacher is this seed's fine-tuned baseline, the low-rank blocks start from the activation-aware closed form
(--init data) with the attention head dims allocated per layer (same FLOPs), no module training, and the
compressed fine-tune is distilled from the baseline.
The paper's recipe:  --teacher pretrained --init random --module_epochs 200 --ft_epochs 18 --distill 0

Options (each also as an environment variable, in brackets; a flag wins over the variable):
  --task T              boolq cb copa rte wic wsc stsb mrpc                   [TASK]            (stsb)
  --seed S              fine-tuning seed                                      [SEED]            (1)
  --model M             pretrained model: 'minilm' (embedded MiniLM-L6), a dir or hub id [MODEL] (minilm)
  --compression C       divide head_dim and FFN width by C (>= 1)             [COMPRESSION]     (2)
  --variant V           modular (compressed, blocks from the module stage), svd / random (compressed, no
                        module stage), baseline (uncompressed)                [VARIANT]         (modular)
  --teacher T           pretrained (capture from MODEL: the paper) | finetuned (from this seed's baseline)
                                                                              [TEACHER]         (finetuned)
  --init I              svd|data|random: start of the low-rank blocks        [INIT]            (data)
  --distill 0|1         distil the compressed fine-tune from this seed's baseline [DISTILL]     (1)
  --allocate 0|1        --init data: spread the attention head dims over the layers by their measured
                        errors, same total FLOPs (mha_modular.py --allocate)  [ALLOCATE]        (1)
  --fit_tokens N|all    --init data: fit the closed-form start (and --allocate's error curves) on a seeded
                        subset of at most N training tokens per layer; with --module_epochs 0 the capture then
                        stores only a seeded subset of about N/0.9 tokens of examples (0.1 of them held out
                        for the reported errors)                              [FIT_TOKENS]      (65536)
  --data_dir D          task files; default: the repo's data/ when it has the task (copa wsc stsb),
                        else ../shared/data when it has it, else the hub ("" = the stages' default) [DATA_DIR]
  --out_dir D           root of all outputs                                   [OUT_DIR]         (runs/modular)
  --capture_samples N   first N training examples captured (before augmentation) [CAPTURE_SAMPLES] (all)
  --augment N           N augmented copies of each captured example           [AUGMENT]         (0)
  --module_epochs E     epochs of mha/ffn module training (the paper: 200)    [MODULE_EPOCHS]   (0)
  --module_seed S       seed of capture + module training                     [MODULE_SEED]     (42)
  --mixup / --no_mixup  mixup in module training                              [MIXUP=1|0]       (0)
  --ft_epochs E         fine-tuning epochs (the paper: 18)                    [FT_EPOCHS]       (3)
  --ft_lr LR            fine-tuning learning rate (baseline and compressed)   [FT_LR]           (1e-4)
  --max_train_samples N fine-tune on the first N training rows                [MAX_TRAIN_SAMPLES] (all)
  --max_eval_samples N  evaluate on the first N validation rows               [MAX_EVAL_SAMPLES]  (all)
  --save_model          keep the fine-tuned models (RUN/model; the baseline's is always kept when it is
                        the teacher or distilled from)                        [SAVE_MODEL=1|0]  (0)
  --capture_args "..."  extra arguments for capture_data.py                   [CAPTURE_ARGS]
  --module_args "..."   extra arguments for mha_modular.py and ffn_modular.py [MODULE_ARGS]
  --ft_args "..."       extra arguments for run_superglue.py (both fine-tunes) [FT_ARGS]
  --stages LIST         comma list of baseline,capture,modules,finetune,table (modules = mha,ffn; also:
                        mha, ffn, all)                                        [STAGES]          (all)
  -h, --help            this text
Python: $PYTHON, else the repo's .venv/bin/python when it exists, else `python`.
The script runs in the repository root (under sbatch too): relative paths are taken from there.

The row label of the compressed run says how it was made: VARIANT, then -INIT (unless svd, the original
"modular"), -alloc when the head dims were allocated, -ft when the teacher was fine-tuned, +kd when
distilled (e.g. modular-data-alloc-ft+kd).
Exit status: 0, or the failing stage's (its name is printed on stderr).
EOF
}

# ------------------------------------------------------------------ where we are, which python
find_root() {
    local d
    local job_cmd=""  # under sbatch this script is a copy in the spool dir; the job record has the original
    if [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null 2>&1; then
        job_cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -1) || true
        [ -z "$job_cmd" ] || job_cmd=$(dirname "$job_cmd")
    fi
    for d in "${PIPELINE_ROOT:-}" "$(dirname "${BASH_SOURCE[0]}")" "$job_cmd" "${SLURM_SUBMIT_DIR:-}" "$PWD"; do
        if [ -n "$d" ] && [ -f "$d/run_superglue.py" ] && [ -f "$d/capture_data.py" ]; then
            (cd "$d" && pwd)
            return 0
        fi
    done
    echo "modular_pipeline.sh: error: cannot find the repository (run_superglue.py); set PIPELINE_ROOT" >&2
    return 1
}
ROOT=$(find_root)
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export PYTHONUNBUFFERED=1
if [ -n "${SLURM_CPUS_PER_TASK:-}" ] && [ -z "${OMP_NUM_THREADS:-}" ]; then export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi
if [ ! -t 1 ] && [ -z "${TQDM_MININTERVAL:-}" ]; then export TQDM_MININTERVAL=30; fi  # quieter logs

# ------------------------------------------------------------------ settings: env, then flags
TASK=${TASK:-stsb}
SEED=${SEED:-1}
MODEL=${MODEL:-minilm}
COMPRESSION=${COMPRESSION:-2}
VARIANT=${VARIANT:-modular}
INIT=${INIT:-data}
TEACHER=${TEACHER:-finetuned}
DISTILL=${DISTILL:-1}
ALLOCATE=${ALLOCATE:-1}
FIT_TOKENS=${FIT_TOKENS:-65536}
FT_LR=${FT_LR:-1e-4}
DATA_DIR_GIVEN=${DATA_DIR+1}   # DATA_DIR set, even to "": no automatic choice
DATA_DIR=${DATA_DIR:-}
OUT_DIR=${OUT_DIR:-runs/modular}
CAPTURE_SAMPLES=${CAPTURE_SAMPLES:-}
AUGMENT=${AUGMENT:-0}
MODULE_EPOCHS=${MODULE_EPOCHS:-0}
MODULE_SEED=${MODULE_SEED:-42}
MIXUP=${MIXUP:-0}
FT_EPOCHS=${FT_EPOCHS:-3}
MAX_TRAIN_SAMPLES=${MAX_TRAIN_SAMPLES:-}
MAX_EVAL_SAMPLES=${MAX_EVAL_SAMPLES:-}
SAVE_MODEL=${SAVE_MODEL:-0}
CAPTURE_ARGS=${CAPTURE_ARGS:-}
MODULE_ARGS=${MODULE_ARGS:-}
FT_ARGS=${FT_ARGS:-}
STAGES=${STAGES:-all}

die() { echo "modular_pipeline.sh: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    opt=$1
    val=
    case $opt in
        --*=*) val=${opt#*=}; opt=${opt%%=*}; set -- "$opt" "$val" "${@:2}" ;;
    esac
    case $opt in
        -h|--help) usage; exit 0 ;;
        --mixup) MIXUP=1; shift; continue ;;
        --no_mixup) MIXUP=0; shift; continue ;;
        --save_model) SAVE_MODEL=1; shift; continue ;;
        --task|--seed|--model|--compression|--variant|--init|--data_dir|--out_dir|--capture_samples|--augment|\
        --module_epochs|--module_seed|--ft_epochs|--max_train_samples|--max_eval_samples|--capture_args|\
        --module_args|--ft_args|--stages|--teacher|--distill|--ft_lr|--allocate|--fit_tokens)
            [ $# -ge 2 ] || die "$opt needs a value"
            val=$2
            case $opt in
                --task) TASK=$val ;;  --seed) SEED=$val ;;  --model) MODEL=$val ;;
                --compression) COMPRESSION=$val ;;  --variant) VARIANT=$val ;;  --init) INIT=$val ;;
                --data_dir) DATA_DIR=$val; DATA_DIR_GIVEN=1 ;;  --out_dir) OUT_DIR=$val ;;
                --capture_samples) CAPTURE_SAMPLES=$val ;;  --augment) AUGMENT=$val ;;
                --module_epochs) MODULE_EPOCHS=$val ;;  --module_seed) MODULE_SEED=$val ;;
                --ft_epochs) FT_EPOCHS=$val ;;  --max_train_samples) MAX_TRAIN_SAMPLES=$val ;;
                --max_eval_samples) MAX_EVAL_SAMPLES=$val ;;  --capture_args) CAPTURE_ARGS=$val ;;
                --module_args) MODULE_ARGS=$val ;;  --ft_args) FT_ARGS=$val ;;  --stages) STAGES=$val ;;
                --teacher) TEACHER=$val ;;  --distill) DISTILL=$val ;;  --ft_lr) FT_LR=$val ;;
                --allocate) ALLOCATE=$val ;;  --fit_tokens) FIT_TOKENS=$val ;;
            esac
            shift 2 ;;
        *) die "unknown argument '$opt' (see --help)" ;;
    esac
done

case $VARIANT in baseline|modular|svd|random) ;; *) die "--variant must be baseline, modular, svd or random, got '$VARIANT'" ;; esac
case $INIT in svd|data|random) ;; *) die "--init must be svd, data or random, got '$INIT'" ;; esac
case $TEACHER in pretrained|finetuned) ;; *) die "--teacher must be pretrained or finetuned, got '$TEACHER'" ;; esac
case $DISTILL in 0|1) ;; *) die "--distill must be 0 or 1, got '$DISTILL'" ;; esac
case $ALLOCATE in 0|1) ;; *) die "--allocate must be 0 or 1, got '$ALLOCATE'" ;; esac
[ "$INIT" = data ] || ALLOCATE=0   # the allocation comes from the closed-form start's error curves
case $FIT_TOKENS in all) ;; ''|*[!0-9]*|0) die "--fit_tokens must be a positive integer or 'all', got '$FIT_TOKENS'" ;; esac
[ "$INIT" = data ] || FIT_TOKENS=all
# with no module training the capture need only hold what the closed form is fitted on, plus the held-out tenth
CAPTURE_TOKENS=
if [ "$FIT_TOKENS" != all ] && [ "$MODULE_EPOCHS" = 0 ]; then CAPTURE_TOKENS=$(( (10#$FIT_TOKENS * 10 + 8) / 9 )); fi
case $MIXUP in 0|1) ;; *) die "MIXUP must be 0 or 1, got '$MIXUP'" ;; esac
case $SAVE_MODEL in 0|1) ;; *) die "SAVE_MODEL must be 0 or 1, got '$SAVE_MODEL'" ;; esac
[ -n "$TASK" ] || die "--task is empty"
[ -n "$OUT_DIR" ] || die "--out_dir is empty"
case $TASK in */*|.*) die "--task '$TASK' is not a task name" ;; esac

# default data: the repo's data/TASK (the stages' own default), else ../shared/data/TASK, else the hub
if [ -z "$DATA_DIR_GIVEN" ] && [ ! -d "$ROOT/data/$TASK" ] && [ -d "$ROOT/../shared/data/$TASK" ]; then
    DATA_DIR=$(cd "$ROOT/../shared/data" && pwd)
fi

# which stages
DO_BASELINE=0 DO_CAPTURE=0 DO_MHA=0 DO_FFN=0 DO_FINETUNE=0 DO_TABLE=0
for s in ${STAGES//,/ }; do
    case $s in
        all) DO_BASELINE=1 DO_CAPTURE=1 DO_MHA=1 DO_FFN=1 DO_FINETUNE=1 DO_TABLE=1 ;;
        baseline) DO_BASELINE=1 ;;
        capture) DO_CAPTURE=1 ;;
        modules) DO_MHA=1 DO_FFN=1 ;;
        mha) DO_MHA=1 ;;
        ffn) DO_FFN=1 ;;
        finetune) DO_FINETUNE=1 ;;
        table) DO_TABLE=1 ;;
        *) die "--stages: unknown stage '$s' (baseline, capture, modules, mha, ffn, finetune, table, all)" ;;
    esac
done
# the compressed run needs this seed's fine-tuned baseline model as its teacher, or to distil from
NEED_BASELINE_MODEL=0
if { [ "$VARIANT" = modular ] && [ "$TEACHER" = finetuned ]; } || { [ "$VARIANT" != baseline ] && [ "$DISTILL" = 1 ]; }; then
    NEED_BASELINE_MODEL=1
fi
# the baseline run keeps its model when this recipe's compressed runs need it (also the baseline variant's own
# run, e.g. in rs_moded.sh's sweep, where the compressed runs of the same seed come after it)
KEEP_BASELINE_MODEL=$NEED_BASELINE_MODEL
[ "$VARIANT" != baseline ] || { [ "$TEACHER" = pretrained ] && [ "$DISTILL" = 0 ]; } || KEEP_BASELINE_MODEL=1
if [ "$VARIANT" = baseline ]; then   # the uncompressed run is the baseline stage; nothing compressed
    [ $DO_FINETUNE = 0 ] || DO_BASELINE=1
    DO_CAPTURE=0 DO_MHA=0 DO_FFN=0 DO_FINETUNE=0
elif [ "$STAGES" = all ]; then
    [ $NEED_BASELINE_MODEL = 1 ] || DO_BASELINE=0
    # a fine-tune without modules needs neither capture nor module training
    if [ "$VARIANT" != modular ]; then DO_CAPTURE=0 DO_MHA=0 DO_FFN=0; fi
fi

TASK_DIR=$OUT_DIR/$TASK
BASE_DIR=$TASK_DIR/baseline/seed$SEED
if [ "$TEACHER" = finetuned ]; then
    TEACHER_MODEL=$BASE_DIR/model
    ACT_DIR=$TASK_DIR/teacher_seed$SEED/activations
    MOD_DIR=$TASK_DIR/teacher_seed$SEED/modules
else
    TEACHER_MODEL=$MODEL
    ACT_DIR=$TASK_DIR/activations
    MOD_DIR=$TASK_DIR/modules
fi
LABEL=$VARIANT
if [ "$VARIANT" = modular ]; then
    [ "$INIT" = svd ] || LABEL=$LABEL-$INIT
    [ "$ALLOCATE" = 0 ] || LABEL=$LABEL-alloc
    [ "$TEACHER" = pretrained ] || LABEL=$LABEL-ft
fi
[ "$VARIANT" = baseline ] || [ "$DISTILL" = 0 ] || LABEL=$LABEL+kd
RUN_DIR=$TASK_DIR/$LABEL/seed$SEED
CAPTURE_SETTINGS_FILE=$ACT_DIR/.pipeline_settings

# the weights of this seed's fine-tuned baseline (what a fine-tuned teacher's capture depends on)
teacher_weights() {
    if [ "$TEACHER" = finetuned ] && [ -f "$BASE_DIR/model/model.safetensors" ]; then
        sha256sum "$BASE_DIR/model/model.safetensors" | cut -c1-64
    fi
}

# the settings that determine each artifact (a marker holding other settings means: redo)
capture_settings() {
    echo "model=$TEACHER_MODEL
teacher_weights=$(teacher_weights)
task=$TASK
data_dir=$DATA_DIR
max_samples=$CAPTURE_SAMPLES
max_tokens=$CAPTURE_TOKENS
augment=$AUGMENT
seed=$MODULE_SEED
capture_args=$CAPTURE_ARGS"
}
module_settings() {
    echo "$(capture_settings)
compression=$COMPRESSION
init=$INIT
allocate=$ALLOCATE
fit_tokens=$FIT_TOKENS
epochs=$MODULE_EPOCHS
mixup=$MIXUP
module_seed=$MODULE_SEED
module_args=$MODULE_ARGS"
}

T_START=$(date +%s)
log() { echo "[$(date +%H:%M:%S)] $*"; }
skip() { echo "[$(date +%H:%M:%S)] skip: $*"; }

# run_stage NAME CMD...: run one stage; on failure name it on stderr and exit with its status
run_stage() {
    local name=$1; shift
    local t0 rc=0
    t0=$(date +%s)
    log "stage $name: $*"
    "$@" || rc=$?
    if [ $rc -ne 0 ]; then
        echo "modular_pipeline.sh: stage '$name' failed (exit $rc) [task $TASK, seed $SEED, variant $VARIANT]; later stages not run" >&2
        exit $rc
    fi
    log "stage $name done in $(( $(date +%s) - t0 ))s"
}

write_marker() {  # write_marker PATH CONTENT: atomically
    printf '%s\n' "$2" > "$1.tmp"
    mv -f "$1.tmp" "$1"
}
marker_matches() {  # marker_matches PATH CONTENT
    [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]
}
manifest_complete() {
    [ -f "$ACT_DIR/manifest.json" ] && "$PYTHON" - "$ACT_DIR/manifest.json" <<'EOF'
import json, sys
try:
    sys.exit(0 if json.load(open(sys.argv[1])).get("status") == "complete" else 1)
except ValueError:
    sys.exit(1)
EOF
}

log "modular pipeline: task $TASK, seed $SEED, variant $VARIANT, model $MODEL, compression $COMPRESSION," \
    "out $TASK_DIR, stages $STAGES, python $PYTHON"

# finetune_args DIR: the run_superglue.py arguments both fine-tunes share
finetune_args() {
    local a=(--task "$TASK" --output_dir "$1" --seed "$SEED" --epochs "$FT_EPOCHS" --lr "$FT_LR" --resume)
    [ -z "$DATA_DIR" ] || a+=(--data_dir "$DATA_DIR")
    [ -z "$MAX_TRAIN_SAMPLES" ] || a+=(--max_train_samples "$MAX_TRAIN_SAMPLES")
    [ -z "$MAX_EVAL_SAMPLES" ] || a+=(--max_eval_samples "$MAX_EVAL_SAMPLES")
    printf '%s\0' "${a[@]}"
}

# ------------------------------------------------------------------ baseline (uncompressed, model kept)
if [ $DO_BASELINE = 1 ]; then
    mapfile -d '' args < <(finetune_args "$BASE_DIR")
    if [ $KEEP_BASELINE_MODEL = 0 ]; then
        [ "$SAVE_MODEL" = 1 ] || args+=(--no_save_model)
    elif [ -f "$BASE_DIR/results.json" ] && [ ! -f "$BASE_DIR/model/config.json" ]; then
        # run_superglue.py --resume would reuse it (keeping the model is no setting of the run), still without one
        log "baseline: $BASE_DIR finished without keeping its model, which this recipe needs: rerunning it"
        rm -f "$BASE_DIR/results.json"
    fi
    read -r -a extra <<< "$FT_ARGS"
    run_stage baseline "$PYTHON" run_superglue.py --model_name_or_path "$MODEL" --variant baseline "${args[@]}" \
        ${extra[@]+"${extra[@]}"}
fi
if [ $NEED_BASELINE_MODEL = 1 ] && [ ! -f "$BASE_DIR/model/config.json" ] && \
   { [ $DO_CAPTURE = 1 ] || [ $DO_FINETUNE = 1 ]; }; then
    echo "modular_pipeline.sh: no fine-tuned baseline model in $BASE_DIR/model (run the baseline stage first;" \
         "needed by --teacher finetuned and --distill 1)" >&2
    exit 1
fi
CAPTURE_SETTINGS=$(capture_settings)
MODULE_SETTINGS=$(module_settings)

# ------------------------------------------------------------------ capture
if [ $DO_CAPTURE = 1 ]; then
    if manifest_complete && marker_matches "$CAPTURE_SETTINGS_FILE" "$CAPTURE_SETTINGS"; then
        skip "capture ($ACT_DIR/manifest.json is complete)"
    else
        args=(--model_name_or_path "$TEACHER_MODEL" --task "$TASK" --output_dir "$ACT_DIR" --augment "$AUGMENT" --seed "$MODULE_SEED")
        [ -z "$DATA_DIR" ] || args+=(--data_dir "$DATA_DIR")
        [ -z "$CAPTURE_SAMPLES" ] || args+=(--max_samples "$CAPTURE_SAMPLES")
        [ -z "$CAPTURE_TOKENS" ] || args+=(--max_tokens "$CAPTURE_TOKENS")
        if [ -f "$CAPTURE_SETTINGS_FILE" ] && ! marker_matches "$CAPTURE_SETTINGS_FILE" "$CAPTURE_SETTINGS"; then
            log "capture settings changed: recapturing (and retraining the modules)"
            args+=(--overwrite)
        fi
        read -r -a extra <<< "$CAPTURE_ARGS"
        mkdir -p "$ACT_DIR"
        write_marker "$CAPTURE_SETTINGS_FILE" "$CAPTURE_SETTINGS"  # what the dir holds (or is being filled with)
        run_stage capture "$PYTHON" capture_data.py "${args[@]}" ${extra[@]+"${extra[@]}"}
    fi
fi

# ------------------------------------------------------------------ modules (mha, ffn)
train_modules() {  # train_modules mha|ffn
    local kind=$1 marker=$MOD_DIR/.$1.done
    if marker_matches "$marker" "$MODULE_SETTINGS"; then
        skip "$kind ($marker)"
        return 0
    fi
    if ! manifest_complete || ! marker_matches "$CAPTURE_SETTINGS_FILE" "$CAPTURE_SETTINGS"; then
        echo "modular_pipeline.sh: stage '$kind' failed: no complete capture with these settings in $ACT_DIR" \
             "(run the capture stage first)" >&2
        exit 1
    fi
    [ ! -f "$marker" ] || log "$kind: settings changed, retraining"
    rm -f "$marker"
    mkdir -p "$MOD_DIR"
    local args=(--activations_dir "$ACT_DIR" --output_dir "$MOD_DIR" --compression "$COMPRESSION"
                --init "$INIT" --epochs "$MODULE_EPOCHS" --seed "$MODULE_SEED")
    [ "$MIXUP" = 0 ] || args+=(--mixup)
    [ "$kind" != mha ] || [ "$ALLOCATE" = 0 ] || args+=(--allocate)
    [ "$FIT_TOKENS" = all ] || args+=(--fit_tokens "$FIT_TOKENS")
    local extra
    read -r -a extra <<< "$MODULE_ARGS"
    run_stage "$kind" "$PYTHON" "${kind}_modular.py" "${args[@]}" ${extra[@]+"${extra[@]}"}
    write_marker "$marker" "$MODULE_SETTINGS"
}
[ $DO_MHA = 0 ] || train_modules mha
[ $DO_FFN = 0 ] || train_modules ffn

# ------------------------------------------------------------------ fine-tune (compressed)
if [ $DO_FINETUNE = 1 ] && [ "$VARIANT" != baseline ]; then
    mapfile -d '' args < <(finetune_args "$RUN_DIR")
    args+=(--variant "$LABEL" --compression "$COMPRESSION")
    [ "$SAVE_MODEL" = 1 ] || args+=(--no_save_model)
    model=$MODEL
    case $VARIANT in
        modular)
            for kind in mha ffn; do
                if ! marker_matches "$MOD_DIR/.$kind.done" "$MODULE_SETTINGS"; then
                    echo "modular_pipeline.sh: stage 'finetune' failed: no $kind modules with these" \
                         "settings in $MOD_DIR (run the capture and modules stages first)" >&2
                    exit 1
                fi
            done
            [ "$TEACHER" = pretrained ] || model=$TEACHER_MODEL   # keeps the baseline's fine-tuned head
            args+=(--init "$INIT" --modules_dir "$MOD_DIR") ;;
        svd|random) args+=(--init "$VARIANT") ;;
    esac
    [ "$DISTILL" = 0 ] || args+=(--distill_from "$BASE_DIR/model")
    read -r -a extra <<< "$FT_ARGS"
    run_stage finetune "$PYTHON" run_superglue.py --model_name_or_path "$model" "${args[@]}" ${extra[@]+"${extra[@]}"}
fi

# ------------------------------------------------------------------ table
if [ $DO_TABLE = 1 ]; then
    run_stage table "$PYTHON" consolidate.py --results_dir "$TASK_DIR"
fi
log "pipeline finished in $(( $(date +%s) - T_START ))s"
