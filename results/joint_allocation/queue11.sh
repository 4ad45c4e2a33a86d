#!/bin/bash
# Session 11: the module-training lever on more runs, two at a time (one per core).
cd /work/runs18
printf '%s\n' "train mrpc 2 4" "train mrpc 3 4" "train stsb 1 4" "train mrpc 1 6" |
  xargs -P2 -L1 bash -c './levers11.sh $0 $1 $2 $3 > logs8/lever11-$0-$1-$2-$3.log 2>&1; echo "[$(date +%H:%M:%S)] $0 $1 $2 $3 rc=$?"'
