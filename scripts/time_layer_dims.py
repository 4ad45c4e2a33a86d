"""CPU time of per-layer attention sizes (mha_modular.py --allocate) against uniform compression, interleaved.

    python scripts/time_layer_dims.py --head_dims 24 28 20 8 8 8 --threads 2 --json results/closed_form/speed_alloc.json

MiniLM shape (real weights), batch x 128 tokens, fp32: c=1, uniform c=2, and the given head dims per layer
(FFN at c=2 in both), with their multiply-adds (run_speed.model_macs): the same FLOPs can run at another speed
when some heads get thin.
"""
import argparse
import copy
import os
import sys

import torch

from modcomp.compression import compress  # noqa: E402
from modeling_moddistilbert import ModDistilBertForSequenceClassification, make_block  # noqa: E402
from modcomp.speed import model_macs, time_variants  # noqa: E402
from modcomp.utils import atomic_write_json, run_main  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default="minilm")
    p.add_argument("--head_dims", type=int, nargs="+", required=True, help="one per layer")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base = ModDistilBertForSequenceClassification.from_teacher(a.model_name_or_path, num_labels=2).eval()
    uniform = compress(copy.deepcopy(base), 2.0, "svd").eval()
    alloc = copy.deepcopy(uniform)
    nh = alloc.config.num_attention_heads
    for l, r in enumerate(a.head_dims):
        alloc.moddistilbert.layers[l].attention = make_block(alloc.config, l, "mha", r * nh).eval()
        alloc.config.attn_dims[l] = r * nh
    variants = {"fp32 c=1": base, "fp32 c=2 uniform": uniform, f"fp32 c=2 head dims {a.head_dims}": alloc}
    out = {"threads": a.threads, "seq_len": 128, "rows": []}
    for bs in a.batch_sizes:
        t = time_variants(variants, bs, 128, base.config.vocab_size, a.repeats, a.warmup)
        ref = t["fp32 c=1"][0]
        for name, (med, p10, p90) in t.items():
            macs = model_macs(variants[name].config, 128)
            row = {"variant": name, "batch_size": bs, "median_ms": round(med, 3), "p10_ms": round(p10, 3),
                   "p90_ms": round(p90, 3), "speedup": round(ref / med, 3), "macs_per_seq": macs}
            out["rows"].append(row)
            print(f"bs {bs} {name}: {med:.2f} ms (p10-p90 {p10:.2f}-{p90:.2f}), {ref / med:.2f}x, {macs / 1e6:.0f}M MACs")
    if a.json:
        atomic_write_json(a.json, out)


if __name__ == "__main__":
    run_main(main)
