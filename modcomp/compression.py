"""Compression: the low-rank blocks that replace a teacher's MHA and FFN, their starts, and their checkpoints.

compress(model, c, init) replaces the blocks of a ModDistilBERT model in place (the model classes are in
modeling_moddistilbert.py); init "svd" and "random" need only the weights, init "data" the captured layer
inputs (data_init.py). The module checkpoint format (one safetensors file per layer and block, written by the
trainers, loaded by run_superglue.py --modules_dir) lives here too, so every place that builds a compressed
model finds it beside compress().
"""
import glob
import hashlib
import json
import math
import numbers
import os
import re

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from modcomp.data_init import compress_with_data, top_r
from modeling_moddistilbert import MultiHeadSelfAttention, RemovedLayer, make_block
from modcomp.utils import UserError, check_safetensors, written_atomically


# ---------------------------------------------------------------------------------------------
# Low-rank MHA (same heads, head_dim / c) and FFN (width / c), and their starts.
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
def check_compression(compression):
    if isinstance(compression, bool) or not isinstance(compression, numbers.Real) or not math.isfinite(compression) \
            or compression < 1:
        raise UserError(f"compression must be a finite number >= 1, got {compression}")


def reduced_dims(config, layer, compression):
    """(attention inner size, FFN width) of `layer` after dividing head_dim and FFN width by `compression`."""
    check_compression(compression)
    heads = config.num_attention_heads
    head_dim, width = config.attn_dims[layer] // heads, config.ffn_dims[layer]
    new_head_dim, new_width = round(head_dim / compression), round(width / compression)
    if new_head_dim < 1 or new_width < 1:  # a block of size 0 is not "compressed by c": refuse, never clamp
        raise UserError(f"compression {compression:g} is too large for layer {layer} (head dim {head_dim}, FFN "
                        f"width {width}): a dimension would round to 0; it must be below {2 * min(head_dim, width)}")
    return heads * new_head_dim, new_width


@torch.no_grad()
def svd_init_mha(teacher, student):
    """Per head, the truncated SVD of the two products through which a head acts.

    Scores: q_i.k_j = [x_i,1] [Wq|bq]^T [Wk|bk] [x_j,1]^T. Terms constant in j (those with bk) do not change
    the softmax, so bk is dropped exactly and [Wq|bq]^T [Wk|0] (rank head_dim) is truncated to the new head_dim r;
    the sqrt(r/d) factor keeps the 1/sqrt(head_dim) temperature. Values: sum_h Wo_h (Wv_h x + bv_h) + bo; the
    value bias only adds the constant Wo bv (attention rows sum to 1), folded into bo exactly; Wo_h Wv_h is
    truncated to rank r. At full rank the block is exact (up to float error).
    Computed on the teacher's device; the result is copied into the student wherever it lives."""
    H, nh, d, r = teacher.q_lin.in_features, teacher.num_heads, teacher.head_dim, student.head_dim
    dev = teacher.q_lin.weight.device
    new = {k: torch.zeros(p.shape, dtype=torch.float64, device=dev) for k, p in student.state_dict().items()}
    for h in range(nh):
        t, s = slice(h * d, (h + 1) * d), slice(h * r, (h + 1) * r)
        a = torch.cat([teacher.q_lin.weight[t], teacher.q_lin.bias[t, None]], 1)
        b = torch.cat([teacher.k_lin.weight[t], teacher.k_lin.weight.new_zeros(d, 1)], 1)
        L, R, _ = top_r(a, b, r)
        L = L * math.sqrt(r / d)
        new["q_lin.weight"][s], new["q_lin.bias"][s] = L[:H].T, L[H]
        new["k_lin.weight"][s] = R[:H].T
        Lo, Rv, _ = top_r(teacher.out_lin.weight[:, t].T, teacher.v_lin.weight[t], r)
        new["out_lin.weight"][:, s], new["v_lin.weight"][s] = Lo, Rv.T
    new["out_lin.bias"] = (teacher.out_lin.bias + teacher.out_lin.weight @ teacher.v_lin.bias).double()
    w = student.q_lin.weight
    student.load_state_dict({k: v.to(device=w.device, dtype=w.dtype) for k, v in new.items()})


@torch.no_grad()
def svd_init_ffn(teacher, student):
    """The FFN is not a product of two linear maps (GELU sits between), so its rank-reduced start keeps the
    `width` hidden units with the largest ||w_in_i|| * ||w_out_i|| (their weights and biases), in order.
    Selected on the teacher's device; copied into the student wherever it lives."""
    score = teacher.lin1.weight.norm(dim=1) * teacher.lin2.weight.norm(dim=0)
    keep = score.topk(student.lin1.out_features).indices.sort().values  # on the teacher's device
    student.lin1.weight.copy_(teacher.lin1.weight[keep])
    student.lin1.bias.copy_(teacher.lin1.bias[keep])
    student.lin2.weight.copy_(teacher.lin2.weight[:, keep])
    student.lin2.bias.copy_(teacher.lin2.bias)


