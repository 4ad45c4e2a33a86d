"""Score of a fine-tuned teacher compressed by the closed-form start, before any fine-tuning: isolated vs
sequential fitting, uniform vs allocated head dims (same total attention FLOPs). A cheap, direct measure of
how much of the task a compressed model keeps; used to decide which of these to build into the pipeline.

    python scripts/closed_form_probe.py --teacher runs/ft/stsb/baseline/seed1/model --task stsb \
        --activations_dir runs/stsb/act_ft1 --data_dir ../shared/data --json results/closed_form/probe_stsb.json
"""
import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data_init  # noqa: E402
import tasks as T  # noqa: E402
from activations import ActivationStore  # noqa: E402
from finetune import build_model, evaluate  # noqa: E402
from compression import reduced_dims  # noqa: E402
from modular import holdout_split  # noqa: E402
from utils import atomic_write_json, run_main  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--activations_dir", required=True, help="captured from --teacher")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--compression", type=float, default=2.0)
    p.add_argument("--head_dims", type=int, nargs="+", default=[8, 12, 16, 20, 24, 28, 32])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", required=True)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    task = T.get_task(a.task)
    teacher, tok, _ = build_model(a.teacher, task)
    teacher.eval()
    rows = T.load_rows(task, "validation", a.data_dir or T.default_data_dir(task))
    loader = T.make_loader(T.encode(task, rows, tok, 128), 64, False, tok.pad_token_id)
    store = ActivationStore(a.activations_dir)
    data = {l: store.load_layer(l) for l in range(store.num_layers)}
    config = teacher.config
    out = {"teacher": a.teacher, "task": a.task, "activations_dir": a.activations_dir,
           "compression": a.compression, "teacher_score": evaluate(teacher, loader, task, "cpu")["score"]}
    print(f"teacher {out['teacher_score']:.2f}")
    uniform = {l: reduced_dims(config, l, a.compression) for l in range(config.num_hidden_layers)}
    # allocation: per-layer attention error curves on a 10% held-out split of the captured sequences
    t0 = time.time()
    train_idx, val_idx = holdout_split(store.sequence_info()[1], 0.1, 1)
    curves = {}
    for l in range(config.num_hidden_layers):
        x, lengths = data[l]
        ins, tgt = data_init.block_io(teacher.base_model.layers[l], "mha", x, lengths, "cpu")
        curves[l] = data_init.attention_error_curve(teacher.base_model.layers[l].attention, ins, tgt, lengths,
                                                    train_idx, val_idx, a.head_dims, "cpu")
        print(f"layer {l}: " + " ".join(f"r{r}={e:.4f}" for r, e in curves[l].items()), flush=True)
    nh = config.num_attention_heads
    total = sum(uniform[l][0] // nh for l in uniform)
    alloc = data_init.allocate(curves, total)
    out.update(curves={str(l): {str(r): e for r, e in c.items()} for l, c in curves.items()},
               allocated_head_dims=alloc, curve_seconds=round(time.time() - t0, 1))
    allocated = {l: (alloc[l] * nh, uniform[l][1]) for l in uniform}
    print(f"allocated head dims {alloc} (uniform {uniform[0][0] // nh})")
    out["variants"] = {}
    for name, dims, seq in (("isolated uniform", uniform, False), ("sequential uniform", uniform, True),
                            ("isolated allocated", allocated, False), ("sequential allocated", allocated, True)):
        t0 = time.time()
        m = data_init.compress_with_data(copy.deepcopy(teacher), dims, data, sequential=seq)
        score = evaluate(m, loader, task, "cpu")
        out["variants"][name] = {"score": score["score"], "metrics": score, "seconds": round(time.time() - t0, 1),
                                 "attn_dims": [dims[l][0] for l in sorted(dims)]}
        print(f"{name}: {score['score']:.2f} ({time.time() - t0:.0f}s)", flush=True)
        atomic_write_json(a.json, out)


if __name__ == "__main__":
    run_main(main)
