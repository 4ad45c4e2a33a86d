#!/bin/bash
# Session 11, issue 18 item 2: the two levers not yet measured at c=4, first on MRPC seed 1 (the c=4 run below 0.99:
# 82.10, 0.985), then the train lever on more runs. Both start from the plain run's allocation (its
# mod_jointout_cC/allocation.json) and end in the same distilled fine-tune as job8.sh (3 epochs, lr 1e-4, from the
# seed's baseline).
#   train: 4 epochs of module training from the closed-form start (mha/ffn_modular.py --epochs 4), with the code
#          that made the allocation (below: it reads the copied allocation.json instead of re-measuring)
#   seq:   the sequential closed form at the allocated sizes (closed_form.py --sequential --allocation), code $NEW (session 11: /work/meas11 = 0476e3e)
# Usage: levers11.sh train|seq [TASK SEED C] (default mrpc 1 4). The train lever runs with the code that made the
# allocation (its version: joint/1 = 2542ac0 /work/meas5, joint/2 = 64e5c8b /work/meas9), so that it reads it.
set -euo pipefail
lever=$1 task=${2:-mrpc} seed=${3:-1} c=${4:-4}
R=/work/runs18/$task
BASE=$R/baseline/seed$seed CAP=$R/teacher_seed$seed/cap ALLOC=$R/teacher_seed$seed/mod_jointout_c$c/allocation.json
MOD=$R/teacher_seed$seed/mod_jointout_c${c}_$lever OUT=$R/jointout_c${c}_$lever/seed$seed
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1 TQDM_MININTERVAL=120 PYTHONUNBUFFERED=1
version=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['settings']['version'])" $ALLOC)
case $lever in train) case $version in joint/1) CODE=/work/meas5;; joint/2) CODE=/work/meas9;; *) exit 2;; esac;; seq) CODE=${NEW:?set NEW to the code snapshot};; *) echo "bad lever"; exit 2;; esac
cd $CODE
dd=(); [ -d data/$task ] || dd=(--data_dir /work/shared/data)   # as job8.sh: the shipped data/stsb, else the shared files
if [ -f $OUT/results.json ]; then echo "done $OUT"; exit 0; fi
mkdir -p $MOD
t0=$(date +%s)
if [ $lever = train ]; then
  cp -n $ALLOC $MOD/allocation.json
  for kind in mha ffn; do
    $PY ${kind}_modular.py --activations_dir $CAP --output_dir $MOD --compression $c --init data --epochs 4 --seed 42 \
        --allocate --currency output --fit_tokens 65536 --threads 1
  done
else
  $PY closed_form.py --activations_dir $CAP --output_dir $MOD --compression $c --sequential --allocation $ALLOC \
      --fit_tokens 65536 --seed 42 --threads 1
fi
t1=$(date +%s)
$PY run_superglue.py --model_name_or_path $BASE/model --task $task --output_dir $OUT --seed $seed --epochs 3 --lr 1e-4 \
    --resume --variant modular-data-jointout-ft+kd+$lever --compression $c --init data --modules_dir $MOD \
    --distill_from $BASE/model --no_save_model --threads 1 "${dd[@]}"
t2=$(date +%s)
echo "{\"task\": \"$task\", \"seed\": $seed, \"c\": $c, \"currency\": \"output\", \"lever\": \"$lever\", \"modules_s\": $((t1-t0)), \"finetune_s\": $((t2-t1)), \"code\": \"$CODE\"}" >> /work/runs18/times8.jsonl
