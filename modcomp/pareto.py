"""Compression sweep: validation score against measured CPU speedup, as a PNG and a markdown table.

    python scripts/pareto.py --results runs/base runs/sweep --tasks stsb cb \
        --speed results/sweep/speed_minilm_sweep.json --batch_size 1 --seq_len 128 \
        --png results/sweep/pareto.png --table results/sweep/pareto.md

--results: directories holding results.json files (run_superglue.py outputs, any depth), read with
consolidate.load_results. Every (task, variant, compression) point is the median over the seeds it has
(the table says how many). --speed: run_speed.py --json output with every compression of the sweep;
the x of a point is the speedup over fp32 c=1 of its compression at --batch_size x --seq_len (c=1 is 1.0), in
each of --precisions (run_speed's row prefixes: fp32, int8,x8, ort-int8, ts int8 ...; one curve each). A
variant named in --checkpoint_variants (e.g. the allocated ones) takes the speed of run_speed --models' row of
its own checkpoint ('fp32 c=3 ckpt'), the others that of the uniform model of their c. --peer adds the peer row
(ONNX Runtime INT8 of the uncompressed model) at the baseline's fp32 score.

    python scripts/pareto.py --results results/joint_allocation results/sweep/stsb --tasks stsb \
        --speed results/joint_allocation/speed.json --precisions fp32 ort-int8 --checkpoint_variants \
        modular-data-joint-ft+kd --peer --png results/joint_allocation/pareto.png
"""
import argparse
import io
import json
import os
import statistics
import sys


from modcomp.report import load_results, select_epoch  # noqa: E402
from modcomp.utils import UserError, atomic_write_bytes, run_main  # noqa: E402


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


def speedups(rows, batch_size, seq_len, precision="fp32"):
    """{(c, is_checkpoint): speedup over fp32 c=1} of the rows of one precision (the variant's prefix before
    ' c=') from run_speed.py's JSON ({"rows": [...]}, or the bare list older runs wrote)."""
    rows = rows["rows"] if isinstance(rows, dict) else rows
    if any("compression" not in r for r in rows):
        raise UserError("the speed JSON has rows without 'compression' (an older run_speed.py): rerun it")
    out = {(r["compression"], bool(r.get("checkpoint"))): r["speedup"] for r in rows
           if r["variant"].rsplit(" c=", 1)[0] == precision and r["batch_size"] == batch_size
           and r["seq_len"] == seq_len}
    if not out:
        raise UserError(f"no {precision} rows at batch size {batch_size} x {seq_len} tokens in the speed JSON")
    return out


