#!/bin/bash
# Session 11: curve tokens 16384 vs 8192, seed-1 captures of STS-B, MRPC, CB at c=2 and c=3; two at a time (one per core).
cd /work/scratch/curve11
for task in stsb mrpc cb; do for c in 2 3; do for tok in 16384 8192; do echo "$task $c $tok"; done; done; done |
  xargs -P2 -L1 bash -c 'OMP_NUM_THREADS=1 /work/main/.venv/bin/python ab.py $0 $1 $2 2>>ab.err >> ab.jsonl'
echo done > DONE
