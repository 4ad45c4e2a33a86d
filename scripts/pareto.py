"""Compression sweep: validation score against measured CPU speedup, as a PNG and a markdown table.

The logic: modcomp/pareto.py; the flags: `python scripts/pareto.py --help`."""
from modcomp.pareto import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
