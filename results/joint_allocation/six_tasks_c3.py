"""c=3 (output currency) on the six tasks with local data, per seed against its own teacher, last epoch.
Run from the repository root: python results/joint_allocation/six_tasks_c3.py > results/joint_allocation/six_tasks_c3.md"""
import glob
import json
import os
import statistics

D = os.path.dirname(os.path.abspath(__file__))
print("| c=3, last epoch | teacher, seeds 1 / 2 / 3 | compressed | retention per seed | median retention |")
print("|---|---|---|---|---|")
for task in ("stsb", "mrpc", "cb", "copa", "rte", "wsc"):
    base = {json.load(open(f))["seed"]: json.load(open(f)) for f in glob.glob(f"{D}/{task}/baseline/seed*/results.json")}
    comp = {json.load(open(f))["seed"]: json.load(open(f)) for f in glob.glob(f"{D}/{task}/jointout_c3/seed*/results.json")}
    seeds = sorted(base)
    if not seeds:
        print(f"| {task} | not run | | | |")
        continue
    fmt = lambda d: " / ".join(f"{d[s]['last_score']:.2f}" if s in d else "–" for s in seeds)
    ret = {s: comp[s]["last_score"] / base[s]["last_score"] for s in seeds if s in comp}
    med = f"{statistics.median(ret.values()):.3f}" if ret else "–"
    print(f"| {task} | {fmt(base)} | {fmt(comp)} | {' / '.join(f'{ret[s]:.3f}' if s in ret else '–' for s in seeds)} "
          f"| {med} ({len(ret)} seed{'s' if len(ret) != 1 else ''}) |")
