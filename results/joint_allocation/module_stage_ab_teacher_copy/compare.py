"""Compare the A/B's two modules dirs (old = da7b0f6, new = 1566b36): allocation, curves, held-out errors, tensors.
Run from /work/scratch/ab10 (the blocks themselves are not committed)."""
import glob
import json
import os

from safetensors.torch import load_file

a, b = (json.load(open(f"{v}_c3/allocation.json")) for v in ("old", "new"))
print("allocation dims equal:", a["dims"] == b["dims"])
md = max(abs(e - b["curves"][l][k][s]) / max(abs(e), 1e-30)
         for l in a["curves"] for k in a["curves"][l] for s, e in a["curves"][l][k].items())
print("max relative difference of the curves:", md)
print("sensitivities equal:", a["sensitivity"] == b["sensitivity"])
ra, rb = (json.load(open(f"{v}_c3/report.json")) for v in ("old", "new"))
print("layer block size  old/new held-out error  old/new seconds (4 processes on 2 cores)  new fit")
for ea, eb in zip(ra["layers"], rb["layers"]):
    print(ea["layer"], ea["block"], ea["inner_size"], f"{ea['data_init_rel_error']:.6f} {eb['data_init_rel_error']:.6f}",
          ea["seconds"], eb["seconds"], "teacher copy" if (eb["fit"] or {}).get("teacher_copy") else "")
for f in sorted(glob.glob("old_c3/*.safetensors")):
    x, y = load_file(f), load_file(f.replace("old_c3", "new_c3"))
    same = set(x) == set(y) and all((x[k] == y[k]).all() for k in x)
    print(os.path.basename(f), "bit-identical" if same else "differs")