def block_generator(seed, layer, kind):
    """The generator of one block's random start, seeded from (seed, layer, kind) alone: a block gets the same
    start whichever other layers are built, skipped by a resumed run or left out by --layers."""
    digest = hashlib.sha256(f"{int(seed)}/{int(layer)}/{kind}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))


@torch.no_grad()
def init_block(teacher, student, init, std=0.02, generator=None):
    """Initialise `student` from `teacher` ("svd") or as the paper does ("random": normal(0, std), zero bias).
    "random" draws on the CPU from `generator` (block_generator(seed, layer, kind); None: the global RNG) and
    copies to the block's device, so a block's start depends on its seed only, not on the device or on the
    blocks drawn before it. The activation-aware start ("data") needs the layer's inputs: data_init.fit_block,
    or compress(..., data=)."""
    if student.removed and init in ("svd", "random"):
        return  # a removed block is a constant (zero here); its fitted value comes with the modules
    if init == "svd":
        (svd_init_mha if isinstance(student, MultiHeadSelfAttention) else svd_init_ffn)(teacher, student)
    elif init == "random":
        for m in student.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.empty(m.weight.shape).normal_(0.0, std, generator=generator))
                if m.bias is not None:
                    m.bias.zero_()
    elif init == "data":
        raise UserError("init 'data' is fitted on captured inputs: use compress(..., init='data', data=...) "
                        "or mha_modular.py / ffn_modular.py --init data")
    else:
        raise UserError(f"init must be 'svd', 'random' or 'data', not {init!r}")


def compress(model, compression=2.0, init="svd", layers=None, data=None, device=None, seed=None, dims=None,
             heads=None, removed_layers=None):
    """Replace the MHA and FFN of the chosen layers (all by default) with low-rank blocks, in place.

    MHA keeps its heads and divides head_dim by `compression`; FFN width is divided by `compression`.
    init "data" (data_init.py) needs `data`: {layer: (x [tokens, H], lengths [sequences])}, the layer's inputs
    as captured from the teacher (activations.ActivationStore.load_layer); every token is used for the fit, on
    `device` (default: the model's own; the model stays there, each block in its own mode).
    init "random" draws each block from block_generator(seed, layer, kind); seed None: torch.initial_seed(),
    the seed the global RNG was last seeded with (utils.set_seed), without drawing from it.
    dims: {layer: (attention inner size, FFN width)} instead of the uniform sizes (an allocated modules dir's,
    module_dims: the budget `compression` may then be beyond what uniform sizes can reach). heads: {layer: number
    of attention heads} of a latency budget's modules dir (module_heads); a block with fewer heads than the
    teacher's gets no SVD start (its module replaces it). removed_layers: the layers a latency budget removes
    whole (module_removed_layers; their dims must be (0, 0)): each becomes the identity (RemovedLayer)."""
    base = model.base_model
    config = base.config
    if config.compression:
        raise UserError(f"the model is already compressed (compression {config.compression}); "
                        "compress the uncompressed teacher instead")
    layers = range(config.num_hidden_layers) if layers is None else layers
    if dims is not None:
        check_compression(compression)
        dims = {i: tuple(dims[i]) for i in layers}
    else:
        dims = {i: reduced_dims(config, i, compression) for i in layers}  # every size checked before any change
    removed = sorted(set(removed_layers or ()))
    bad = [i for i in removed if i not in dims or tuple(dims[i]) != (0, 0)]
    if bad:
        raise UserError(f"layers {bad} are removed whole but their sizes are not given as (0, 0)")
    if init == "data":
        missing = [i for i in layers if data is None or i not in data]
        if missing:
            raise UserError(f"init 'data' needs the inputs of layers {missing} (data={{layer: (x, lengths)}})")
        compress_with_data(model, {i: d for i, d in dims.items() if i not in removed}, data, device=device)
    if heads:
        config.attn_heads = [heads.get(i, config.heads(i)) for i in range(config.num_hidden_layers)]
        if model.config is not config:
            model.config.attn_heads = config.attn_heads
    seed = torch.initial_seed() if seed is None else seed
    for i in removed:
        base.layers[i] = RemovedLayer()
        config.attn_dims[i], config.ffn_dims[i] = 0, 0
    if removed:
        config.removed_layers = removed
    for i in layers if init != "data" else []:
        if i in removed:
            continue
        layer = base.layers[i]
        attn_dim, ffn_dim = dims[i]
        for kind, dim in (("mha", attn_dim), ("ffn", ffn_dim)):
            old = layer.attention if kind == "mha" else layer.ffn
            new = make_block(config, i, kind, dim).to(next(old.parameters())).train(old.training)
            gen = block_generator(seed, i, kind) if init == "random" else None
            if getattr(new, "num_heads", None) in (None, getattr(old, "num_heads", None)) or new.removed:
                init_block(old, new, init, config.initializer_range, generator=gen)
            setattr(layer, "attention" if kind == "mha" else "ffn", new)
        config.attn_dims[i], config.ffn_dims[i] = attn_dim, ffn_dim
    config.compression, config.init = compression, init
    if model.config is not config:
        model.config.attn_dims, model.config.ffn_dims = config.attn_dims, config.ffn_dims
        model.config.compression, model.config.init = compression, init
        model.config.removed_layers = config.removed_layers
    return model


