"""Median and range over repeated `run_speed.py --frontier` runs: one markdown table of the points and one of
the peers.

    python scripts/frontier_spread.py results/speed/frontier_xeon_avx512/run*.json \
        --md results/speed/frontier_xeon_avx512/spread.md
"""
import argparse
import json
import statistics

from modcomp.utils import UserError, atomic_write_bytes, cpu_line, run_main


def fmt(values, digits=2, suffix=""):
    return f"{statistics.median(values):.{digits}f}{suffix} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--md", required=True)
    a = p.parse_args(argv)
    runs = [json.load(open(f)) for f in a.runs]
    if len({json.dumps(r["machine"].get("model")) for r in runs}) != 1:
        raise UserError("the runs were made on different CPUs")
    key = lambda q: (q["task"], q["budget"])
    points = [{key(q): q for q in r["points"]} for r in runs]
    lines = [f"{len(runs)} runs of `run_speed.py --frontier {runs[0]['frontier']}` ({', '.join(a.runs)}); "
             f"{cpu_line(runs[0]['machine'])}; {runs[0]['threads']} threads, batch 1; median over runs (range). "
             "vs peer: the fastest peer's ms / the point's ms, at that length.", "",
             "| task | budget | retention | ms × 128 | vs peer × 128 | ms, real lengths | vs peer, real lengths | peer |",
             "|---|---|---|---|---|---|---|---|"]
    for k, q in points[0].items():
        qs = [pt[k] for pt in points]
        lines.append(f"| {q['task']} | {q['budget']} | {q['retention']} | {fmt([x['ms_128'] for x in qs], 2)} | "
                     f"{fmt([x['vs_peer_128'] for x in qs], 2, '×')} | {fmt([x['ms_real'] for x in qs], 2)} | "
                     f"{fmt([x['vs_peer_real'] for x in qs], 2, '×')} | {q['peer']} |")
    peers = [{q["name"]: q for q in r["peers"]} for r in runs]
    tasks = list(runs[0]["peers"][0]["ms_real"])
    lines += ["", "| peer (the uncompressed model) | ms × 128 | " + " | ".join(f"ms, {t} lengths" for t in tasks) + " |",
              "|---|---|" + "---|" * len(tasks)]
    for name in peers[0]:
        qs = [pr[name] for pr in peers]
        lines.append(f"| {name} | {fmt([x['ms_128'] for x in qs], 2)} | "
                     + " | ".join(fmt([x["ms_real"][t] for x in qs], 2) for t in tasks) + " |")
    atomic_write_bytes(a.md, ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
