"""Export a fine-tuned checkpoint (RUN/model of run_superglue.py, compressed or not) as a deployable ONNX directory.

The logic: modcomp/export.py; the flags: `python export.py --help`."""
from modcomp.export import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