# ---------------------------------------------------------------------------------------------
# Module checkpoints: one block per file, safetensors + string metadata (no pickles).
# ---------------------------------------------------------------------------------------------
CKPT_FORMAT = "modular-block/1"
KINDS = ("mha", "ffn")


def checkpoint_path(out_dir, layer, kind):
    return os.path.join(out_dir, f"layer{layer:02d}_{kind}.safetensors")


def save_block(path, block, meta):
    """One block: its state dict as safetensors, with string metadata (no pickles). Written then renamed."""
    with written_atomically(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in block.state_dict().items()}, tmp,
                  metadata={"format": CKPT_FORMAT, **{k: str(v) for k, v in meta.items()}})


def load_modules(model, modules_dir, teacher_sha256=None, allow_partial=False, task=None):
    """Load the layerNN_{mha,ffn}.safetensors of `modules_dir` into the (compressed) model; returns
    (loaded names, missing (layer, block) pairs). Every layer x {mha, ffn} must be there unless allow_partial
    (a partial dir would leave the other blocks at their SVD start under a "modular" label). Each checkpoint's
    metadata must fit the model (layer, block, hidden size, heads, the model's --compression: an allocated dir
    is a budget, so modules of another one are refused), name the same teacher weights when `teacher_sha256` is
    given and the same task when `task` is."""
    files = sorted(glob.glob(os.path.join(modules_dir, "layer*_*.safetensors")))
    if not files:
        raise UserError(f"no module checkpoints (layerNN_mha/ffn.safetensors) in {modules_dir}")
    base = model.base_model
    config = base.config
    loaded, found, allocations = [], set(), {}
    for path in files:
        m = re.fullmatch(r"layer(\d+)_(mha|ffn)\.safetensors", os.path.basename(path))
        if not m:
            raise UserError(f"{path}: not a module checkpoint name (expected layerNN_mha or layerNN_ffn.safetensors)")
        layer, kind = int(m.group(1)), m.group(2)
        if layer >= len(base.layers):
            raise UserError(f"{path}: layer {layer} but the model has {len(base.layers)} layers")
        check_safetensors(path)  # truncated (a killed stage, a full disk) or corrupt: one line, not a traceback
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()} if meta.get("format") == CKPT_FORMAT else None
        except Exception as e:  # noqa: BLE001  (safetensors' own error type: a bad dtype, overlapping tensors)
            raise UserError(f"{path}: cannot be read as safetensors ({(str(e).splitlines() or [''])[0]}): "
                            "write it again") from e
        if state is None:
            raise UserError(f"{path}: not a {CKPT_FORMAT} checkpoint")
        expect = {"layer": str(layer), "block": kind, "hidden_size": str(config.hidden_size),
                  "num_heads": str(config.num_attention_heads)}
        bad = {k: (meta.get(k), v) for k, v in expect.items() if k in meta and meta[k] != v}
        if bad:
            raise UserError(f"{path}: metadata does not fit the model: "
                            + ", ".join(f"{k} {got} (model: {want})" for k, (got, want) in bad.items()))
        if teacher_sha256 and meta.get("teacher_sha256") not in (None, teacher_sha256):
            raise UserError(f"{path}: trained against another teacher ({meta.get('teacher')!r}, weights sha256 "
                            f"{meta['teacher_sha256'][:12]}...) than the model's (sha256 {teacher_sha256[:12]}...)")
        if config.compression and "compression" in meta and float(meta["compression"]) != float(config.compression):
            raise UserError(f"{path}: made for --compression {meta['compression']}, but this run says "
                            f"{config.compression:g}")
        if task is not None and meta.get("task") not in (None, "None", task):
            raise UserError(f"{path}: fitted on {meta['task']} data, but this run is {task}")
        if meta.get("allocated") == "True" and meta.get("allocation") not in (None, "None"):
            allocations.setdefault(meta["allocation"], path)
            if len(allocations) > 1:
                raise UserError(f"{path} and {next(iter(allocations.values()))} come from two different "
                                "allocations (a stage rerun with other settings into the same dir): rerun both")
        inner = int(meta.get("inner_size", -1))
        if isinstance(base.layers[layer], RemovedLayer):   # removed whole: its (size 0) block is not used
            if inner != 0:
                raise UserError(f"{path}: layer {layer} is removed whole in the model, but this {kind} block has "
                                f"size {inner}")
            found.add((layer, kind))
            continue
        block = base.layers[layer].attention if kind == "mha" else base.layers[layer].ffn
        dims = config.attn_dims if kind == "mha" else config.ffn_dims
        heads = int(meta["block_heads"]) if kind == "mha" and meta.get("block_heads", "None") != "None" else None
        new_heads = heads is not None and heads != config.heads(layer)
        if meta.get("allocated") == "True" and inner >= 0 and (inner != dims[layer] or new_heads):
            # a per-layer size chosen by --allocate (0: the block removed; a latency budget: its heads too): this
            # layer's block takes it
            if new_heads:
                config.attn_heads = list(config.attn_heads or [config.num_attention_heads] * len(base.layers))
                config.attn_heads[layer] = heads
            dims[layer] = inner
            block = make_block(config, layer, kind, inner).to(next(base.parameters())).train(block.training)
            setattr(base.layers[layer], "attention" if kind == "mha" else "ffn", block)
            if model.config is not config:
                model.config.attn_dims, model.config.ffn_dims = config.attn_dims, config.ffn_dims
                model.config.attn_heads = config.attn_heads
        own = block.state_dict()
        for k, v in own.items():
            got = state.get(k)
            if got is None or got.shape != v.shape:
                shape = "missing" if got is None else tuple(got.shape)
                raise UserError(f"{path}: layer {layer} {kind} {k} has shape {shape} in the module but "
                                f"{tuple(v.shape)} in the model (check --compression)")
        extra = sorted(set(state) - set(own))
        if extra:
            raise UserError(f"{path}: layer {layer} {kind} has tensors the model's block lacks: {extra}")
        block.load_state_dict(state)
        loaded.append(os.path.basename(path))
        found.add((layer, kind))
    missing = [(l, k) for l in range(len(base.layers)) for k in ("mha", "ffn") if (l, k) not in found]
    if missing and not allow_partial:
        names = ", ".join(os.path.basename(checkpoint_path("", l, k)) for l, k in missing)
        raise UserError(f"{modules_dir} lacks {names}: those blocks would stay at their start under a 'modular' "
                        "label (--allow_partial_modules to use it anyway; the variant then says so)")
    return loaded, missing


