"""Where the residual stream's energy sits: per layer, before each LayerNorm of MiniLM's STS-B seed-1 teacher,
the share of the energy of x + block(x) in its 3 largest dims, and the LayerNorm's gamma at those dims.

    python results/joint_allocation/currency/outlier_dims.py CAPTURE_DIR > outlier_dims.txt

A seeded subset of 4,096 tokens of the capture (activations.subsample, seed 0). CAPTURE_DIR: what
capture_data.py wrote from the teacher (the pipeline's OUT_DIR/stsb/capture/ft-seed1-...). Needs the package
installed (install.sh: pip install -e .)."""
import sys

import torch

from modcomp import data_init, modular
from modcomp.activations import ActivationStore, select_sequences, subsample

store = ActivationStore(sys.argv[1])
teacher, _ = modular.load_capture_teacher(store)
lengths_all = store.sequence_info()[0]
idx = subsample(lengths_all, torch.arange(len(lengths_all)), 4096, 0)
print("layer | before | top-3 dims | energy share | gamma there | median |gamma|")
for l in range(teacher.config.num_hidden_layers):
    x, lengths = select_sequences(*store.load_layer(l), idx)
    layer = teacher.layers[l]
    ins, outs = data_init.block_io(layer, "mha", x, lengths, "cpu")
    f_in, f_out = data_init.ffn_io(layer, ins, outs)
    for name, r, ln in (("sa_layer_norm", ins + outs, layer.sa_layer_norm),
                        ("output_layer_norm", f_in + f_out, layer.output_layer_norm)):
        e = (r.double() ** 2).mean(0)
        top = e.topk(3)
        g = ln.weight.detach()
        print(f"{l} | {name} | {top.indices.tolist()} | {float(top.values.sum() / e.sum()):.2f} | "
              f"{[round(float(g[i]), 3) for i in top.indices]} | {float(g.abs().median()):.3f}")
