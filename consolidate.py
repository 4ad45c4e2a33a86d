"""Consolidate run_superglue.py results into the paper's table: median over seeds per cell.

The logic: modcomp/report.py; the flags: `python consolidate.py --help`."""
from modcomp.report import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
