"""Compression sweep: validation score against measured CPU speedup, as a PNG and a markdown table.

    python scripts/pareto.py --results runs/base runs/sweep --tasks stsb cb \
        --speed results/sweep/speed_minilm_sweep.json --batch_size 1 --seq_len 128 \
        --png results/sweep/pareto.png --table results/sweep/pareto.md

--results: directories holding results.json files (run_superglue.py outputs, any depth), read with
consolidate.load_results. Every (task, variant, compression) point is the median over the seeds it has
(the table says how many). --speed: run_speed.py --json output with every compression of the sweep;
the x of a point is the fp32 speedup of its compression at --batch_size x --seq_len (c=1 is 1.0).
"""
import argparse
import io
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from consolidate import load_results, select_epoch  # noqa: E402
from utils import UserError, atomic_write_bytes, run_main  # noqa: E402


def points(results, tasks, which):
    """{task: {(variant, c): [scores over seeds]}}, c = 1.0 for the uncompressed baseline."""
    out, seen = {t: {} for t in tasks}, set()
    for r in results:
        if r["task"] not in out:
            continue
        c = 1.0 if r["variant"] == "baseline" or r["compression"] is None else r["compression"]
        key = (r["task"], r["variant"], c, r["seed"])
        if key in seen:
            raise UserError(f"{r['_path']}: a second result for {key}")
        seen.add(key)
        score = select_epoch(r, which)["score"]
        if score is not None:  # null: no epoch of this seed has a score (e.g. constant stsb predictions)
            out[r["task"]].setdefault((r["variant"], c), []).append(score)
    return out


def speedups(rows, batch_size, seq_len):
    """{c: fp32 speedup over c=1} from run_speed.py's JSON ({"rows": [...]}, or the bare list older runs wrote)."""
    rows = rows["rows"] if isinstance(rows, dict) else rows
    if any("compression" not in r for r in rows):
        raise UserError("the speed JSON has rows without 'compression' (an older run_speed.py): rerun it")
    out = {r["compression"]: r["speedup"] for r in rows if r["variant"].startswith("fp32")
           and r["batch_size"] == batch_size and r["seq_len"] == seq_len}
    if not out:
        raise UserError(f"no fp32 rows at batch size {batch_size} x {seq_len} tokens in the speed JSON")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", required=True)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--speed", required=True)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--png", required=True)
    p.add_argument("--table", default=None, help="also write the points as a markdown table here")
    args = p.parse_args(argv)
    results = [r for d in args.results for r in load_results(d)]
    with open(args.speed) as f:
        speed = speedups(json.load(f), args.batch_size, args.seq_len)
    by = {which: points(results, args.tasks, which) for which in ("last", "best")}
    lines = ["| task | variant | c | fp32 speedup (bs %d x %d) | seeds | last epoch | best epoch |"
             % (args.batch_size, args.seq_len), "|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        if not by["last"][task]:
            raise UserError(f"no results for task {task}")
        for (variant, c), scores in sorted(by["last"][task].items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if c not in speed:
                raise UserError(f"{task} {variant} c={c:g}: no speed row for c={c:g} in {args.speed}")
            best = by["best"][task][(variant, c)]
            lines.append(f"| {task} | {variant} | {c:g} | {speed[c]:.2f}x | {len(scores)} | "
                         f"{statistics.median(scores):.1f} | {statistics.median(best):.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(5.2 * len(args.tasks), 4), squeeze=False)
    style = {"modular": ("tab:blue", "o", 5), "svd": ("tab:orange", "s", -11), "random": ("tab:gray", "^", -20)}
    for ax, task in zip(axes[0], args.tasks):
        pts = {key: statistics.median(scores) for key, scores in by["last"][task].items()}
        base = pts.get(("baseline", 1.0))
        for variant, (color, marker, dy) in style.items():
            cs = sorted(c for v, c in pts if v == variant)
            if not cs:
                continue
            xs, ys = [speed[c] for c in cs], [pts[(variant, c)] for c in cs]
            for c, x, y in zip(cs, xs, ys):
                ax.annotate(f"c={c:g}", (x, y), textcoords="offset points", xytext=(4, dy), fontsize=8,
                            color=color)
            if base is not None:  # every curve starts at the uncompressed model
                xs, ys = [1.0] + xs, [base] + ys
            ax.plot(xs, ys, marker=marker, color=color, label=f"{variant} (c=1 is the baseline)")
        if base is not None:
            ax.axhline(0.99 * base, color="gray", lw=0.8, ls="--", label="99% of the baseline")
        ax.set_title(f"{task}: last-epoch score vs fp32 speedup")
        ax.set_xlabel(f"measured CPU speedup over c=1 (bs {args.batch_size} x {args.seq_len})")
        ax.set_ylabel("validation score (median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(args.png, buf.getvalue())
    if args.table:
        atomic_write_bytes(args.table, table.encode())
    print(f"wrote {args.png}")


if __name__ == "__main__":
    run_main(main)
