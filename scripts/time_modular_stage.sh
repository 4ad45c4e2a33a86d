#!/bin/bash
# CPU seconds (one thread) of the modular stage vs one fine-tune, STS-B, first N training examples, as measured
# in results/closed_form/timing_stsb_n1000.txt: uniform sizes (--allocate 0), every captured token (no subset)
set -euo pipefail
N=${N:-1000}; O=runs/timing_n$N; PY=.venv/bin/python; export OMP_NUM_THREADS=1
rm -rf $O; mkdir -p $O
T() { local name=$1; shift; /usr/bin/time -f "$name wall %e user %U sys %S" -a -o $O/times.txt "$@" > $O/$name.log 2>&1; }
T baseline $PY run_superglue.py --task stsb --data_dir ../shared/data --seed 1 --epochs 3 --lr 1e-4 --threads 1 --max_train_samples $N --output_dir $O/baseline
T capture $PY capture_data.py --model_name_or_path $O/baseline/model --task stsb --data_dir ../shared/data --output_dir $O/act --seed 1 --max_samples $N --max_tokens all
T mha $PY mha_modular.py --activations_dir $O/act --output_dir $O/mod --init data --epochs 0 --seed 1 --threads 1 --allocate 0 --fit_tokens all
T ffn $PY ffn_modular.py --activations_dir $O/act --output_dir $O/mod --init data --epochs 0 --seed 1 --threads 1 --allocate 0 --fit_tokens all
T compressed $PY run_superglue.py --model_name_or_path $O/baseline/model --task stsb --data_dir ../shared/data --seed 1 --epochs 3 --lr 1e-4 --threads 1 --max_train_samples $N --output_dir $O/comp --compression 2 --init data --modules_dir $O/mod --distill_from $O/baseline/model --no_save_model
cat $O/times.txt
