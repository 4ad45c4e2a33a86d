"""Does splitting an attention block's rank between the score product (Q/K) and the value path (V/O) help?

Block-level measurement on a capture: for every layer, the held-out relative error of the closed-form start
(data_init.fit_mha + refit_out_lin, the same fit as --init data) at score head dim r_qk and value head dim r_vo
with r_qk + r_vo fixed (the same attention multiply-adds and parameters: q, k, v, out are H x nh*r each, and
the two attention matmuls cost T*nh*(r_qk + r_vo) per token). Our model has one head dim per layer; the
split student here is an experiment only (scaled_dot_product_attention accepts a value head size that differs
from the query/key one).

    python scripts/qk_vo_split.py --activations_dir runs/stsb/act_ft1 --max_tokens 32768
"""
import argparse
import os
import sys
import time

from torch import nn

from modcomp import data_init  # noqa: E402
from modcomp.activations import ActivationStore, select_sequences, subsample  # noqa: E402
from modeling_moddistilbert import MultiHeadSelfAttention  # noqa: E402
from modcomp.modular import holdout_split, load_capture_teacher, relative_error, restrict  # noqa: E402
from modcomp.utils import atomic_write_json, run_main  # noqa: E402


class SplitAttention(MultiHeadSelfAttention):
    """Attention whose query/key heads have size r_qk and value heads size r_vo."""

    def __init__(self, hidden_size, num_heads, r_qk, r_vo):
        super().__init__(hidden_size, num_heads, num_heads * r_qk)
        self.v_lin = nn.Linear(hidden_size, num_heads * r_vo)
        self.out_lin = nn.Linear(num_heads * r_vo, hidden_size)

    def forward(self, x, mask=None):
        B, T, _ = x.shape
        split = lambda t: t.view(B, T, self.num_heads, -1).transpose(1, 2)
        ctx = nn.functional.scaled_dot_product_attention(split(self.q_lin(x)), split(self.k_lin(x)),
                                                         split(self.v_lin(x)), attn_mask=mask)
        return self.out_lin(ctx.transpose(1, 2).reshape(B, T, -1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activations_dir", required=True)
    p.add_argument("--max_tokens", type=int, default=32768, help="training tokens per layer for the fit")
    p.add_argument("--total", type=int, default=None, help="r_qk + r_vo (default: the teacher's head dim, c=2)")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", default=None, help="JSON of the errors")
    args = p.parse_args(argv)
    store = ActivationStore(args.activations_dir)
    teacher, _ = load_capture_teacher(store)
    nh, d = teacher.config.num_attention_heads, teacher.config.attn_dims[0] // teacher.config.num_attention_heads
    total = args.total or d
    splits = [(r, total - r) for r in range(max(1, d // 4), total, max(1, d // 8)) if total - r >= 1]
    lengths, example_ids, _ = store.sequence_info()
    train_idx, val_idx = holdout_split(example_ids, args.holdout, args.seed)
    keep, (fit_idx, val_idx) = restrict(subsample(lengths, train_idx, args.max_tokens), val_idx)
    out, t0 = {"capture": args.activations_dir, "max_tokens": args.max_tokens, "total": total, "layers": {}}, time.time()
    print("layer " + " ".join(f"qk{a}/vo{b}" for a, b in splits))
    for layer in range(teacher.config.num_hidden_layers):
        x, lens = select_sequences(*store.load_layer(layer), keep)
        inputs, targets = data_init.block_io(teacher.layers[layer], "mha", x, lens, "cpu")
        tblock = teacher.layers[layer].attention
        stats = data_init.mha_statistics(tblock, inputs, lens, fit_idx, "cpu")
        errs = {}
        for a, b in splits:
            s = SplitAttention(tblock.q_lin.in_features, nh, a, b)
            data_init.fit_mha(tblock, s, stats)
            data_init.refit_out_lin(s, inputs, targets, lens, fit_idx, "cpu")
            errs[f"{a}/{b}"] = relative_error(s, inputs, targets, lens, val_idx, "cpu")
        out["layers"][str(layer)] = errs
        print(layer, " ".join(f"{e:.4f}" for e in errs.values()), flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    if args.output:
        atomic_write_json(args.output, out)


if __name__ == "__main__":
    run_main(main)
