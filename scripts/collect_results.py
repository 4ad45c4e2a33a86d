"""Copy the results.json files of several run trees into one small tree to commit and consolidate.

    python scripts/collect_results.py runs/base runs/final6 --dest results/six_tasks [--seeds 1 2 3] [--tasks ...]
        [--variants ...] [--relabel OLD=NEW ...]

Every results.json under the sources (read and checked by consolidate.load_results) is copied to
DEST/TASK/VARIANT[_cC]/seedS/results.json (C only for compressed runs); only the JSON, not the models.
Two sources with the same (task, variant, compression, seed) are an error, and so is a DEST that exists.
--with_allocation: a compressed run's allocation.json (its modules_dir's: the sizes, heads and budget the run's
model has) is copied beside its results.json (what scripts/make_frontier.py reads).
--relabel OLD=NEW gives the runs labelled OLD the label NEW (the same recipe run stage by stage and through
modular_pipeline.sh carries two labels); the copy then records `relabelled_from: OLD`.
"""
import argparse
import json
import os
import shutil
import sys


from modcomp.report import load_results  # noqa: E402
from modcomp.utils import UserError, run_main  # noqa: E402


def target(r):
    variant = r["variant"] if r["compression"] is None else f"{r['variant']}_c{r['compression']:g}"
    return os.path.join(r["task"], variant, f"seed{r['seed']}", "results.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+")
    p.add_argument("--dest", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds")
    p.add_argument("--tasks", nargs="+", default=None, help="only these tasks")
    p.add_argument("--relabel", nargs="+", default=[], metavar="OLD=NEW", help="rename a variant label")
    p.add_argument("--variants", nargs="+", default=None, help="only these variant labels (after --relabel)")
    p.add_argument("--with_allocation", action="store_true", help="copy each compressed run's allocation.json too")
    args = p.parse_args(argv)
    relabel = {}
    for item in args.relabel:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise UserError(f"--relabel {item!r}: expected OLD=NEW")
        relabel[old] = new
    if os.path.exists(args.dest):
        raise UserError(f"--dest exists: {args.dest} (remove it first)")
    plan = {}
    for src in args.sources:
        for r in load_results(src):
            if (args.seeds and r["seed"] not in args.seeds) or (args.tasks and r["task"] not in args.tasks):
                continue
            if r["variant"] in relabel:
                r = {**r, "variant": relabel[r["variant"]], "relabelled_from": r["variant"]}
            if args.variants and r["variant"] not in args.variants:
                continue
            t = target(r)
            if t in plan:
                raise UserError(f"two results for {t}: {plan[t][0]} and {r['_path']}")
            plan[t] = (r["_path"], r.get("relabelled_from"))
            alloc = os.path.join(r.get("modules_dir") or "", "allocation.json")
            if args.with_allocation and r["compression"] is not None and r.get("modules_dir"):
                if not os.path.isfile(alloc):
                    raise UserError(f"{r['_path']}: its modules_dir has no allocation.json ({alloc})")
                plan[os.path.join(os.path.dirname(t), "allocation.json")] = (alloc, None)
    if not plan:
        raise UserError("nothing to copy")
    tmp = args.dest.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for t, (src, old) in sorted(plan.items()):
        os.makedirs(os.path.dirname(os.path.join(tmp, t)), exist_ok=True)
        if old is None:
            shutil.copyfile(src, os.path.join(tmp, t))
        else:
            with open(src) as f:
                r = json.load(f)
            r["variant"], r["relabelled_from"] = relabel[old], old
            with open(os.path.join(tmp, t), "w") as f:
                json.dump(r, f, indent=2)
    os.rename(tmp, args.dest)  # all or nothing
    print(f"copied {len(plan)} results.json to {args.dest}")


if __name__ == "__main__":
    run_main(main)
