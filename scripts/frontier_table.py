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
    p.add_argument("--frontier", default=None, help="take each point's seeds and retention from this frontier.json "
                   "(made again with more seeds since the timing: the shapes, of the first seed, are the same)")
    a = p.parse_args(argv)
    with open(a.timed) as f:
        timed = json.load(f)
    if a.frontier:
        fresh = {(q["task"], q["budget"]): q for q in frontier.read(a.frontier)["points"]}
        for q in timed["points"]:
            new = fresh.get((q["task"], q["budget"]))
            if new is None:
                raise frontier.UserError(f"--frontier {a.frontier}: no point {q['task']} {q['budget']}")
            if q.get("shape_seed") is not None and new["allocation"].get("seed") != q["shape_seed"]:
                raise frontier.UserError(f"{q['task']} {q['budget']}: timed with seed {q['shape_seed']}'s shapes, "
                                         f"the frontier's are seed {new['allocation'].get('seed')}'s")
            q.update(seeds=new["seeds"], retention=new["retention"])
    text = frontier.table_and_plot(timed, a.png)
    atomic_write_bytes(a.md, text.encode())
    print(text)


if __name__ == "__main__":
    run_main(main)
