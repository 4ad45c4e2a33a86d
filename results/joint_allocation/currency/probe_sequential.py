"""Isolated against sequential closed form (data_init.compress_with_data, sequential=True), before any fine-tuning:
STS-B seed 1's teacher and capture, the layernorm-currency allocations of probe.py's output at c = 3, 4, 6.

    python results/joint_allocation/currency/probe_sequential.py BASELINE_MODEL CAPTURE_DIR PROBE.json OUT.json"""
import json, sys
sys.path.insert(0, ".")
import torch
import data_init, modular, tasks as T
from activations import ActivationStore
from finetune import build_model, evaluate

model_dir, cap, probe, out = sys.argv[1:5]
torch.set_num_threads(2)
store = ActivationStore(cap)
L, ids, _ = store.sequence_info()
train_idx, _ = modular.holdout_split(ids, 0.1, 42)
task = T.get_task("stsb")
model, tok, _ = build_model(model_dir, task)
loader = T.make_loader(T.encode(task, T.load_rows(task, "validation", "/work/shared/data"), tok, 128), 64, False,
                       tok.pad_token_id)
data = {l: store.load_layer(l) for l in range(6)}


@torch.no_grad()
def preds(m):
    m.eval()
    return torch.cat([m(**{k: v for k, v in b.items() if k != "labels"}).logits.float() for b in loader])


tp = preds(model)
res = []
for run in json.load(open(probe))["runs"]:
    if not run["name"].startswith("joint layernorm") or run["c"] == 2:
        continue
    dims = {int(l): tuple(d) for l, d in run["dims"].items()}
    for sequential in (False, True):
        m, _, _ = build_model(model_dir, task)
        data_init.compress_with_data(m, dims, data, sequential=sequential, index=train_idx, max_tokens=65536, seed=42)
        r = {"c": run["c"], "sequential": sequential, "score": evaluate(m, loader, task, "cpu")["score"],
             "mse_to_teacher": float(((preds(m) - tp) ** 2).mean())}
        res.append(r)
        print(r, flush=True)
json.dump(res, open(out, "w"), indent=1)
