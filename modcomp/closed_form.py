"""The closed-form start (init "data") of every block of every layer in one pass, written as module checkpoints
(the trainers' format) for run_superglue.py --modules_dir.

    python closed_form.py --activations_dir runs/stsb/activations --output_dir runs/stsb/modules --sequential

--sequential fits layer l on the inputs that the already-compressed layers 0..l-1 produce, towards targets
corrected for the error they carry in (data_init.compress_with_data), so the errors do not stack up through
the layers; without it every block is fitted on the teacher's own inputs (isolated: what
mha_modular.py / ffn_modular.py --init data --epochs 0 write, layer by layer in parallel jobs). Both fit on
the training sequences only; report.json gives, per layer, the held-out relative error of the compressed
stack's output against the teacher's (||s - t||^2 / ||t||^2 over real tokens).

--allocation OUTPUT_DIR/allocation.json (what mha_modular.py / ffn_modular.py --allocate wrote for this capture)
fits the blocks at its per-layer sizes instead of the uniform ones: the sequential fit of an allocated budget.
"""
import argparse
import copy
import json
import os
import time

import torch

from modcomp import allocation, config
from modcomp import data_init
from modcomp.activations import flat_positions
from modcomp.compression import checkpoint_path, reduced_dims, save_block
from modcomp.modular import holdout_split, open_capture
from modcomp.utils import HelpFormatter, UserError, atomic_write_json, run_main

# the module-stage fields that are no setting of a closed form (it is always init data; --allocation gives sizes)
MODULE_TRAINING = ("init", "allocate", "currency", "budget_length", "context_rounds", "module_epochs",
                   "module_batch_size", "module_lr", "mixup")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--activations_dir", required=True, help="what capture_data.py wrote")
    p.add_argument("--output_dir", required=True, help="layerNN_{mha,ffn}.safetensors + report.json")
    config.add_stage_arguments(p, "modules", argv, skip=MODULE_TRAINING)
    p.add_argument("--sequential", action="store_true", help="fit each layer on the compressed layers' outputs")
    p.add_argument("--allocation", default=None,
                   help="an allocation.json of the joint allocation (--allocate) made on this capture at this "
                        "--compression: fit its per-layer sizes (default: every layer at head dim / C, width / C)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


@torch.no_grad()
def stack_errors(model, data, index, device):
    """Held-out relative error of each compressed layer's output (the stack run from the layer-0 inputs)
    against the teacher's next-layer input, for every layer but the last (whose output is not captured)."""
    tok = flat_positions(data[0][1], index)
    x, lengths = data[0][0][tok], data[0][1][torch.as_tensor(index).long()]
    errors = {}
    for l in range(len(model.layers) - 1):
        x = data_init.layer_forward(model.layers[l], x, lengths, device)
        t = data[l + 1][0][tok].to(device)
        errors[l] = float(((x - t) ** 2).sum() / (t ** 2).sum().clamp_min(1e-30))
    return errors


def allocated_dims(args, store, teacher_sha, config):
    """({layer: (attention inner size, FFN width)}, the allocation's id or None): --allocation's sizes, checked
    against this capture, teacher and --compression (loud: a budget made for other data is not this one's)."""
    layers = range(config.num_hidden_layers)
    if args.allocation is None:
        return {l: reduced_dims(config, l, args.compression) for l in layers}, None
    try:
        with open(args.allocation) as f:
            found = json.load(f)
        dims = {int(l): tuple(int(v) for v in d) for l, d in found["dims"].items()}
        made = found["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--allocation {args.allocation}: not an allocation.json ({e})") from None
    if found.get("heads"):
        raise UserError(f"--allocation {args.allocation} is a latency budget's (heads per layer): closed_form.py "
                        "fits every head; fit its blocks with mha_modular.py / ffn_modular.py --budget latency")
    checks = {"compression": args.compression, "teacher_sha256": teacher_sha,
              "inputs_sha256": store.manifest["settings"].get("inputs_sha256")}
    bad = [f"{k} {made.get(k)!r} (this run: {v!r})" for k, v in checks.items()
           if made.get(k) is not None and made.get(k) != v]
    if bad or sorted(dims) != list(layers):
        raise UserError(f"--allocation {args.allocation} was made for another run: "
                        + (", ".join(bad) or f"layers {sorted(dims)}, the teacher has {len(layers)}"))
    return dims, allocation.allocation_id(dims)


def main(argv=None):
    args = parse_args(argv)
    device, store, teacher, teacher_sha = open_capture(args)
    config = teacher.config
    if store.num_layers != config.num_hidden_layers:
        raise UserError(f"{args.activations_dir} holds {store.num_layers} layers, the teacher has {config.num_hidden_layers}")
    t0 = time.time()
    data = {l: store.load_layer(l) for l in range(store.num_layers)}
    train_idx, val_idx = holdout_split(store.sequence_info()[1], args.holdout, args.seed)
    dims, allocation_id = allocated_dims(args, store, teacher_sha, config)
    student = data_init.compress_with_data(copy.deepcopy(teacher), dims, data, sequential=args.sequential,
                                           device=device, index=train_idx, max_tokens=args.fit_tokens,
                                           seed=args.seed)
    fit_seconds = round(time.time() - t0, 1)
    os.makedirs(args.output_dir, exist_ok=True)
    settings = json.dumps({"closed_form": True, "sequential": args.sequential, "compression": args.compression,
                           "allocation": allocation_id,
                           "fit_tokens": args.fit_tokens, "holdout": args.holdout, "seed": args.seed,
                           "inputs_sha256": store.manifest["settings"].get("inputs_sha256"),
                           "teacher_sha256": teacher_sha}, sort_keys=True)
    for l, layer in enumerate(student.layers):
        for kind, block in (("mha", layer.attention), ("ffn", layer.ffn)):
            meta = {"block": kind, "layer": l, "hidden_size": config.hidden_size,
                    "inner_size": dims[l][0 if kind == "mha" else 1], "num_heads": config.num_attention_heads,
                    "compression": args.compression, "init": "data", "allocated": allocation_id is not None,
                    "allocation": allocation_id,
                    "sequential": args.sequential, "teacher": store.model, "teacher_sha256": teacher_sha,
                    "task": store.manifest.get("task"), "settings": settings}
            save_block(checkpoint_path(args.output_dir, l, kind), block, meta)
    held = val_idx if len(val_idx) else train_idx
    report = {"teacher": store.model, "task": store.manifest.get("task"),
              "activations_dir": os.path.abspath(args.activations_dir), "settings": vars(args),
              "fit_seconds": fit_seconds,
              "heldout_layer_output_rel_error": {
                  "compressed": stack_errors(student, data, held, device),
                  "teacher_check": stack_errors(teacher, data, held, device)}}
    atomic_write_json(os.path.join(args.output_dir, "report.json"), report)
    errs = " ".join(f"{e:.4f}" for e in report["heldout_layer_output_rel_error"]["compressed"].values())
    print(f"{'sequential' if args.sequential else 'isolated'} closed form in {fit_seconds}s; held-out layer "
          f"output errors {errs} -> {args.output_dir}")


if __name__ == "__main__":
    run_main(main)
