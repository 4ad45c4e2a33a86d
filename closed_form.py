"""The closed-form start (init "data") of every block of every layer in one pass, written as module checkpoints
(the trainers' format) for run_superglue.py --modules_dir.

    python closed_form.py --activations_dir runs/stsb/activations --output_dir runs/stsb/modules --sequential

--sequential fits layer l on the inputs that the already-compressed layers 0..l-1 produce, towards targets
corrected for the error they carry in (data_init.compress_with_data), so the errors do not stack up through
the layers; without it every block is fitted on the teacher's own inputs (isolated: what
mha_modular.py / ffn_modular.py --init data --epochs 0 write, layer by layer in parallel jobs). Both fit on
the training sequences only; report.json gives, per layer, the held-out relative error of the compressed
stack's output against the teacher's (||s - t||^2 / ||t||^2 over real tokens).

--allocation OUTPUT_DIR/allocation.json (what mha_modular.py / ffn_modular.py --allocate wrote for this capture)
fits the blocks at its per-layer sizes instead of the uniform ones: the sequential fit of an allocated budget.
"""
from modcomp.closed_form import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
