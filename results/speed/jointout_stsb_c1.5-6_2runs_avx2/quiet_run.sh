#!/bin/bash
# Pause every python process of the issue-18 jobs (kill -STOP), run speed9.sh, resume them (kill -CONT), log times.
cd /work/runs18/speed9
pids=$(pgrep -f "run_superglue.py|_modular.py|capture_data.py" | tr '\n' ' ')
kill -STOP $pids 2>/dev/null; echo "paused $pids at $(date +%H:%M:%S)" >> pause.log
./speed9.sh > speed9.out 2>&1; rc=$?
kill -CONT $pids 2>/dev/null; echo "resumed at $(date +%H:%M:%S) (speed9.sh rc=$rc)" >> pause.log
