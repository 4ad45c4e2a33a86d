"""Do two sets of runs give the same scores? Pairs the results.json files under two directories by (task, variant
kind, compression, seed) and compares every epoch's score (exactly, and the largest difference).

    python scripts/same_scores.py runs/repro_cb results/joint_allocation --tasks cb --seeds 1 \
        --old_label modular-data-jointout-ft+kd --json results/reproduce_c2-6_cb_seed1/same_scores.json

Variant kind: baseline or compressed (the labels differ between recipes' generations); runs of other settings
under the same key are an error (pass a narrower directory)."""
import argparse
import json

from modcomp.report import load_results
from modcomp.utils import UserError, atomic_write_json, run_main


def keyed(results_dir, tasks, seeds, label=None):
    out = {}
    for r in load_results(results_dir):
        if (tasks and r["task"] not in tasks) or (seeds and r["seed"] not in seeds):
            continue
        if label and r["variant"] not in ("baseline", label):
            continue
        kind = "baseline" if r["variant"] == "baseline" else "compressed"
        key = (r["task"], kind, r["compression"], r["seed"])
        if key in out and out[key]["label"] != r["variant"]:
            raise UserError(f"{results_dir}: two runs for {key} ({out[key]['label']}, {r['variant']}): narrow it")
        if key not in out:
            out[key] = {"label": r["variant"], "scores": [e.get("score") for e in r["epochs"]], "path": r["_path"]}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("new")
    p.add_argument("old")
    p.add_argument("--tasks", nargs="+")
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--old_label", help="only the compressed runs of this recorded variant label in OLD")
    p.add_argument("--json")
    a = p.parse_args(argv)
    new, old = keyed(a.new, a.tasks, a.seeds), keyed(a.old, a.tasks, a.seeds, a.old_label)
    rows = []
    for key in sorted(new, key=lambda k: (k[0], k[1], k[2] or 0, k[3])):
        if key not in old:
            continue
        n, o = new[key]["scores"], old[key]["scores"]
        diff = max(abs(x - y) for x, y in zip(n, o)) if len(n) == len(o) else None
        rows.append({"task": key[0], "kind": key[1], "compression": key[2], "seed": key[3], "identical": n == o,
                     "max_abs_difference": diff, "last_new": n[-1], "last_old": o[-1],
                     "new": new[key]["path"], "old": old[key]["path"]})
        print(f"{key[0]} {key[1]:<10} c={key[2] or 1:g} seed {key[3]}: {'identical' if n == o else 'DIFFER'} "
              f"(last epoch {n[-1]:.4f} vs {o[-1]:.4f}; largest epoch difference {diff})")
    if not rows:
        raise UserError("no run in common")
    if a.json:
        atomic_write_json(a.json, {"new": a.new, "old": a.old, "rows": rows,
                                   "all_identical": all(r["identical"] for r in rows)})


if __name__ == "__main__":
    run_main(main)
