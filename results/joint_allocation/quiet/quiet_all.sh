#!/bin/bash
# Quiet-machine measurements: the caller pauses every other job of ours (kill -STOP) first.
set -u
cd /work/meas2
PY=/work/main/.venv/bin/python
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=600
OUT=/work/runs18/quiet; mkdir -p $OUT
# 1. module stage at the default recipe (c=2, joint allocation, 65,536 fit tokens), STS-B seed 1's teacher, 2 threads
rm -rf $OUT/cap $OUT/mod
t0=$(date +%s.%N)
$PY capture_data.py --model_name_or_path /work/runs18/stsb/baseline/seed1/model --task stsb --output_dir $OUT/cap \
    --augment 0 --seed 42 --max_tokens 72818 > $OUT/modules.log 2>&1
t1=$(date +%s.%N)
$PY mha_modular.py --activations_dir $OUT/cap --output_dir $OUT/mod --compression 2 --init data --epochs 0 --seed 42 \
    --allocate --fit_tokens 65536 --threads 2 >> $OUT/modules.log 2>&1
t2=$(date +%s.%N)
$PY ffn_modular.py --activations_dir $OUT/cap --output_dir $OUT/mod --compression 2 --init data --epochs 0 --seed 42 \
    --allocate --fit_tokens 65536 --threads 2 >> $OUT/modules.log 2>&1
t3=$(date +%s.%N)
python3 -c "print({'capture_s': round($t1-$t0,1), 'mha_s_with_allocation': round($t2-$t1,1), 'ffn_s': round($t3-$t2,1), 'total_s': round($t3-$t0,1)})" | tee $OUT/modules_time.txt
# 2. the shipped (allocated) checkpoints: fp32 and ONNX Runtime fp32/INT8, with uniform c=2,3,4 and the peer,
#    bs1 x 128 and real STS-B / MRPC lengths
cd /work/main
$PY run_speed.py --model_name_or_path minilm --compression 2 3 4 --models "$@" --no_int8 --onnx_dir $OUT/onnx \
    --batch_sizes 1 --seq_lens 128 --real_lengths stsb mrpc --data_dir /work/shared/data --real_examples 40 \
    --repeats 10 --warmup 2 --threads 2 --json $OUT/speed_minilm_allocated.json > $OUT/speed.log 2>&1
tail -45 $OUT/speed.log
# 3. issue 19's ORT INT8 fast path, DistilBERT shape (H2's command, bs 1 only)
$PY run_speed.py --threads 2 --batch_sizes 1 --repeats 25 --warmup 3 --int8_backends dynamic_per_channel \
    --onnx_dir $OUT/onnx_db --torchscript --ort_int8_schemes per_channel per_tensor reduce_range --ort_no_spin \
    --json $OUT/ort_int8_distilbert_shape.json > $OUT/speed_db.log 2>&1
tail -25 $OUT/speed_db.log
