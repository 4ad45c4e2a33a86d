#!/bin/bash
# A/B of the module stage: old code ($1 = code dir) into $2 (modules dir), MRPC seed 1 capture, c=$3.
cd $1
export OMP_NUM_THREADS=1 TQDM_MININTERVAL=600 PYTHONUNBUFFERED=1
t0=$(date +%s.%N)
for k in mha ffn; do
  /work/main/.venv/bin/python ${k}_modular.py --activations_dir /work/runs18/mrpc/teacher_seed1/cap --output_dir $2 \
    --compression $3 --init data --epochs 0 --seed 42 --allocate --currency output --fit_tokens 65536 --threads 1
done
t1=$(date +%s.%N)
echo "{\"code\": \"$1\", \"c\": $3, \"modules_s\": $(echo "$t1 - $t0" | bc), \"load\": \"$(cat /proc/loadavg)\"}" >> /work/scratch/ab10/times.jsonl
