#!/bin/bash
# Session 10: the no-argument pipeline on a quiet machine (every job of ours paused with kill -STOP), fresh clone.
cd /work/fresh10
pids=$(pgrep -f "run_superglue.py|_modular.py|capture_data.py|worker8.sh|job8.sh|baselines.sh" | tr '\n' ' ')
kill -STOP $pids 2>/dev/null; echo "paused $pids at $(date +%H:%M:%S)" >> /work/scratch/default10/pause.log
t0=$(date +%s)
PYTHON=/work/main/.venv/bin/python bash modular_pipeline.sh > /work/scratch/default10/pipeline.log 2>&1; rc=$?
t1=$(date +%s)
kill -CONT $pids 2>/dev/null; echo "resumed at $(date +%H:%M:%S) (pipeline rc=$rc, $((t1-t0)) s)" >> /work/scratch/default10/pause.log
