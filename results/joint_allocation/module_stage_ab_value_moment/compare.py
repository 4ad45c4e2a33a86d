"""Compare the A/B's two modules dirs (old = ca72c35, new = f08e0b3's working tree; STS-B seed 1's capture, c=3):
allocation, curves, held-out errors, seconds. What compare_c3.txt holds:

    python results/joint_allocation/module_stage_ab_value_moment/compare.py OLD_MODULES_DIR NEW_MODULES_DIR

(the blocks are not committed; their allocation.json and report.json are, as *_old_c3.json / *_new_c3.json)"""
import json, sys
a, b = sys.argv[1], sys.argv[2]
A = json.load(open(f"{a}/allocation.json")); B = json.load(open(f"{b}/allocation.json"))
print("dims old", A["dims"]); print("dims new", B["dims"])
print("pred err", A["predicted_error"], B["predicted_error"])
for l in A["curves"]:
    for k in ("mha", "ffn"):
        ca, cb = A["curves"][l][k], B["curves"][l][k]
        worst = max(abs(ca[s] - cb[s]) / max(abs(ca[s]), 1e-12) for s in ca if ca[s] > 1e-9)
        print(l, k, f"max rel diff of curve {worst:.2e}")
ra = json.load(open(f"{a}/report.json")); rb = json.load(open(f"{b}/report.json"))
for ea, eb in zip(ra["layers"], rb["layers"]):
    print(ea["layer"], ea["block"], ea["inner_size"], eb["inner_size"], f"{ea['init_rel_error']:.5f} {eb['init_rel_error']:.5f}", ea["seconds"], eb["seconds"])
