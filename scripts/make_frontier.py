"""Write the committed frontier as a file (modcomp/frontier.py): per point the task, budget, seeds, median
retention and the allocation that gives its shapes; `python run_speed.py --frontier FILE` re-times it."""
import argparse

from modcomp import frontier
from modcomp.utils import atomic_write_json, run_main


def main(argv=None):
    p = argparse.ArgumentParser(description=frontier.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results_dir", required=True)
    p.add_argument("--label", required=True, help="the compressed rows' recorded variant")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--allocations", required=True, help="where each point's allocation.json is: a pattern of "
                   "{task}, {seed} (the first seed) and {c}")
    p.add_argument("--model", default="minilm", help="the shape the allocations are of (the teacher)")
    p.add_argument("--add", nargs="*", default=[], metavar="FRONTIER",
                   help="also hold the points of these frontier files (another budget's, to time them together)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    data = frontier.build(a.results_dir, a.label, a.tasks, a.allocations, a.model)
    for path in a.add:
        other = frontier.read(path)
        if (other.get("model") or "minilm") != a.model:
            raise frontier.UserError(f"--add {path}: its shapes are of {other.get('model')!r}, not {a.model!r}")
        data["points"] += [dict(q, label=other.get("label"), source=path) for q in other["points"]]
    atomic_write_json(a.out, data)
    for pt in data["points"]:
        print(f"{pt['task']} {pt['budget']}: retention {pt['retention']} (seeds {pt['seeds']})")


if __name__ == "__main__":
    run_main(main)
