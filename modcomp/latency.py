"""A latency table of block shapes, measured once per machine and cached: what `--budget latency` spends.

The multiply-add budget does not see what sets the latency of a small encoder on a current CPU: every layer's
LayerNorms, softmax over every head's T x T scores, quantize/dequantize and operator dispatch cost the same
whatever the widths (issue 27). So the latency budget measures, in the runtime the model will be deployed in
(`ort-int8`: ONNX Runtime's fused graph with dynamic INT8, the export path; `openvino`: OpenVINO at its default
precision, bf16 on AMX CPUs), batch 1 at the budget's length, encoders of the teacher's hidden size and depth
(`context_layers`: the teacher's layers, at most CONTEXT_LAYERS) whose layers all have one block shape, at every
shape of the grids, in the spirit of Kwon et al. (2022)'s per-machine latency lookup table:

- attention of k heads x head dim r (k in head_grid, r in measured_dims: the grid's smallest head dim too), the
  FFN removed; FFN widths (measured_widths: the grid's smallest width too), the attention removed; both removed
  (what a layer costs with no block: its two LayerNorms, two residual adds and two constant biases), in the
  L-layer encoder and in a one-layer one (the difference over L - 1: one layer's fixed cost, what removing the
  layer whole saves beyond its blocks).
- A block's cost is its L-layer time less the empty L-layer time, over L; a width or head dim between two
  measured ones is interpolated linearly, one below the smallest measured costs what the smallest does (a block
  of any size runs all of its operators). The encoder's time is then base + L x fixed + the blocks' costs, where
  base (the embeddings, the classifier, the graph's inputs, the call) is the empty one-layer time less one fixed
  cost.
- Why whole encoders, not one layer (version 2): timed alone, a one-layer model hides what a block costs between
  other layers (operators fused with the graph's ends, weights that stay in cache), and a small block's cost is
  the small difference of two one-layer times. Checked on whole models (scripts/check_latency_table.py; OpenVINO,
  bf16, Xeon with AMX, 2 threads, 128 tokens: results/latency_budget/table_check): version 2 predicted them
  10-59% too fast, version 3 within -21..+4%; a small attention block costs 60-90 us here, not the 24 us the
  version 2 table's line to 0 gave 2 heads x 2 dims.

The shapes are timed with random weights (latency does not depend on them), interleaved in every repeat, and the
median kept. The table is a JSON file under the cache directory ($MODCOMP_CACHE, else ~/.cache/modcomp), keyed by
the CPU (model name and ISA flags), runtime, threads, length and the encoder's hidden size and depth,
vocabulary-free (a small vocabulary: the embedding lookup's cost does not depend on the table's size at batch 1).
"""
import hashlib
import json
import os
import tempfile

from modcomp.utils import UserError, atomic_write_json, cpu_info

RUNTIMES = ("ort-int8", "openvino")
VERSION = 3   # 2: ONNX Runtime's graph without SkipLayerNormalization (inference.ORT_DISABLED_OPTIMIZERS);
              # 3: blocks timed in whole encoders (CONTEXT_LAYERS), the grids' smallest sizes measured
CONTEXT_LAYERS = 6   # the depth blocks are timed at (the teacher's layers, at most this many)
VOCAB = 2048   # export_onnx and time_variants draw ids from 1000 up


def head_grid(nh):
    """Head counts a layer may keep: 1, 2, 3, 4, 6, 8 and every one (those up to nh)."""
    return sorted({k for k in (1, 2, 3, 4, 6, 8) if k <= nh} | {nh})


def measured_dims(d):
    """Head dims the table measures (the others are interpolated): 2 (the latency grid's smallest), 4, 8, 16 and
    d, those up to d."""
    return sorted({r for r in (2, 4, 8, 16) if r < d} | {d})


