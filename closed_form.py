"""The closed-form start (init "data") of every block of every layer in one pass, written as module checkpoints
(the trainers' format) for run_superglue.py --modules_dir.

The logic: modcomp/closed_form.py; the flags: `python closed_form.py --help`."""
from modcomp.closed_form import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
