"""Compression sweep: validation score against measured CPU speedup, as a PNG and a markdown table.

    python scripts/pareto.py --results runs/base runs/sweep --tasks stsb cb \
        --speed results/sweep/speed_minilm_sweep.json --batch_size 1 --seq_len 128 \
        --png results/sweep/pareto.png --table results/sweep/pareto.md

--results: directories holding results.json files (run_superglue.py outputs, any depth), read with
consolidate.load_results. Every (task, variant, compression) point is the median over the seeds it has
(the table says how many). --speed: run_speed.py --json output with every compression of the sweep;
the x of a point is the speedup over fp32 c=1 of its compression at --batch_size x --seq_len (c=1 is 1.0), in
each of --precisions (run_speed's row prefixes: fp32, int8,x8, ort-int8, ts int8 ...; one curve each). A
variant named in --checkpoint_variants (e.g. the allocated ones) takes the speed of run_speed --models' row of
its own checkpoint ('fp32 c=3 ckpt'), the others that of the uniform model of their c. --peer adds the peer row
(ONNX Runtime INT8 of the uncompressed model) at the baseline's fp32 score.

    python scripts/pareto.py --results results/joint_allocation results/sweep/stsb --tasks stsb \
        --speed results/joint_allocation/speed.json --precisions fp32 ort-int8 --checkpoint_variants \
        modular-data-joint-ft+kd --peer --png results/joint_allocation/pareto.png
"""
from modcomp.pareto import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
