"""How well a latency table predicts whole models: every latency point of a frontier.json (its shapes, random
weights) timed in the point's runtime on this CPU beside the table's prediction (latency.encoder_ms), and the
uncompressed model too. The table is this machine's (measured and cached if it is not there yet) or --table FILE
(a committed one: to see what an older version predicted, read as that version was).

    python scripts/check_latency_table.py --frontier results/latency_budget/frontier.json --json OUT.json
"""
import argparse
import copy
import json
import sys
import tempfile

import torch
from tabulate import tabulate

from modcomp import latency
from modcomp import frontier as F
from modcomp.compression import compress
from modcomp.inference import time_variants
from modcomp.utils import UserError, atomic_write_json, cpu_info, run_main
from modeling_moddistilbert import ModDistilBertForSequenceClassification


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frontier", required=True)
    p.add_argument("--runtime", default="openvino", choices=latency.RUNTIMES, help="the points of this runtime")
    p.add_argument("--table", default=None, help="a latency table file (default: this machine's, cached)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    data = F.read(a.frontier)
    base = ModDistilBertForSequenceClassification.from_teacher(data.get("model") or "minilm", num_labels=2).eval()
    c = base.config
    L, nh = c.num_hidden_layers, c.num_attention_heads
    if a.table:
        try:
            with open(a.table) as f:
                table = json.load(f)
            key = table["key"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--table {a.table}: not a latency table ({e})") from None
        want = {"runtime": a.runtime, "hidden": c.hidden_size, "heads": nh, "head_dim": c.attn_dims[0] // nh,
                "ffn_width": max(c.ffn_dims), "length": a.seq_len, "threads": a.threads}
        bad = {k: (key.get(k), v) for k, v in want.items() if key.get(k) != v}
        if bad:
            raise UserError(f"--table {a.table} is not of these shapes and settings: "
                            + ", ".join(f"{k} {got} (here: {v})" for k, (got, v) in bad.items()))
    else:
        table, _ = latency.load_or_measure(c.hidden_size, nh, c.attn_dims[0] // nh, max(c.ffn_dims), a.seq_len,
                                           a.runtime, a.threads, L)
    points = [q for q in data["points"] if q.get("runtime") == a.runtime and q["budget"].startswith("latency")]
    if not points:
        raise UserError(f"--frontier {a.frontier}: no latency points in {a.runtime}")
    shapes = {"uncompressed": (base, [(nh, c.attn_dims[l], c.ffn_dims[l]) for l in range(L)])}
    for q in points:
        al = q["allocation"]
        removed = set(al.get("removed_layers") or [])
        dims = {l: (al["attn_dims"][l], al["ffn_dims"][l]) for l in range(L)}
        heads = dict(enumerate(al["attn_heads"]))
        model = compress(copy.deepcopy(base), q["compression"], "svd", dims=dims, heads=heads,
                         removed_layers=sorted(removed)).eval()
        shapes[f"{q['task']} {q['budget']}"] = (model, [None if l in removed else (heads[l], *dims[l])
                                                        for l in range(L)])
    with tempfile.TemporaryDirectory() as tmp:
        runners = {n: latency._runner(m, a.runtime, a.threads, tmp, f"m{i}") for i, (n, (m, _)) in
                   enumerate(shapes.items())}
        timed = time_variants(runners, 1, a.seq_len, c.vocab_size, a.repeats, a.warmup)
    rows = []
    for n, (_, layers) in shapes.items():
        pred, (ms, lo, hi) = latency.encoder_ms(table, layers), timed[n]
        rows.append({"point": n, "predicted_ms": round(pred, 3), "measured_ms": round(ms, 3),
                     "spread_ms": [round(lo, 3), round(hi, 3)], "error": round(pred / ms - 1, 3)})
    for r in rows:   # the ratio a budget asked for against what it got
        r["predicted_ratio"] = round(rows[0]["predicted_ms"] / r["predicted_ms"], 3)
        r["measured_ratio"] = round(rows[0]["measured_ms"] / r["measured_ms"], 3)
    machine = cpu_info()
    print(f"CPU: {machine.get('cpu')} ({', '.join(machine.get('isa') or [])}); {a.threads} threads; "
          f"{a.runtime}; batch 1 x {a.seq_len}; table version {table['key']['version']}")
    print(tabulate([[r["point"], r["predicted_ms"], r["measured_ms"], f"{r['error']:+.0%}", r["predicted_ratio"],
                     r["measured_ratio"]] for r in rows],
                   headers=["shapes", "table ms", "measured ms", "table error", "table ratio", "measured ratio"],
                   tablefmt="github"))
    if a.json:
        atomic_write_json(a.json, {"machine": machine, "command": ["python", "scripts/check_latency_table.py",
                                                                   *(argv if argv is not None else
                                                                     sys.argv[1:])],
                                   "table_key": table["key"], "threads": a.threads, "rows": rows})


if __name__ == "__main__":
    run_main(main)
