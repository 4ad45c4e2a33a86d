"""Which error currency predicts the score? STS-B seed 1's fine-tuned teacher (MiniLM), its capture, c = 2, 3, 4, 6.

For each currency (allocation.CURRENCIES) the joint allocation is computed from the curves; then every
allocation (and the attention-only c=2 allocation of the committed default recipe: head dims 24/28/20/8/8/8,
FFN 768) is built as a closed-form model (data_init.compress_with_data, the modules' --fit_tokens 65536 and
seed 42), and scored on STS-B validation *before* any fine-tuning: the task score, and the mean squared
difference from the teacher's predictions (what distillation starts from).

    python results/joint_allocation/currency/probe.py BASELINE_MODEL CAPTURE_DIR OUT.json [CURRENCY ...]

(with CURRENCY given: only those currencies' allocations, no attention-only row). BASELINE_MODEL: the seed's
fine-tuned baseline (RUN/model), CAPTURE_DIR: its capture (the pipeline's OUT_DIR/stsb/capture/ft-seed1-...);
STS-B validation from the repo's data/stsb (the same files as the project's shared data). Needs the package
installed (install.sh: pip install -e .)."""
import json
import sys
import time

import torch

from modcomp import allocation, data_init, modular, tasks as T
from modcomp.activations import ActivationStore
from modcomp.finetune import build_model, evaluate

model_dir, cap, out = sys.argv[1:4]
currencies = sys.argv[4:] or allocation.CURRENCIES
torch.set_num_threads(2)
store = ActivationStore(cap)
teacher, _ = modular.load_capture_teacher(store)
L, ids, _ = store.sequence_info()
train_idx, val_idx = modular.holdout_split(ids, 0.1, 42)
task = T.get_task("stsb")
model, tok, _ = build_model(model_dir, task)
rows = T.load_rows(task, "validation")   # the repo's data/stsb
loader = T.make_loader(T.encode(task, rows, tok, 128), 64, False, tok.pad_token_id)
data = {l: store.load_layer(l) for l in range(6)}


def teacher_preds():
    m, _, _ = build_model(model_dir, task)
    m.eval()
    with torch.no_grad():
        return torch.cat([m(**{k: v for k, v in b.items() if k != "labels"}).logits.float() for b in loader])


def score(dims):
    m, _, _ = build_model(model_dir, task)
    data_init.compress_with_data(m, dims, data, index=train_idx, max_tokens=65536, seed=42)
    m.eval()
    with torch.no_grad():
        p = torch.cat([m(**{k: v for k, v in b.items() if k != "labels"}).logits.float() for b in loader])
    s = evaluate(m, loader, task, "cpu")["score"]
    return {"score": s, "mse_to_teacher": float(((p - tp) ** 2).mean())}


tp = teacher_preds()
res = {"teacher": evaluate(model, loader, task, "cpu")["score"], "runs": []}
nh = 12
old = {l: (d * nh, 768) for l, d in enumerate([24, 28, 20, 8, 8, 8])}
if not sys.argv[4:]:
    res["runs"].append({"name": "attention-only c=2 (committed default)", "c": 2, "dims": old, **score(old)})
    print(res["runs"][-1], flush=True)
for cur in currencies:
    t0 = time.time()
    full = allocation.encoder_macs(teacher.config, 128)
    for c in (2, 3, 4) if cur == "output" else (2, 3, 4, 6):
        if cur == "output" or c == 2:  # output: the sensitivity is measured at the uniform sizes of each c
            a = allocation.allocate(teacher, store, train_idx, val_idx, float(c), "cpu", seed=42, currency_name=cur)
            curves = {int(l): {k: {int(s): e for s, e in cc.items()} for k, cc in cs.items()}
                      for l, cs in a["curves"].items()}
            print(cur, "curves", round(time.time() - t0), "s", a.get("sensitivity"), flush=True)
        options = {(l, k): {s: (allocation.block_macs(teacher.config, k, s, 128), e) for s, e in curves[l][k].items()}
                   for l in curves for k in ("mha", "ffn")}
        pick = allocation.choose(options, int(full // c))
        dims = {l: (pick[(l, "mha")], pick[(l, "ffn")]) for l in curves}
        r = {"name": f"joint {cur} c={c}", "c": c, "dims": dims, **score(dims)}
        res["runs"].append(r)
        print(r, flush=True)
        res.setdefault(f"curves_{cur}", {})[str(c)] = a["curves"]
json.dump(res, open(out, "w"), indent=1)
