"""Compare the A/B's two modules dirs (old = da7b0f6, new = 1566b36; MRPC seed 1's capture, c=3): allocation,
curves, held-out errors, tensors. What compare_c3.txt holds:

    python results/joint_allocation/module_stage_ab_teacher_copy/compare.py OLD_MODULES_DIR NEW_MODULES_DIR

(the blocks themselves are not committed; their allocation.json and report.json are, as *_old_c3.json / *_new_c3.json)"""
import glob
import json
import os
import sys

from safetensors.torch import load_file

old, new = sys.argv[1], sys.argv[2]
a, b = (json.load(open(os.path.join(d, "allocation.json"))) for d in (old, new))
print("allocation dims equal:", a["dims"] == b["dims"])
md = max(abs(e - b["curves"][l][k][s]) / max(abs(e), 1e-30)
         for l in a["curves"] for k in a["curves"][l] for s, e in a["curves"][l][k].items())
print("max relative difference of the curves:", md)
print("sensitivities equal:", a["sensitivity"] == b["sensitivity"])
ra, rb = (json.load(open(os.path.join(d, "report.json"))) for d in (old, new))
print("layer block size  old/new held-out error  old/new seconds (4 processes on 2 cores)  new fit")
for ea, eb in zip(ra["layers"], rb["layers"]):
    print(ea["layer"], ea["block"], ea["inner_size"], f"{ea['data_init_rel_error']:.6f} {eb['data_init_rel_error']:.6f}",
          ea["seconds"], eb["seconds"], "teacher copy" if (eb["fit"] or {}).get("teacher_copy") else "")
for f in sorted(glob.glob(os.path.join(old, "*.safetensors"))):
    x, y = load_file(f), load_file(os.path.join(new, os.path.basename(f)))
    same = set(x) == set(y) and all((x[k] == y[k]).all() for k in x)
    print(os.path.basename(f), "bit-identical" if same else "differs")
