"""Modular training: low-rank MHA / FFN blocks trained in isolation to imitate the frozen teacher's blocks.

Shared by mha_modular.py and ffn_modular.py (one training loop); the checkpoints they write are loaded by
run_superglue.py --modules_dir (both through compression.py, where the checkpoint format lives).

Data: capture_data.py stores each layer's input x (real tokens only). Per layer we rebuild, once, with the
frozen teacher: MHA inputs = x, targets = attention(x); FFN inputs = sa_layer_norm(x + attention(x)),
targets = ffn(inputs). Loss: MSE over real tokens only. Held out: a slice of the original examples
(with their augmented copies), on which we report ||student - teacher||^2 / ||teacher||^2.
"""
import argparse
import fcntl
import hashlib
import json
import os
import time

import torch
from tqdm.auto import tqdm

from modcomp import allocation, config
from modcomp import data_init
from modcomp.activations import ActivationStore, by_length, pad_sequences, select_sequences, sequence_offsets, subsample
from modcomp.compression import (block_generator, check_compression, checkpoint_path, checkpoint_settings, init_block,
                         reduced_dims, save_block)
from modeling_moddistilbert import ModDistilBertModel, attention_mask_4d, make_block
from modcomp.utils import (HelpFormatter, UserError, atomic_write_json, get_device, set_seed, state_dict_sha256,
                   written_atomically)


# ------------------------------------------------------------------ data
def holdout_split(example_ids, frac, seed):
    """Sequence indices (train, held-out): whole examples (all choices, all augmented copies) go to one side."""
    examples = torch.unique(example_ids)
    g = torch.Generator().manual_seed(seed)
    n_out = max(1, int(round(frac * len(examples)))) if frac > 0 else 0
    if n_out >= len(examples):
        raise UserError(f"--holdout {frac} leaves no training examples ({len(examples)} examples)")
    out = examples[torch.randperm(len(examples), generator=g)[:n_out]]
    is_out = torch.isin(example_ids, out)
    return (~is_out).nonzero().squeeze(1), is_out.nonzero().squeeze(1)


def masked_sq_error(pred, target, mask):
    """Sum of squared errors over real tokens only (padding excluded), and the target's squared norm there."""
    m = mask.unsqueeze(-1).to(pred.dtype)
    return (((pred - target) * m) ** 2).sum(), ((target * m) ** 2).sum()


# ------------------------------------------------------------------ training
@torch.no_grad()
def relative_error(block, inputs, targets, lengths, index, device, batch=64):
    """||block(x) - teacher(x)||^2 / ||teacher(x)||^2 over the real tokens of the sequences in `index`."""
    was = block.training
    block.eval()
    err = norm = 0.0
    offsets, index = sequence_offsets(lengths), by_length(lengths, index)
    for s in range(0, len(index), batch):
        idx = index[s:s + batch]
        xb, mask = pad_sequences(inputs, lengths, idx, offsets)
        yb, _ = pad_sequences(targets, lengths, idx, offsets)
        xb, yb, mask = xb.to(device), yb.to(device), mask.to(device)
        e, n = masked_sq_error(block(xb, attention_mask_4d(mask)), yb, mask)
        err, norm = err + e.item(), norm + n.item()
    block.train(was)
    return err / max(norm, 1e-30)


