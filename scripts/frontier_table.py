"""The table and plot of a re-timed frontier (`run_speed.py --frontier F --json OUT`): retention against latency,
each point in its own runtime, multiply-add and latency budgets side by side (modcomp/frontier.py).

    python scripts/frontier_table.py OUT.json --md TABLE.md --png PLOT.png
"""
import argparse
import json

from modcomp import frontier
from modcomp.utils import atomic_write_bytes, run_main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("timed", help="run_speed.py --frontier --json output")
    p.add_argument("--md", required=True)
    p.add_argument("--png", default=None)
    a = p.parse_args(argv)
    with open(a.timed) as f:
        text = frontier.table_and_plot(json.load(f), a.png)
    atomic_write_bytes(a.md, text.encode())
    print(text)


if __name__ == "__main__":
    run_main(main)
