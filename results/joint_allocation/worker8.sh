#!/bin/bash
# Worker over /work/runs18/queue8.txt. Lines: "base TASK SEED" (a baseline teacher, baselines.sh) or
# "job TASK SEED C CURRENCY" (job8.sh). Runs the first unclaimed line whose baseline exists (a job) or any
# unclaimed baseline (mkdir claim); waits when none is ready; exits when every line is claimed.
cd /work/runs18
mkdir -p claims8 logs8
while true; do
  left=0 started=0
  while read -r kind task seed c cur; do
    [ -n "$kind" ] || continue
    name=$kind-$task-$seed${c:+-$c}${cur:+-$cur}
    [ -d claims8/$name ] && continue
    left=1
    [ $kind = base ] || [ -f $task/baseline/seed$seed/model/config.json ] || continue
    mkdir claims8/$name 2>/dev/null || continue
    echo "[$(date +%H:%M:%S)] start $name"
    if [ $kind = base ]; then cmd=(./baselines.sh $task:$seed); else cmd=(./job8.sh $task $seed $c $cur); fi
    "${cmd[@]}" > logs8/$name.log 2>&1 && echo "[$(date +%H:%M:%S)] done $name" \
      || echo "[$(date +%H:%M:%S)] FAILED $name (logs8/$name.log)"
    started=1; break
  done < queue8.txt
  [ $left = 1 ] || exit 0
  [ $started = 1 ] || sleep 60
done
