"""The spread of a speed benchmark over repeated runs: several run_speed.py --json files (each a separate process,
e.g. one per loop pass) summarised per row as the median over the runs and the lowest-highest run.

    for i in 1 2 3; do python run_speed.py ... --json runs/speed/run$i.json; done
    python scripts/speed_spread.py runs/speed/run*.json --json results/speed/spread.json --table results/speed/spread.md

Per row (variant, batch size, sequence length): its median ms, speedup over fp32 c=1 and 'vs peer' in every run
(each run's ratios are against that run's own reference rows), then their median and range over the runs.
"""
import argparse
import json
import os
import statistics
import sys

from tabulate import tabulate

from modcomp.utils import UserError, atomic_write_json, run_main, written_atomically  # noqa: E402

FIELDS = ("median_ms", "speedup", "vs_peer")
ONE_RUN = ("p10_ms", "p90_ms", "fraction_of_bound", "peer")  # one run's figures: not carried into the summary


def spread(runs):
    """The rows every run has, in the first run's order: each keeps the first run's other fields (variant,
    compression, checkpoint, flop_bound, ...) with median_ms, speedup and vs_peer replaced by their median over
    the runs (so that scripts/pareto.py reads the file like a run_speed.py JSON), `spread`: {field: {min, max,
    values}}, and `peer_by_run`: which peer row each run's vs_peer was against."""
    keyed = [{(r["variant"], r["batch_size"], str(r["seq_len"])): r for r in run["rows"]} for run in runs]
    common = [k for k in keyed[0] if all(k in rows for rows in keyed[1:])]
    out = []
    for k in common:
        row = {f: v for f, v in keyed[0][k].items() if f not in ONE_RUN}
        row.update(runs=len(keyed), spread={}, peer_by_run=[rows[k].get("peer") for rows in keyed])
        for f in FIELDS:
            vals = [rows[k][f] for rows in keyed if rows[k].get(f) is not None]
            row[f] = statistics.median(vals) if vals else None
            row["spread"][f] = {"min": min(vals), "max": max(vals), "values": vals} if vals else None
        out.append(row)
    return out


def table(rows):
    def cell(r, f, fmt):
        s = r["spread"][f]
        return "" if s is None else f"{fmt(r[f])} ({fmt(s['min'])}-{fmt(s['max'])})"
    return tabulate([[r["variant"], r["batch_size"], r["seq_len"], cell(r, "median_ms", lambda v: f"{v:.2f}"),
                      cell(r, "speedup", lambda v: f"{v:.2f}x"), cell(r, "vs_peer", lambda v: f"{v:.2f}x")]
                     for r in rows],
                    headers=["variant", "bs", "seq", "median ms (runs' range)", "speedup vs fp32 c=1",
                             "vs peer"], tablefmt="github")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run_speed.py --json files, one per run")
    p.add_argument("--json", default=None)
    p.add_argument("--table", default=None, help="markdown table")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        raise UserError("give at least two runs: the point is their spread")
    runs = []
    for path in args.runs:
        with open(path) as f:
            runs.append(json.load(f))
    machines = {json.dumps({k: r["machine"].get(k) for k in ("cpu", "isa", "cores")}, sort_keys=True) for r in runs}
    if len(machines) > 1:
        raise UserError(f"the runs come from different CPUs ({sorted(machines)}): compare them apart")
    rows = spread(runs)
    text = table(rows)
    print(text)
    if args.json:
        atomic_write_json(args.json, {"machine": runs[0]["machine"], "runs": args.runs,
                                      "commands": [r.get("command") for r in runs], "rows": rows})
    if args.table:
        with written_atomically(args.table) as tmp, open(tmp, "w") as f:
            f.write(f"{len(runs)} runs ({', '.join(args.runs)}); median over runs (lowest-highest run)\n\n{text}\n")


if __name__ == "__main__":
    run_main(main)
