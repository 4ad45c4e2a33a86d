#!/bin/bash
# One issue-18 job (session 8): TASK SEED C CURRENCY. Default recipe with the joint allocation (--allocate on both
# stages, --currency CURRENCY) at compression C, from this seed's fine-tuned baseline (teacher + distillation),
# 3 epochs, lr 1e-4. Code: the snapshot in $CODE: /work/meas5 (commit 2542ac0) for session 8's jobs; from session 9
# (its first jobs, started 2026-11-29 23:54, on) /work/meas9 (commit 64e5c8b: cheaper value statistics, same allocation and closed form);
# from session 10 (2026-11-30 03:40, the COPA/WSC/RTE c=3 jobs) /work/meas10 (commit 1566b36: full-size blocks copied from the teacher,
# FFN hidden activations reused: allocation and other blocks bit-identical, A/B on MRPC seed 1 c=3);
# provenance in each results.json, the code dir in times8.jsonl.
# Output dirs: joint{out,ln,}_cC by currency (output, layernorm, residual), as the session-6/7 scripts named them.
set -euo pipefail
task=$1 seed=$2 c=$3 cur=${4%%:*} lever=${4#*:}
# CURRENCY:LEVER (session 9, issue 18 item 2): fine-tune only, from the modules the plain job made (its MOD dir,
# kept as it is: no capture, no module stage), with one lever changed: beta = hidden-state distillation
# (--distill_beta 1), ep6 = a longer distilled fine-tune (6 epochs). Output dir ${tag}_cC_LEVER.
[ "$lever" != "$4" ] || lever=""
EXTRA=(); EPOCHS=3
case $lever in "") ;; beta) EXTRA=(--distill_beta 1);; ep6) EPOCHS=6;; *) echo "bad lever $lever"; exit 2;; esac
case $cur in output) tag=jointout;; layernorm) tag=jointln;; residual) tag=joint;; *) echo "bad currency $cur"; exit 2;; esac
[ -z "$lever" ] || CODE=${CODE:-/work/meas5}   # a lever run: the code its modules were made with
CODE=${CODE:-/work/meas10}
cd $CODE
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1 TQDM_MININTERVAL=120 PYTHONUNBUFFERED=1
R=/work/runs18/$task
dd=(); [ -d data/$task ] || dd=(--data_dir /work/shared/data)
BASE=$R/baseline/seed$seed
CAP=$R/teacher_seed$seed/cap
MOD=$R/teacher_seed$seed/mod_${tag}_c$c
OUT=$R/${tag}_c$c${lever:+_$lever}/seed$seed
[ -f $BASE/model/config.json ] || { echo "no baseline $BASE"; exit 1; }
if [ -f $OUT/results.json ]; then echo "done $OUT"; exit 0; fi
SAVE=--no_save_model; [ "$seed" != 1 ] || SAVE=""   # seed 1 keeps its model (speed, INT8 accuracy)
t0=$(date +%s)
if [ -n "$lever" ]; then
  [ -f $MOD/allocation.json ] || { echo "no modules $MOD for the lever run"; exit 1; }
  t1=$t0
else
( flock 9
  if ! grep -q '"status": "complete"' $CAP/manifest.json 2>/dev/null; then
    $PY capture_data.py --model_name_or_path $BASE/model --task $task --output_dir $CAP --augment 0 --seed 42 \
        --max_tokens 72818 "${dd[@]}"
  fi ) 9>$R/teacher_seed$seed.lock
t1=$(date +%s)
for kind in mha ffn; do
  $PY ${kind}_modular.py --activations_dir $CAP --output_dir $MOD --compression $c --init data --epochs 0 --seed 42 \
      --allocate --currency $cur --fit_tokens 65536 --threads 1
done
fi
t2=$(date +%s)
$PY run_superglue.py --model_name_or_path $BASE/model --task $task --output_dir $OUT --seed $seed --epochs $EPOCHS --lr 1e-4 \
    --resume --variant modular-data-$tag-ft+kd${lever:++$lever} --compression $c --init data --modules_dir $MOD \
    --distill_from $BASE/model $SAVE --threads 1 "${dd[@]}" "${EXTRA[@]}"
t3=$(date +%s)
echo "{\"task\": \"$task\", \"seed\": $seed, \"c\": $c, \"currency\": \"$cur\", \"lever\": \"$lever\", \"capture_s\": $((t1-t0)), \"modules_s\": $((t2-t1)), \"finetune_s\": $((t3-t2)), \"code\": \"$CODE\"}" >> /work/runs18/times8.jsonl
