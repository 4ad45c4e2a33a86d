"""Capture what a frozen teacher's layers see on task data, for modular training (activations.py).

The logic: modcomp/capture.py; the flags: `python capture_data.py --help`."""
from modcomp.capture import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
