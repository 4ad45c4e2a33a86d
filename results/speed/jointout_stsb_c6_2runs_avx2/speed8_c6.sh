#!/bin/bash
# Session 8, after the c=6 run: the STS-B seed-1 c=4 and c=6 checkpoints (output currency) beside uniform c=6,
# fp32 c=1 and the peer (also in its own process), bs 1 x 128 and STS-B lengths; two runs, quiet machine.
set -euo pipefail
cd /work/main
PY=.venv/bin/python
M=/work/runs18/stsb
for i in 1 2; do
  $PY run_speed.py --model_name_or_path minilm --compression 6 \
      --models $M/jointout_c4/seed1/model $M/jointout_c6/seed1/model \
      --no_int8 --onnx_dir /work/runs18/speed8/onnx_c6 --peer_process --batch_sizes 1 --seq_lens 128 \
      --real_lengths stsb --real_examples 40 --repeats 10 --warmup 2 --threads 2 \
      --data_dir /work/shared/data --json /work/runs18/speed8/c6_run$i.json > /work/runs18/speed8/c6_run$i.log 2>&1
done
$PY scripts/speed_spread.py /work/runs18/speed8/c6_run{1,2}.json --json /work/runs18/speed8/c6_spread.json \
    --table /work/runs18/speed8/c6_spread.md
