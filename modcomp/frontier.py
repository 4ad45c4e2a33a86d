"""The score-vs-cost frontier as a file anyone can re-time on their own CPU (issue 27, item 6).

    python scripts/make_frontier.py --results_dir results/joint_allocation --label modular-data-jointout-ft+kd \
        --tasks stsb mrpc cb --allocations "results/joint_allocation/{task}/teacher_seed{seed}/mod_jointout_c{c}/allocation.json" \
        --out results/joint_allocation/frontier.json
    python run_speed.py --frontier results/joint_allocation/frontier.json --json OUT.json

frontier.json: per point the task, the budget (what it was chosen under: `macs c=C`), the seeds, the median
retention over them (last epoch: compressed / uncompressed, medians of the scores) and the allocation that gives
its shapes (attention inner size and FFN width per layer, of the first seed; a latency budget's heads per layer
too, and the runtime it was measured in). `run_speed.py --frontier` builds each point's shapes (random weights: no
checkpoint needed), exports it as export.py does and times it in ONNX Runtime INT8 and in OpenVINO (default
precision) beside the peers at batch 1 x 128 tokens and at the task's real lengths.
"""
import glob
import json
import statistics

from modcomp.report import load_results, select_epoch
from modcomp.utils import UserError

VERSION = 1
RUNTIMES = ("ort-int8", "openvino")   # what a point is timed in (latency.RUNTIMES); a macs point: ort-int8


