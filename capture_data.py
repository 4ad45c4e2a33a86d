"""Capture what a frozen teacher's layers see on task data, for modular training (activations.py).

Stores every layer's input (the MHA block input) for real tokens only; the trainers recompute the
block outputs from the teacher. Sequences are processed in dataset order (no sorting or shuffling),
so an interrupted capture resumes with the same command.

    python capture_data.py --task rte --data_dir ../shared/data --output_dir runs/cap_rte
"""
from modcomp.capture import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
