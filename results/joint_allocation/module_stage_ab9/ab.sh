#!/bin/bash
# A/B of the module stage: old code (ca72c35, /work/meas6old) vs new (working tree /work/main), STS-B seed 1 capture, c=$1
# Session 9, 23:26-23:44 with two MRPC baselines on the 2 cores (3 processes): both variants under the same load.
# "new" was the working tree of commit f08e0b3 (value statistics as the d x d context moment; before the plot skip).
c=${1:-3}
PY=/work/main/.venv/bin/python
CAP=/work/runs18/stsb/teacher_seed1/cap
export OMP_NUM_THREADS=1 TQDM_MININTERVAL=120 PYTHONUNBUFFERED=1
for v in old new; do
  if [ $v = old ]; then cd /work/meas6old; else cd /work/main; fi
  MOD=/work/scratch/ab9/mod_${v}_c$c; rm -rf $MOD
  t0=$(date +%s.%N)
  for kind in mha ffn; do
    $PY ${kind}_modular.py --activations_dir $CAP --output_dir $MOD --compression $c --init data --epochs 0 --seed 42 \
      --allocate --currency output --fit_tokens 65536 --threads 1 > /work/scratch/ab9/${v}_c${c}_$kind.log 2>&1
  done
  t1=$(date +%s.%N)
  echo "{\"v\": \"$v\", \"c\": $c, \"modules_s\": $(echo "$t1 - $t0" | bc), \"load\": \"$(cat /proc/loadavg)\"}" >> /work/scratch/ab9/times.jsonl
done
