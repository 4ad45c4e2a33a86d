#!/bin/bash
# Session 8 speed runs (issue 18 item 4): the output-currency STS-B seed-1 checkpoints (c=2, 3, 4) at their own
# sizes beside uniform c=3/4, fp32 c=1 and the peer (interleaved), plus the peer in a process of its own with
# ONNX Runtime's default threading (--peer_process); bs 1 x 128 and real STS-B / MRPC lengths; three runs
# (separate processes), summarised by scripts/speed_spread.py. Run with every other job paused (quiet machine).
set -euo pipefail
cd /work/main
PY=.venv/bin/python
M=/work/runs18/stsb
for i in 1 2 3; do
  $PY run_speed.py --model_name_or_path minilm --compression 4 \
      --models $M/jointout_c2/seed1/model $M/jointout_c3/seed1/model $M/jointout_c4/seed1/model \
      --no_int8 --onnx_dir /work/runs18/speed8/onnx --peer_process --batch_sizes 1 --seq_lens 128 \
      --real_lengths stsb mrpc --real_examples 40 --repeats 10 --warmup 2 --threads 2 \
      --data_dir /work/shared/data --json /work/runs18/speed8/run$i.json > /work/runs18/speed8/run$i.log 2>&1
done
$PY scripts/speed_spread.py /work/runs18/speed8/run{1,2,3}.json --json /work/runs18/speed8/spread.json \
    --table /work/runs18/speed8/spread.md