def _median(scores):
    """The median of seeds' scores, where None (undefined: the correlation of a constant prediction) counts below
    every number; None when the median falls on one."""
    v = sorted(scores, key=lambda x: (x is not None, x or 0.0))
    n = len(v)
    if n % 2:
        return v[n // 2]
    lo, hi = v[n // 2 - 1], v[n // 2]
    return None if lo is None or hi is None else (lo + hi) / 2


def build(results_dir, label, tasks, allocations, model="minilm"):
    """The frontier's dict from a results directory: rows of `label` (a recorded variant) and their baselines."""
    by = {}
    for r in load_results(results_dir):
        if r["task"] not in tasks:
            continue
        kind = "baseline" if r["variant"] == "baseline" else r["variant"]
        if kind not in ("baseline", label):
            continue
        score = select_epoch(r, "last")["score"]
        by.setdefault((r["task"], r["compression"]), {}).setdefault(r["seed"], []).append(score)
    points = []
    for (task, c), seeds in sorted(by.items(), key=lambda kv: (tasks.index(kv[0][0]), kv[0][1] or 0)):
        if c is None:
            continue
        base = by.get((task, None), {})
        common = sorted(s for s in seeds if s in base)
        if not common:
            raise UserError(f"{task} c={c:g}: no baseline of the same seeds under {results_dir}")
        for s in common:
            if len(seeds[s]) > 1 or len(base[s]) > 1:
                raise UserError(f"{task} c={c:g} seed {s}: several runs under {results_dir}: narrow it")
        comp = _median([seeds[s][0] for s in common])
        ref = statistics.median(base[s][0] for s in common)
        pattern = allocations.format(task=task, seed=common[0], c=f"{c:g}")
        found = sorted(glob.glob(pattern))
        if len(found) != 1:
            raise UserError(f"{task} c={c:g}: {len(found)} allocation files match {pattern!r} (want one)")
        with open(found[0]) as f:
            alloc = json.load(f)
        dims = {int(k): v for k, v in alloc["dims"].items()}
        shapes = {"source": found[0], "seed": common[0], "attn_dims": [dims[l][0] for l in sorted(dims)],
                  "ffn_dims": [dims[l][1] for l in sorted(dims)]}
        budget, runtime = f"macs c={c:g}", "ort-int8"
        if alloc.get("heads"):   # a latency budget (allocation.py with a latency table): its heads and runtime
            runtime = alloc["budget"]["latency"]["runtime"]
            budget = f"latency c={c:g} ({runtime})"
            shapes["attn_heads"] = [int(alloc["heads"][str(l)]) for l in sorted(dims)]
            if alloc.get("removed_layers"):   # layers removed whole
                shapes["removed_layers"] = sorted(int(l) for l in alloc["removed_layers"])
            shapes["predicted_latency_ratio"] = round(alloc["budget"]["latency"]["predicted_ratio"], 3)
        points.append({"task": task, "budget": budget, "compression": c, "runtime": runtime, "seeds": common,
                       "retention": None if comp is None else round(comp / ref, 4),
                       "score": None if comp is None else round(comp, 3), "teacher_score": round(ref, 3),
                       "undefined_seeds": [s for s in common if seeds[s][0] is None] or None,
                       "allocation": shapes})
    if not points:
        raise UserError(f"no {label} rows of {', '.join(tasks)} under {results_dir}")
    return {"version": VERSION, "model": model, "label": label, "selection": "last epoch, median over seeds",
            "points": points}


def read(path):
    """A frontier.json, checked: one-line errors for what run_speed.py --frontier cannot time."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"--frontier {path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list) or not data["points"]:
        raise UserError(f"--frontier {path}: no points (a frontier.json of scripts/make_frontier.py)")
    for i, p in enumerate(data["points"]):
        a = p.get("allocation") or {}
        if not (isinstance(a.get("attn_dims"), list) and isinstance(a.get("ffn_dims"), list)
                and len(a["attn_dims"]) == len(a["ffn_dims"]) > 0 and p.get("task")):
            raise UserError(f"--frontier {path}: point {i} lacks a task or its allocation's attn_dims/ffn_dims")
        heads = a.get("attn_heads")
        if heads is not None and not (isinstance(heads, list) and len(heads) == len(a["attn_dims"]) and all(
                isinstance(k, int) and k >= 0 and (not k or d % k == 0) and (d == 0) == (k == 0)
                for k, d in zip(heads, a["attn_dims"]))):
            raise UserError(f"--frontier {path}: point {i}'s attn_heads do not fit its attn_dims")
        removed = a.get("removed_layers") or []
        if not (isinstance(removed, list) and all(isinstance(l, int) and 0 <= l < len(a["attn_dims"])
                                                  and a["attn_dims"][l] == a["ffn_dims"][l] == 0 for l in removed)):
            raise UserError(f"--frontier {path}: point {i}'s removed_layers are not layers of size 0")
        if p.get("runtime", "ort-int8") not in RUNTIMES:
            raise UserError(f"--frontier {path}: point {i}'s runtime {p.get('runtime')!r} is none of "
                            f"{', '.join(RUNTIMES)}")
    return data


FLOOR = 0.85   # the plot's lowest retention (a collapsed point is drawn there; the table has its value)


def _kind(budget):
    """'macs c=2' -> 'macs'; 'latency c=3 (openvino)' -> 'latency (openvino)'."""
    words = budget.split()
    return " ".join(w for w in words if not w.startswith("c="))


def _asked(budget):
    """'latency c=4 (openvino)' -> 4.0 (the ratio a latency budget asked for); None for a multiply-add budget."""
    words = budget.split()
    c = next((w[2:] for w in words if w.startswith("c=")), None)
    return float(c) if words[0] == "latency" and c else None


def table_and_plot(timed, png=None):
    """The markdown table (and, with `png`, the plot) of `run_speed.py --frontier --json` output: per task, every
    point's retention against its latency at 128 tokens and at the task's real lengths, in its own runtime,
    against the fastest peer; multiply-add and latency budgets side by side (the two compared at equal score)."""
    pts = timed["points"]
    peers = {q["name"]: q for q in timed["peers"]}
    m = timed.get("machine") or {}
    lines = [f"CPU: {m.get('cpu')} ({', '.join(m.get('isa') or [])}), {timed.get('threads')} threads, batch 1. "
             "vs peer: the fastest uncompressed peer at that length (named); vs own: the uncompressed model in the "
             "point's own runtime; of the budget: vs own (128) over the ratio a latency budget asked for.", "",
             "| task | budget | retention | runtime | ms × 128 | vs peer (128) | vs own (128) | of the budget | ms real "
             "| vs peer (real) | vs own (real) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for q in sorted(pts, key=lambda q: (q["task"], q["budget"].split()[0], q["ms_128"])):
        c = _asked(q["budget"])
        share = f"{q['vs_own_128'] / c:.2f}" if c else "–"
        ret = "undefined" if q["retention"] is None else q["retention"]   # a constant prediction's correlation
        lines.append(f"| {q['task']} | {q['budget']} | {ret} | {q['runtime']} | {q['ms_128']} | "
                     f"{q['vs_peer_128']:.2f}× | {q['vs_own_128']:.2f}× | {share} | {q['ms_real']} | "
                     f"{q['vs_peer_real']:.2f}× | {q['vs_own_real']:.2f}× |")
    names = sorted({q["peer"] for q in pts} | {q["peer_real"] for q in pts})
    lines += ["", "Peers (uncompressed): " + "; ".join(
        f"{n} {peers[n]['ms_128']} ms × 128, " + ", ".join(f"{t} {v} ms" for t, v in peers[n]["ms_real"].items())
        for n in names if n in peers) + "."]
    if png:
        import io

        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from modcomp.utils import atomic_write_bytes
        tasks = sorted({q["task"] for q in pts})
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, (key, title) in zip(axes, (("vs_peer_128", "batch 1 × 128 tokens"),
                                           ("vs_peer_real", "batch 1, real lengths"))):
            kinds = sorted({_kind(q["budget"]) for q in pts})
            styles = dict(zip(kinds, (("o", "--"), ("s", "-"), ("^", "-."), ("D", ":"))))
            for i, task in enumerate(tasks):
                for kind in kinds:
                    sel = sorted((q for q in pts if q["task"] == task and _kind(q["budget"]) == kind),
                                 key=lambda q: q[key])
                    if sel:   # a point below the axis (a collapsed score) drawn on its lower edge
                        ax.plot([q[key] for q in sel], [max(q["retention"] or 0.0, FLOOR) for q in sel],
                                marker=styles[kind][0], linestyle=styles[kind][1], color=f"C{i}",
                                label=f"{task}, {kind} budget")
            ax.set_ylim(FLOOR - 0.005, 1.03)
            ax.axvline(1, color="grey", linewidth=0.8)
            ax.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
            ax.set_xlabel("× faster than the fastest peer")
            ax.set_title(title)
        axes[0].set_ylabel(f"retention (last epoch; < {FLOOR}: on the edge)")
        axes[1].legend(fontsize=7)
        fig.suptitle(f"{m.get('cpu')}, {timed.get('threads')} threads", fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(png, buf.getvalue())
    return "\n".join(lines) + "\n"