def speed_of(speed, variant, c, checkpoint_variants):
    if c == 1.0:
        return speed.get((1.0, False))
    return speed.get((c, variant in checkpoint_variants))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", required=True)
    p.add_argument("--more_results", nargs="+", default=[],
                   help="more points (e.g. another recipe's sweep) whose uncompressed baselines are left out: the "
                        "baseline comes from --results")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--speed", required=True)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--precisions", nargs="+", default=["fp32"],
                   help="run_speed row prefixes, one curve each (fp32, int8,x8, ort-int8, ts int8,x8 ...)")
    p.add_argument("--checkpoint_variants", nargs="+", default=[],
                   help="variants whose speed is their own checkpoint's row (run_speed --models)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="draw only these variants (and the baseline); default: every variant found")
    p.add_argument("--peer", action="store_true", help="mark the peer row (ort-int8 c=1) at the baseline's score")
    p.add_argument("--skip_missing_speed", action="store_true",
                   help="leave out (and name) the points whose c has no speed row, instead of an error")
    p.add_argument("--png", required=True)
    p.add_argument("--table", default=None, help="also write the points as a markdown table here")
    args = p.parse_args(argv)
    results = [r for d in args.results for r in load_results(d)]
    results += [r for d in args.more_results for r in load_results(d) if r["variant"] != "baseline"]
    if args.variants:
        results = [r for r in results if r["variant"] == "baseline" or r["variant"] in args.variants]
    with open(args.speed) as f:
        raw = json.load(f)
    speed = {prec: speedups(raw, args.batch_size, args.seq_len, prec) for prec in args.precisions}
    peer = speedups(raw, args.batch_size, args.seq_len, "ort-int8").get((1.0, False)) if args.peer else None
    by = {which: points(results, args.tasks, which) for which in ("last", "best")}
    cols = " | ".join(f"{prec} speedup" for prec in args.precisions)
    lines = [f"| task | variant | c | {cols} | seeds | last epoch | best epoch |  (bs {args.batch_size} x {args.seq_len})",
             "|---|---|---|" + "---|" * len(args.precisions) + "---|---|---|"]
    for task in args.tasks:
        if not by["last"][task]:
            raise UserError(f"no results for task {task}")
        for (variant, c), scores in sorted(list(by["last"][task].items()), key=lambda kv: (kv[0][1], kv[0][0])):
            xs = [speed_of(speed[prec], variant, c, args.checkpoint_variants) for prec in args.precisions]
            if xs[0] is None and args.skip_missing_speed:
                print(f"left out: {task} {variant} c={c:g} (no {args.precisions[0]} speed row)")
                for which in by:
                    by[which][task].pop((variant, c))
                continue
            if xs[0] is None:
                raise UserError(f"{task} {variant} c={c:g}: no speed row for c={c:g} ({args.precisions[0]}) in "
                                f"{args.speed}")
            best = by["best"][task][(variant, c)]
            lines.append(f"| {task} | {variant} | {c:g} | " + " | ".join("-" if x is None else f"{x:.2f}x" for x in xs)
                         + f" | {len(scores)} | {statistics.median(scores):.1f} | {statistics.median(best):.1f} |")
    if peer is not None:
        lines.append(f"| | peer: ONNX Runtime INT8 c=1 | 1 | {peer:.2f}x over fp32 c=1 |" + " |" * len(args.precisions)
                     + " (its score not measured) | |")
    table = "\n".join(lines) + "\n"
    print(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(6 * len(args.tasks), 4.5), squeeze=False)
    style = {"modular": ("tab:blue", "o"), "svd": ("tab:orange", "s"), "random": ("tab:gray", "^")}
    others = iter(["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    for ax, task in zip(axes[0], args.tasks):
        pts = {key: statistics.median(scores) for key, scores in by["last"][task].items()}
        base = pts.get(("baseline", 1.0))
        for variant in sorted({v for v, _ in pts if v != "baseline"}):
            if variant not in style:
                style[variant] = (next(others, "black"), "D")
            color, marker = style[variant]
            for prec, ls in zip(args.precisions, ("-", "--", ":", "-.")):
                cs = [c for v, c in sorted(pts, key=lambda k: k[1])
                      if v == variant and speed_of(speed[prec], variant, c, args.checkpoint_variants) is not None]
                if not cs:
                    continue
                xs = [speed_of(speed[prec], variant, c, args.checkpoint_variants) for c in cs]
                ys = [pts[(variant, c)] for c in cs]
                for c, x, y in zip(cs, xs, ys):
                    ax.annotate(f"c={c:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
                if base is not None and prec == "fp32":  # the fp32 curve starts at the uncompressed model
                    xs, ys = [1.0] + xs, [base] + ys
                ax.plot(xs, ys, marker=marker, ls=ls, color=color, label=f"{variant} ({prec})")
        if base is not None:
            ax.plot([1.0], [base], marker="*", ms=12, color="black", ls="", label="baseline, fp32 c=1")
            ax.axhline(0.99 * base, color="gray", lw=0.8, ls="--", label="99% of the baseline")
            if peer is not None:
                ax.plot([peer], [base], marker="*", ms=12, color="tab:red", ls="",
                        label="peer: ORT INT8 c=1 (drawn at the fp32 score)")
        ax.set_title(f"{task}: last-epoch score vs measured speedup")
        ax.set_xlabel(f"CPU speedup over fp32 c=1 (bs {args.batch_size} x {args.seq_len})")
        ax.set_ylabel("validation score (median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(args.png, buf.getvalue())
    if args.table:
        atomic_write_bytes(args.table, table.encode())
    print(f"wrote {args.png}")


if __name__ == "__main__":
    run_main(main)