def train_block(student, teacher, inputs, targets, lengths, train_idx, val_idx, *, epochs, batch_size,
                lr, mixup, seed, device, desc="block"):
    """Adam on the masked MSE to the teacher's outputs. With mixup, every batch is trained together with its
    average with the batch rolled by one (sequences cut to the shorter of each pair), whose targets the
    frozen teacher recomputes. Returns per-epoch (train_loss, held-out relative error)."""
    student.to(device).train(False)  # dropout off: imitation targets are deterministic
    teacher.to(device).eval()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history, offsets = [], sequence_offsets(lengths)
    for epoch in range(1, epochs + 1):
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        total, count = 0.0, 0
        for s in tqdm(range(0, len(order), batch_size), desc=f"{desc} epoch {epoch}/{epochs}", leave=False):
            idx = order[s:s + batch_size]
            xb, mask = pad_sequences(inputs, lengths, idx, offsets)
            yb, _ = pad_sequences(targets, lengths, idx, offsets)
            xb, yb, mask = xb.to(device), yb.to(device), mask.to(device)
            if mixup and len(idx) > 1:
                xm, mm = (xb + xb.roll(1, 0)) / 2, mask & mask.roll(1, 0)
                with torch.no_grad():
                    ym = teacher(xm, attention_mask_4d(mm))
                xb, yb, mask = torch.cat([xb, xm]), torch.cat([yb, ym]), torch.cat([mask, mm])
            err, _ = masked_sq_error(student(xb, attention_mask_4d(mask)), yb, mask)
            loss = err / (mask.sum() * yb.shape[-1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item(), count + 1
        rel = relative_error(student, inputs, targets, lengths, val_idx, device) if len(val_idx) else None
        history.append({"epoch": epoch, "train_mse": total / max(count, 1), "heldout_rel_error": rel})
    return history


# ------------------------------------------------------------------ the command line both trainers share
def build_parser(kind, doc, argv=None):
    """The parser of mha_modular.py / ffn_modular.py: the recipe's module fields (config.py) and the paths."""
    p = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    p.add_argument("--activations_dir", required=True, help="what capture_data.py wrote")
    p.add_argument("--output_dir", required=True, help="module checkpoints + report.json + loss PNG")
    config.add_stage_arguments(p, "modules", argv)
    p.add_argument("--layers", type=int, nargs="*", default=None, help="default: all")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(kind=kind)
    return p


def block_settings(args, store, teacher_sha, layer, inner, allocation_id=None):
    """What determines a block checkpoint: equal settings on a rerun mean the layer is done (skipped). An
    allocated block also records the allocation that sized it: a block whose size a new allocation left as it
    was is refitted all the same, so that a modules dir never mixes two allocations (load_modules refuses)."""
    keys = ("kind", "compression", "init", "epochs", "batch_size", "lr", "mixup", "holdout", "seed", "fit_tokens",
            "allocate", "budget_length")
    extra = {"currency": args.currency, "allocation": allocation_id} if getattr(args, "allocate", False) else {}
    if getattr(args, "allocate", False) and getattr(args, "budget", "macs") == "latency":
        extra.update(budget="latency", latency_runtime=args.latency_runtime)
    return json.dumps({"layer": layer, "inner_size": inner, **{k: getattr(args, k, None) for k in keys}, **extra,
                       "inputs_sha256": store.manifest["settings"].get("inputs_sha256"),
                       "teacher_sha256": teacher_sha}, sort_keys=True)


def load_capture_teacher(store):
    """(frozen teacher, its weights' sha256) of a capture; refused when the weights changed since the capture
    (an updated hub id, a relative path now pointing elsewhere)."""
    teacher = ModDistilBertModel.from_teacher(store.model).eval()
    teacher_sha = state_dict_sha256(teacher)
    captured = store.manifest["settings"].get("teacher_sha256")
    if captured is not None and captured != teacher_sha:
        raise UserError(f"{store.dir} was captured from other weights than {store.model!r} has now "
                        f"(teacher sha256 {captured[:12]}... vs {teacher_sha[:12]}...): recapture")
    return teacher, teacher_sha


def open_capture(args):
    """What every module-stage command starts with: threads, seed, device, the capture and its checked teacher.
    Returns (device, store, teacher, teacher_sha256)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    store = ActivationStore(args.activations_dir)
    teacher, teacher_sha = load_capture_teacher(store)
    return get_device(args.device), store, teacher, teacher_sha


def train_blocks(args):
    """Train the low-rank `args.kind` block of every chosen layer. Each layer's checkpoint and report entry are
    written as soon as it is done; a rerun skips layers whose checkpoint holds the same settings."""
    kind = args.kind
    if args.epochs < 0:
        raise UserError("--epochs must be >= 0")
    device, store, teacher, teacher_sha = open_capture(args)
    config = teacher.config
    layers = range(config.num_hidden_layers) if args.layers is None else args.layers
    for layer in layers:
        if not 0 <= layer < config.num_hidden_layers:
            raise UserError(f"--layers: {layer} is not a layer of {store.model} (0..{config.num_hidden_layers - 1})")
    seq_lengths, example_ids, _ = store.sequence_info()
    train_idx, val_idx = holdout_split(example_ids, args.holdout, args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    allocation_id, heads, order = None, {}, {}
    if not args.allocate:  # uniform sizes (with --allocate the budget may be beyond what they can reach)
        sizes = {l: reduced_dims(config, l, args.compression)[0 if kind == "mha" else 1] for l in layers}
    else:
        check_compression(args.compression)
        dims, heads, order, removed = joint_allocation(args, store, teacher, teacher_sha, train_idx, val_idx,
                                                       device)
        sizes = {l: dims[l][0 if kind == "mha" else 1] for l in layers}
        allocation_id = allocation.allocation_id(dims, heads or None, removed)
    keep = None
    if args.epochs == 0:  # nothing trained: only the sequences the start is fitted on and the held-out ones are read
        fit_idx = subsample(seq_lengths, train_idx, args.fit_tokens, args.seed) if args.init == "data" \
            else train_idx[:0]
        keep, (train_idx, val_idx) = restrict(fit_idx, val_idx)
    for layer in layers:
        t0 = time.time()
        inner = sizes[layer]
        path = checkpoint_path(args.output_dir, layer, kind)
        settings = block_settings(args, store, teacher_sha, layer, inner, allocation_id)
        if os.path.exists(path) and checkpoint_settings(path) == settings:
            tqdm.write(f"layer {layer} {kind}: {path} holds these settings already, skipped")
            continue
        x, lengths = store.load_layer(layer)
        if keep is not None:
            x, lengths = select_sequences(x, lengths, keep)
        tblock = teacher.layers[layer].attention if kind == "mha" else teacher.layers[layer].ffn
        # the FFN's hidden activations come along for its closed form (one lin1 pass instead of three)
        inputs, targets, hidden = data_init.block_io(teacher.layers[layer], kind, x, lengths, device, hidden=True)
        del x
        held = len(val_idx) > 0  # --holdout 0: nothing held out, no errors to report (None)

        def err(block):
            return relative_error(block.to(device), inputs, targets, lengths, val_idx, device) if held else None

        k = heads.get(layer) if kind == "mha" else None   # a latency budget's heads of this layer
        kept = order[layer][:k] if k is not None and k != config.num_attention_heads else None
        student, fit_info = make_block(config, layer, kind, inner, heads=k or None), None
        if args.init == "data":  # fitted on the training sequences only, never the held-out ones
            fit_info = data_init.fit_block(tblock, student, inputs, targets, lengths, train_idx, device,
                                           max_tokens=args.fit_tokens, seed=args.seed, hidden=hidden,
                                           heads=kept if inner else None)
        else:  # svd, or random from one generator per block (a --layers subset or a resume draws the same)
            init_block(tblock, student, args.init, config.initializer_range,
                       generator=block_generator(args.seed, layer, kind))
        del hidden
        init_err = err(student)
        data_err = init_err if args.init == "data" else None
        svd_err = init_err if args.init == "svd" else None
        # the SVD start stays the reference (a constant has none, nor a block of fewer heads than the teacher's)
        if args.init != "svd" and not student.removed and kept is None:
            svd_block = make_block(config, layer, kind, inner)
            init_block(tblock, svd_block, "svd", config.initializer_range)
            svd_err = err(svd_block)
        t_init = time.time()
        history = train_block(student, tblock, inputs, targets, lengths, train_idx, val_idx,
                              epochs=args.epochs if inner else 0, batch_size=args.batch_size, lr=args.lr,
                              mixup=args.mixup, seed=args.seed + layer, device=device,
                              desc=f"layer {layer} {kind}")
        meta = {"block": kind, "layer": layer, "hidden_size": config.hidden_size, "inner_size": inner,
                "allocated": bool(getattr(args, "allocate", False)), "allocation": allocation_id,
                "num_heads": config.num_attention_heads, "compression": args.compression, "init": args.init,
                **({"block_heads": k, "teacher_heads": json.dumps(kept)} if k is not None else {}),
                "teacher": store.model, "teacher_sha256": teacher_sha, "task": store.manifest.get("task"),
                "settings": settings}
        save_block(path, student, meta)
        entry = {"layer": layer, "block": kind, "inner_size": inner, "svd_init_rel_error": svd_err,
                 "data_init_rel_error": data_err, "init_rel_error": init_err,
                 "trained_rel_error": history[-1]["heldout_rel_error"] if history else init_err,
                 "fit": fit_info, "history": history, "seconds": round(time.time() - t0, 1),
                 "train_seconds": round(time.time() - t_init, 1)}
        write_report(args, store, [entry])
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
        tqdm.write(f"layer {layer} {kind}: held-out rel. error svd-init {fmt(svd_err)}, {args.init} start "
                   f"{fmt(init_err)} -> after {args.epochs} epochs {fmt(entry['trained_rel_error'])} "
                   f"({entry['seconds']}s)")


def restrict(*indices):
    """(the sorted union of the sequence index sets, each set's positions in it): to load only those sequences."""
    keep = torch.unique(torch.cat([torch.as_tensor(i).long() for i in indices]))
    return keep, tuple(torch.searchsorted(keep, torch.as_tensor(i).long()) for i in indices)


def joint_allocation(args, store, teacher, teacher_sha, train_idx, val_idx, device):
    """--allocate: every layer's (attention inner size, FFN width) under one multiply-add budget
    (allocation.py), read from OUTPUT_DIR/allocation.json when it was made with these settings, else measured
    and written there (once, under a lock: the MHA and FFN stages share it). Returns {layer: (attn, ffn)}."""
    if args.init != "data":
        raise UserError("--allocate chooses the block sizes from the closed-form start's errors: --init data")
    latency = getattr(args, "budget", "macs") == "latency"
    settings = {"version": allocation.VERSION, "currency": args.currency,
                **({"budget": "latency", "latency_runtime": args.latency_runtime,
                    "threads": torch.get_num_threads(), "latency_version": allocation.LATENCY_VERSION}
                   if latency else {}),
                **({"context_rounds": args.context_rounds} if getattr(args, "context_rounds", 0) else {}),
                "compression": args.compression, "length": args.budget_length,
                "holdout": args.holdout, "seed": args.seed, "curve_tokens": allocation.CURVE_TOKENS,
                "curve_heldout_tokens": allocation.CURVE_HELDOUT_TOKENS,
                "inputs_sha256": store.manifest["settings"].get("inputs_sha256"), "teacher_sha256": teacher_sha}

    def compute():
        table = None
        if latency:   # this machine's latency table (measured once, cached): what the budget is counted in
            from modcomp import latency as lat
            c = teacher.config
            table, path = lat.load_or_measure(c.hidden_size, c.num_attention_heads,
                                              c.attn_dims[0] // c.num_attention_heads, max(c.ffn_dims),
                                              args.budget_length, args.latency_runtime, torch.get_num_threads(),
                                              c.num_hidden_layers, log=tqdm.write)
        tqdm.write(f"allocating the {'latency' if latency else 'multiply-add'} budget 1/{args.compression:g} over "
                   f"every block (curves fitted on at most {allocation.CURVE_TOKENS} training tokens per layer, "
                   f"measured on at most {allocation.CURVE_HELDOUT_TOKENS} held-out tokens)")
        # the curves do not depend on the compression: measured once for every modules dir beside this one
        shared = {**{k: v for k, v in settings.items() if k not in ("compression", "context_rounds")},
                  "capture": store.manifest["settings"]}   # its dtype too (inputs_sha256 is of the ids)
        digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]
        cache = (os.path.join(os.path.dirname(os.path.abspath(args.output_dir)), f"curves-{digest}.json"), shared)
        out = allocation.allocate(teacher, store, train_idx, val_idx, args.compression, device,
                                  length=args.budget_length, seed=args.seed, currency_name=args.currency,
                                  log=tqdm.write, table=table, rounds=getattr(args, "context_rounds", 0),
                                  curve_cache=cache)
        if table is not None:
            out["latency_table"] = {"path": path, **table}
        return out

    result = allocation.load_or_allocate(os.path.join(args.output_dir, "allocation.json"), settings, compute)
    dims = {int(l): tuple(d) for l, d in result["dims"].items()}
    heads = {int(l): int(k) for l, k in (result.get("heads") or {}).items()}
    order = {int(l): list(o) for l, o in (result.get("head_order") or {}).items()}
    removed = [int(l) for l in result.get("removed_layers") or []]
    b = result["budget"]
    got = b["achieved_compression"]   # none when every block is removed (inf, written as null)
    tqdm.write(f"allocation (attention inner size, FFN width) per layer: {dims}; "
               f"{b['used_macs']:,} of {b['uncompressed_macs']:,} multiply-adds at {b['length']} tokens "
               f"(c = {'inf: every block removed' if got in (None, float('inf')) else f'{got:.3f}'}, "
               f"budget 1/{args.compression:g})"
               + (f"; heads per layer {heads}; predicted latency {b['latency']['predicted_ms']:.3f} of "
                  f"{b['latency']['uncompressed_ms']:.3f} ms ({b['latency']['predicted_ratio']:.2f}x)" if heads else "")
               + (f"; layers removed whole {removed}" if removed else ""))
    return dims, heads, order, removed


def write_report(args, store, entries):
    """Merge into OUTPUT_DIR/report.json (both trainers may share one dir) and draw loss_<kind>.png (when
    blocks were trained: drawing one costs about as much as a closed-form FFN fit).
    The merge holds a POSIX lock on a sidecar file (report.json.lock): fcntl.lockf works over NFS/Lustre,
    unlike flock on a directory."""
    path = os.path.join(args.output_dir, "report.json")
    with open(path + ".lock", "a") as lock:  # mha and ffn jobs may finish at once
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            report = merge_report(path, args, store, entries)
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
    mine = [e for e in report["layers"] if e["block"] == args.kind]
    if any(e["history"] for e in mine):  # nothing trained (--epochs 0, the default recipe): no curves to draw
        plot_curves(os.path.join(args.output_dir, f"loss_{args.kind}.png"), args.kind, mine)


def merge_report(path, args, store, entries):
    report = {"layers": []}
    if os.path.exists(path):
        with open(path) as f:
            report = json.load(f)
    keep = [e for e in report["layers"] if (e["layer"], e["block"]) not in {(n["layer"], n["block"]) for n in entries}]
    report.update({"teacher": store.model, "task": store.manifest.get("task"),
                   "activations_dir": os.path.abspath(args.activations_dir)})
    report.setdefault("settings", {})[args.kind] = {k: v for k, v in vars(args).items()}
    report["layers"] = sorted(keep + entries, key=lambda e: (e["layer"], e["block"]))
    atomic_write_json(path, report)
    return report


def plot_curves(path, kind, entries):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in entries:
        errs = [float("nan") if h["heldout_rel_error"] is None else h["heldout_rel_error"] for h in e["history"]]
        line, = ax.plot(range(1, len(errs) + 1), errs, marker="o", ms=3, label=f"layer {e['layer']}")
        if e["svd_init_rel_error"] is not None:
            ax.axhline(e["svd_init_rel_error"], color=line.get_color(), ls="--", lw=0.8)
    ax.set(xlabel="epoch", ylabel="held-out ||s - t||² / ||t||²", yscale="log",
           title=f"{kind.upper()} blocks: trained (solid) vs SVD init (dashed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with written_atomically(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
