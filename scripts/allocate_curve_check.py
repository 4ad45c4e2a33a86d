"""The head dims `mha_modular.py --allocate` would choose from error curves fitted on a token subsample of a
capture, to compare with the allocation the committed runs made with all tokens (their report.json). The same
calls as modular.allocate_attention (holdout 10%, holdout seed 1, head dims d/4 .. d in steps of d/8).

    python scripts/allocate_curve_check.py --activations_dir runs/stsb/act_ft1 --max_tokens 32768
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data_init  # noqa: E402
from activations import ActivationStore, subsample  # noqa: E402
from compression import reduced_dims  # noqa: E402
from modular import holdout_split, load_capture_teacher  # noqa: E402
from utils import run_main  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activations_dir", required=True)
    p.add_argument("--max_tokens", type=int, default=32768)
    p.add_argument("--compression", type=float, default=2.0)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    store = ActivationStore(args.activations_dir)
    teacher, _ = load_capture_teacher(store)
    config, nh = teacher.config, teacher.config.num_attention_heads
    d = config.attn_dims[0] // nh
    head_dims = list(range(max(1, d // 4), d + 1, max(1, d // 8)))
    train_idx, val_idx = holdout_split(store.sequence_info()[1], args.holdout, args.seed)
    curves, t0 = {}, time.time()
    for layer in range(config.num_hidden_layers):
        x, lengths = store.load_layer(layer)
        inputs, targets = data_init.block_io(teacher.layers[layer], "mha", x, lengths, "cpu")
        idx = subsample(lengths, train_idx, args.max_tokens)
        curves[layer] = data_init.attention_error_curve(teacher.layers[layer].attention, inputs, targets, lengths,
                                                        idx, val_idx, head_dims, "cpu")
        print(layer, int(torch.as_tensor(lengths)[idx].sum()),
              " ".join(f"{r}:{e:.4f}" for r, e in curves[layer].items()), flush=True)
    total = sum(reduced_dims(config, l, args.compression)[0] // nh for l in curves)
    print("alloc", data_init.allocate(curves, total), round(time.time() - t0, 1), "s")


if __name__ == "__main__":
    run_main(main)
