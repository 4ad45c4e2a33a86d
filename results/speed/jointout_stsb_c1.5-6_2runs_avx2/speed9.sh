#!/bin/bash
# Session 9 speed runs (issue 18 item 3's Pareto plot): the original recipe's uniform sizes (c = 1.5, 2, 3, 4, 6;
# random weights, timing only: a uniform checkpoint runs as fast as any model of its shape) in the same runs as the
# shipped output-currency STS-B seed-1 checkpoints (c = 2, 3, 4, 6), fp32 c=1 and the peer (also in a process of its
# own); bs 1 x 128 and STS-B lengths; two runs (separate processes), quiet machine (every other job of ours paused
# with kill -STOP by the caller, pause.log), summarised by scripts/speed_spread.py.
set -euo pipefail
cd /work/main
PY=.venv/bin/python
M=/work/runs18/stsb
O=/work/runs18/speed9
for i in 1 2; do
  $PY run_speed.py --model_name_or_path minilm --compression 1.5 2 3 4 6 \
      --models $M/jointout_c2/seed1/model $M/jointout_c3/seed1/model $M/jointout_c4/seed1/model $M/jointout_c6/seed1/model \
      --no_int8 --onnx_dir $O/onnx --peer_process --batch_sizes 1 --seq_lens 128 \
      --real_lengths stsb --real_examples 40 --repeats 10 --warmup 2 --threads 2 \
      --data_dir /work/shared/data --json $O/run$i.json > $O/run$i.log 2>&1
done
$PY scripts/speed_spread.py $O/run{1,2}.json --json $O/spread.json --table $O/spread.md