def measured_widths(F, steps=8):
    """FFN widths the table measures: the width grid's smallest (allocation.width_grid), F/steps, 2F/steps, ...,
    F."""
    from modcomp.allocation import width_grid
    return sorted({width_grid(F)[1], *(max(1, F * i // steps) for i in range(1, steps + 1))})


def context_layers(layers):
    """The depth of the encoders a table times its blocks in: the teacher's layers, 2 to CONTEXT_LAYERS."""
    return max(2, min(int(layers), CONTEXT_LAYERS))


def cache_dir():
    return os.environ.get("MODCOMP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modcomp")


def table_key(hidden, heads, head_dim, width, length, runtime, threads, layers, machine=None):
    """What a table depends on: its shapes, depth and length, the runtime and threads, the CPU."""
    machine = machine or cpu_info()
    return {"version": VERSION, "hidden": hidden, "heads": heads, "head_dim": head_dim, "ffn_width": width,
            "context_layers": context_layers(layers), "length": length, "runtime": runtime, "threads": threads,
            "cpu": machine.get("cpu"), "isa": sorted(machine.get("isa") or []), "cores": machine.get("cores")}


def _model(hidden, nh, layers):
    """A random one- (or two-) layer encoder classifier of `hidden` with per-layer (heads, inner, width)."""
    from modeling_moddistilbert import ModDistilBertConfig, ModDistilBertForSequenceClassification
    heads = [k for k, _, _ in layers]
    config = ModDistilBertConfig(vocab_size=VOCAB, type_vocab_size=2, hidden_size=hidden,
                                 num_hidden_layers=len(layers), num_attention_heads=nh,
                                 attn_dims=[a for _, a, _ in layers], ffn_dims=[w for _, _, w in layers],
                                 attn_heads=heads, num_labels=2, head_type="bert")
    return ModDistilBertForSequenceClassification(config).eval()


def _runner(model, runtime, threads, directory, name):
    from modcomp import inference
    raw = inference.export_onnx(model, os.path.join(directory, f"{name}.onnx"))
    if runtime == "openvino":
        return inference.OpenVinoModel(raw, threads)
    fused, _ = inference.optimize_onnx(raw, os.path.join(directory, f"{name}_fused.onnx"))
    return inference.OnnxModel(inference.quantize_onnx(fused, os.path.join(directory, f"{name}_int8.onnx")),
                               threads)


def measure(hidden, nh, head_dim, width, length, runtime, threads, layers, repeats=200, warmup=20, log=print):
    """The table (module docstring): {"fixed_ms", "base_ms", "mha": {"k,r": ms}, "ffn": {"w": ms}, ...}."""
    import torch
    from modcomp import inference
    if runtime not in RUNTIMES:
        raise UserError(f"latency runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    if runtime == "openvino" and not inference.has_openvino():
        raise UserError("the openvino latency table needs the openvino package (pip install openvino nncf)")
    torch.manual_seed(0)
    L = context_layers(layers)
    shapes = {"empty": [(nh, 0, 0)], "emptyL": [(nh, 0, 0)] * L}
    for k in head_grid(nh):
        for r in measured_dims(head_dim):
            shapes[f"mha {k},{r}"] = [(k, k * r, 0)] * L
    for w in measured_widths(width):
        shapes[f"ffn {w}"] = [(nh, 0, w)] * L
    log(f"latency table: {len(shapes)} shapes, each in a {L}-layer encoder, in {runtime}, batch 1 x {length} "
        f"tokens, {threads} threads (once per machine; cached)")
    with tempfile.TemporaryDirectory() as tmp:
        runners = {n: _runner(_model(hidden, nh, layers), runtime, threads, tmp, f"m{i}")
                   for i, (n, layers) in enumerate(shapes.items())}
        t = inference.time_variants(runners, 1, length, VOCAB, repeats, warmup)
    ms = {n: v[0] for n, v in t.items()}
    fixed = (ms["emptyL"] - ms["empty"]) / (L - 1)
    return {"fixed_ms": fixed, "base_ms": ms["empty"] - fixed, "empty_layer_ms": ms["empty"], "context_layers": L,
            "mha": {n[4:]: max(0.0, (v - ms["emptyL"]) / L) for n, v in ms.items() if n.startswith("mha ")},
            "ffn": {n[4:]: max(0.0, (v - ms["emptyL"]) / L) for n, v in ms.items() if n.startswith("ffn ")},
            "spread_ms": {n: [round(v[1], 4), round(v[2], 4)] for n, v in t.items()}, "repeats": repeats}


def table_path(key, directory=None):
    """Where the table of `key` is cached."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(directory or cache_dir(), "latency",
                        f"{key['runtime']}-T{key['length']}-H{key['hidden']}-{digest}.json")


def load_or_measure(hidden, nh, head_dim, width, length, runtime, threads, layers, directory=None, log=print):
    """The cached table of this machine (measured and written on first use). Returns (table, path)."""
    key = table_key(hidden, nh, head_dim, width, length, runtime, threads, layers)
    path = table_path(key, directory)
    if os.path.isfile(path):
        with open(path) as f:
            found = json.load(f)
        if found.get("key") == key:
            log(f"latency table: {path} (measured on this CPU before)")
            return found, path
    table = {"key": key, **measure(hidden, nh, head_dim, width, length, runtime, threads, layers, log=log)}
    atomic_write_json(path, table)
    log(f"latency table -> {path}")
    return json.loads(json.dumps(table)), path


def _interp(points, x, hold=True):
    """Linear interpolation of sorted (x, y) points at x; 0 at 0, the first point's y below it (a block of any
    size runs its operators; hold=False: a line from (0, 0), as tables before version 3 were read); beyond the
    last point, proportional."""
    if x <= 0:
        return 0.0
    if hold and x <= points[0][0]:
        return points[0][1]
    lo = points[0] if hold else (0.0, 0.0)
    for p in (points[1:] if hold else points):
        if x <= p[0]:
            return lo[1] + (p[1] - lo[1]) * (x - lo[0]) / (p[0] - lo[0])
        lo = p
    return lo[1] * x / lo[0]


def block_ms(table, kind, size, heads=None):
    """The table's cost (ms) of an attention block of `heads` x head dim size/heads, or an FFN of width size."""
    if not size:
        return 0.0
    hold = table["key"].get("version", VERSION) >= 3   # a committed older table reads as it was read then
    if kind == "ffn":
        return _interp(sorted((int(w), v) for w, v in table["ffn"].items()), size, hold)
    rows = {}
    for kr, v in table["mha"].items():
        k, r = map(int, kr.split(","))
        rows.setdefault(k, []).append((r, v))
    if heads not in rows:
        raise ValueError(f"the latency table has no row of {heads} heads ({sorted(rows)})")
    return _interp(sorted(rows[heads]), size / heads, hold)


def encoder_ms(table, layers):
    """Predicted encoder + head time (ms) of per-layer (heads, attention inner, FFN width); a layer given as None
    is removed whole (it costs nothing, not even its fixed cost)."""
    kept = [s for s in layers if s is not None]
    return table["base_ms"] + sum(table["fixed_ms"] + block_ms(table, "mha", a, k) + block_ms(table, "ffn", w)
                                  for k, a, w in kept)
