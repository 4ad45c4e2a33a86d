"""Copy the results.json files of several run trees into one small tree to commit and consolidate.

    python scripts/collect_results.py runs/base runs/final6 --dest results/six_tasks [--seeds 1 2 3]

Every results.json under the sources (read and checked by consolidate.load_results) is copied to
DEST/TASK/VARIANT[_cC]/seedS/results.json (C only for compressed runs); only the JSON, not the models.
Two sources with the same (task, variant, compression, seed) are an error, and so is a DEST that exists.
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from consolidate import load_results  # noqa: E402
from utils import UserError, run_main  # noqa: E402


def target(r):
    variant = r["variant"] if r["compression"] is None else f"{r['variant']}_c{r['compression']:g}"
    return os.path.join(r["task"], variant, f"seed{r['seed']}", "results.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+")
    p.add_argument("--dest", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds")
    p.add_argument("--tasks", nargs="+", default=None, help="only these tasks")
    args = p.parse_args(argv)
    if os.path.exists(args.dest):
        raise UserError(f"--dest exists: {args.dest} (remove it first)")
    plan = {}
    for src in args.sources:
        for r in load_results(src):
            if (args.seeds and r["seed"] not in args.seeds) or (args.tasks and r["task"] not in args.tasks):
                continue
            t = target(r)
            if t in plan:
                raise UserError(f"two results for {t}: {plan[t]} and {r['_path']}")
            plan[t] = r["_path"]
    if not plan:
        raise UserError("nothing to copy")
    tmp = args.dest.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for t, src in sorted(plan.items()):
        os.makedirs(os.path.dirname(os.path.join(tmp, t)), exist_ok=True)
        shutil.copyfile(src, os.path.join(tmp, t))
    os.rename(tmp, args.dest)  # all or nothing
    print(f"copied {len(plan)} results.json to {args.dest}")


if __name__ == "__main__":
    run_main(main)