def module_dims(modules_dir, num_layers):
    """{layer: (attention inner size, FFN width)} of an allocated modules dir: every block's size from its
    checkpoint's metadata, or for a block not (yet) in the dir from the dir's allocation.json; None when the
    blocks have uniform sizes (or not every size is known: load_modules then says what is missing)."""
    dims = {}
    alloc = os.path.join(modules_dir, "allocation.json")
    if os.path.exists(alloc):
        with open(alloc) as f:
            dims = {(int(l), k): int(v) for l, d in json.load(f).get("dims", {}).items() for k, v in zip(KINDS, d)}
    allocated = False
    for path in sorted(glob.glob(os.path.join(modules_dir, "layer*_*.safetensors"))):
        m = re.fullmatch(r"layer(\d+)_(mha|ffn)\.safetensors", os.path.basename(path))
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
        except Exception:
            continue  # load_modules says what is wrong with it
        if m and meta.get("allocated") == "True" and meta.get("inner_size", "").isdigit():
            dims[(int(m.group(1)), m.group(2))], allocated = int(meta["inner_size"]), True
    if not allocated or any((l, k) not in dims for l in range(num_layers) for k in KINDS):
        return None
    return {l: tuple(dims[(l, k)] for k in KINDS) for l in range(num_layers)}


def _allocation_field(modules_dir, key):
    """A field of a modules dir's allocation.json (None when there is no file or no such field)."""
    alloc = os.path.join(modules_dir, "allocation.json")
    if not os.path.exists(alloc):
        return None
    with open(alloc) as f:
        return json.load(f).get(key)


def module_heads(modules_dir):
    """{layer: number of attention heads} of a latency budget's modules dir (its allocation.json), else None."""
    heads = _allocation_field(modules_dir, "heads")
    return {int(l): int(k) for l, k in heads.items()} if heads else None


def module_removed_layers(modules_dir):
    """The layers a latency budget's modules dir removes whole (its allocation.json's removed_layers), else None."""
    removed = _allocation_field(modules_dir, "removed_layers")
    return sorted(int(l) for l in removed) if removed else None


def checkpoint_settings(path):
    """The settings recorded in a block checkpoint (None if absent or unreadable)."""
    try:
        with safe_open(path, "pt") as f:
            return (f.metadata() or {}).get("settings")
    except Exception:
        return None
