"""Consolidate run_superglue.py results into the paper's table: median over seeds per cell.

Reads every results.json under --results_dir (one task, one seed each), groups them into rows
(model, variant, compression), and prints two tables: the best epoch on validation (the paper's
selection) and the last epoch. Missing (task, seed) cells are listed below the tables.
"""
from modcomp.report import main
from modcomp.utils import run_main

if __name__ == "__main__":
    run_main(main)
