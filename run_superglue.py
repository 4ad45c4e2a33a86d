"""Fine-tune and evaluate one task for one seed; writes OUTPUT_DIR/results.json (and the model, HF format).

The logic: modcomp/runner.py; the flags: `python run_superglue.py --help`."""
from modcomp.runner import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
