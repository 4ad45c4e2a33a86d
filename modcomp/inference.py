"""Fast CPU inference: INT8 schemes, TorchScript and ONNX Runtime (used by run_speed.py).

PyTorch INT8 (`int8(model, scheme)`, always on a copy whose attention q/k/v projections are fused into one
Linear, so that x is quantized once per layer; weights int8, activations quantized on the fly):
  dynamic              torch.ao quantize_dynamic, one scale per weight tensor
  dynamic_per_channel  the same with one scale per output channel
  smooth               SmoothQuant: each Linear's input channels are divided by s_j and its weight columns
                       multiplied by s_j (the product is unchanged), s_j = max|x_j|^a / max|W_:,j|^(1-a) from
                       calibration batches, so the outlier channels of BERT's residual stream no longer set
                       the activation scale; then per-channel dynamic INT8. The division is one elementwise
                       multiply per Linear (a post-LayerNorm encoder cannot fold it into the LayerNorm: its
                       output also feeds the residual). The strength a is chosen on the calibration batches.
  torchao              torchao's Int8DynamicActivationInt8WeightConfig (per-token activation scales)
`activation_bits`: PyTorch's dynamic Linear quantizes its input to 7 bits (`reduce_range`), which keeps the
int16 pair sums of CPUs without VNNI from saturating; with VNNI (or AMX) the products accumulate in int32, so
8 bits (`activation_bits=8`, label suffix `,x8`) cannot saturate there and halve the activations' rounding step.
`keep_fp32` leaves named Linear layers in fp32; `sensitivity` ranks them by the error each one alone adds.
`Traced` runs a model as TorchScript (trace + freeze): the same numbers without Python's per-op overhead.

ONNX Runtime (the deployment path, export.py): `export_onnx` (eager attention, so that ONNX Runtime's
transformer optimizer fuses it into its Attention kernel), `optimize_onnx` (those fusions; `attention_layers`
says how many Attention nodes a model must get), `quantize_onnx` (ONNX Runtime's dynamic INT8 in one of
ORT_INT8_SCHEMES; `per_channel` is what Hugging Face Optimum's dynamic quantization produces), `OnnxModel`
(a session called like the PyTorch model: worker threads spin during a run, stop when it returns).
`checkpoint_data` loads a fine-tuned checkpoint with its validation and calibration rows; `time_variants`
times models interleaved.
"""
import contextlib
import copy
import logging
import os
import statistics
import time
import warnings

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from modcomp.utils import UserError, cpu_info, model_weights

INT8_SCHEMES = ("dynamic", "dynamic_per_channel", "smooth", "torchao")
SMOOTH_ALPHAS = (0.25, 0.5, 0.75)


def int8_label(scheme, activation_bits=7):
    """"int8" for the default scheme, "int8[scheme]" for the others, ",x8" added with 8-bit activations
    (variant names, accuracy keys): int8_label("dynamic", 8) == "int8[dynamic,x8]"."""
    if activation_bits == 8:
        return f"int8[{scheme},x8]"
    return "int8" if scheme == "dynamic" else f"int8[{scheme}]"


def has_int8_dot_product(info=None):
    """Whether the CPU multiplies int8 into int32 directly (VNNI or AMX): 8-bit activations are safe there."""
    isa = set((info or cpu_info())["isa"])
    return bool(isa & {"avx512_vnni", "avx_vnni", "amx_int8"})


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """torch's dynamic INT8 Linear with 8-bit instead of 7-bit activations (reduce_range off)."""

    def forward(self, x):
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                  reduce_range=False).to(x.dtype)

    def _get_name(self):
        return "FullRangeDynamicQuantizedLinear"


def fused_copy(model):
    """A copy of `model` with each attention block's q/k/v fused into one Linear (same function)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "fuse_qkv") and not hasattr(m, "qkv_lin"):
            m.fuse_qkv()
    return model


def linear_names(model, keep_fp32=()):
    """Qualified names of the Linear layers to quantize: all but those whose name contains a keep_fp32 entry."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and not any(k in n for k in keep_fp32)]


class Smoothed(torch.nn.Module):
    """x -> inner(x * inv_scale): the activation side of SmoothQuant's per-channel migration."""

    def __init__(self, inner, inv_scale):
        super().__init__()
        self.inner = inner
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x):
        return self.inner(x * self.inv_scale)


@torch.inference_mode()
def input_absmax(model, calibration, names):
    """{Linear name: max |input| per input channel} over the calibration batches (real tokens and padding)."""
    mods = dict(model.named_modules())
    stats, hooks = {}, []
    for n in names:
        def hook(mod, args, n=n):
            a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            stats[n] = a if n not in stats else torch.maximum(stats[n], a)
        hooks.append(mods[n].register_forward_pre_hook(hook))
    try:
        for batch in calibration:
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _set_module(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def smooth(model, absmax, alpha):
    """In place: every Linear named in `absmax` becomes Smoothed(Linear with columns * s, 1 / s). Returns the
    names of the inner Linear layers (the ones to quantize)."""
    inner = []
    for n, a in absmax.items():
        lin = model.get_submodule(n)
        w = lin.weight.abs().amax(0).float().clamp_min(1e-8)
        s = (a.clamp_min(1e-8) ** alpha / w ** (1 - alpha)).clamp(1e-4, 1e4)
        lin.weight.mul_(s.to(lin.weight.dtype))
        _set_module(model, n, Smoothed(lin, (1 / s).to(lin.weight.dtype)))
        inner.append(n + ".inner")
    return inner


def int8(model, scheme="dynamic", keep_fp32=(), calibration=None, alpha=None, only=None, activation_bits=7):
    """`scheme` INT8 of a copy of `model` (see the module docstring). `smooth` needs `calibration` (a list of
    model input dicts); `alpha` None: chosen among SMOOTH_ALPHAS by the logits error on those batches.
    `only`: quantize exactly these Linear layers (by qualified name) instead of all but `keep_fp32`.
    `activation_bits` 8: full-range activations (torch.ao schemes only; see the module docstring)."""
    if scheme not in INT8_SCHEMES:
        raise UserError(f"unknown INT8 scheme {scheme!r}; choose from {', '.join(INT8_SCHEMES)}")
    if activation_bits not in (7, 8) or (activation_bits == 8 and scheme == "torchao"):
        raise UserError(f"activation_bits must be 7 or 8 (8 with the torch.ao schemes only), got {activation_bits}")
    if scheme == "smooth" and not calibration:
        raise UserError("INT8 scheme 'smooth' needs calibration batches")
    if scheme == "smooth" and alpha is None:
        alpha = choose_alpha(model, calibration, keep_fp32, only=only, activation_bits=activation_bits)[0]
    model = fused_copy(model)
    names = list(only) if only is not None else linear_names(model, keep_fp32)
    if scheme == "smooth":
        names = smooth(model, input_absmax(model, calibration, names), alpha)
        model.int8_alpha = alpha
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if scheme == "torchao":
            try:
                from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            except ImportError as e:
                raise UserError(f"INT8 scheme torchao needs torchao (pip install torchao): {e}") from e
            quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, n: n in names)
            return model
        qconfig = torch.ao.quantization.default_dynamic_qconfig if scheme == "dynamic" \
            else torch.ao.quantization.per_channel_dynamic_qconfig
        model = torch.ao.quantization.quantize_dynamic(model, {n: qconfig for n in names}, dtype=torch.qint8)
    if activation_bits == 8:
        for m in model.modules():
            if type(m) is torch.ao.nn.quantized.dynamic.Linear:
                m.__class__ = FullRangeDynamicLinear
    return model


@torch.inference_mode()
def logits(model, calibration):
    return torch.cat([model(**b).logits.float().reshape(len(b["input_ids"]), -1) for b in calibration])


def relative_error(out, ref):
    return ((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-12)).item()


def choose_alpha(model, calibration, keep_fp32=(), alphas=SMOOTH_ALPHAS, only=None, activation_bits=7):
    """(best alpha, {alpha: relative logits error}) of the `smooth` scheme on the calibration batches."""
    ref = logits(model, calibration)
    errors = {a: relative_error(logits(int8(model, "smooth", keep_fp32, calibration, a, only, activation_bits),
                                       calibration), ref)
              for a in alphas}
    return min(errors, key=errors.get), errors


def sensitivity(model, calibration, scheme="dynamic_per_channel", alpha=0.5, activation_bits=7):
    """[(Linear name, relative logits error with only that layer in INT8)], most sensitive first."""
    ref = logits(model, calibration)
    errors = {n: relative_error(logits(int8(model, scheme, calibration=calibration, alpha=alpha, only=[n],
                                            activation_bits=activation_bits), calibration), ref)
              for n in linear_names(fused_copy(model))}
    return sorted(errors.items(), key=lambda kv: -kv[1])


class Traced:
    """TorchScript of a model (q/k/v fused, traced on one batch, frozen), called like the model (returns .logits).
    The same numbers as the model; what it saves is the Python overhead of each op (about 1.5 ms of a 13 ms
    INT8 forward at batch 1, DistilBERT shape). Other batch sizes and lengths run through the same graph."""

    def __init__(self, model, example_ids):
        self.with_types = has_segment_ids(model)
        model = model if any(hasattr(m, "qkv_lin") for m in model.modules()) else fused_copy(model)
        example, _ = example_inputs(model, example_ids)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.graph = torch.jit.freeze(torch.jit.trace(_LogitsOnly(model).eval(), example, check_trace=False))
            for _ in range(3):  # the profiling executor optimises the graph over its first runs
                self.graph(*example)
        self.config = model.config

    def __call__(self, input_ids, attention_mask, token_type_ids=None, **unused):
        extra = ((torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids,)
                 if self.with_types else ())
        return SequenceClassifierOutput(logits=self.graph(input_ids, attention_mask, *extra))

    def eval(self):
        return self


def has_segment_ids(model):
    return bool(getattr(model.config, "type_vocab_size", 0))


def example_inputs(model, ids):
    """(inputs, names) for tracing and export: ids, an all-ones mask, and zero segment ids when the model has them."""
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if has_segment_ids(model) else [])
    extra = (torch.zeros_like(ids),) if has_segment_ids(model) else ()
    return (ids, torch.ones_like(ids)) + extra, names


class _LogitsOnly(torch.nn.Module):
    """model(input_ids, attention_mask[, token_type_ids]) -> logits: the signature tracing and export need."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


# ------------------------------------------------------------------ ONNX Runtime
@contextlib.contextmanager
def quiet_logs():
    """No warnings and no log records below ERROR (ONNX Runtime's Python tools log to their own loggers, which
    defer to the root logger) while the block runs."""
    names = ("", "onnxruntime.transformers")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in zip(names, levels):
            logging.getLogger(n).setLevel(level)


def export_onnx(model, path, seq_len=16):
    """torch.onnx.export with dynamic batch and sequence axes; inputs input_ids, attention_mask (and
    token_type_ids when the model has segment embeddings); output logits. The attention is exported in its
    eager form (same numbers as SDPA) so that `optimize_onnx` can fuse it."""
    base = model.base_model
    inputs, names = example_inputs(model, torch.randint(1000, model.config.vocab_size, (2, seq_len)))
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    previous, base.eager_attention = base.eager_attention, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_LogitsOnly(model).eval(), inputs, path, dynamo=False, input_names=names,
                              output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}},
                              opset_version=17)
    finally:
        base.eager_attention = previous
    return path


# ONNX Runtime's SkipLayerNormalization (the residual Add fused into the LayerNorm) is 3x slower than its parts
# (Add + LayerNormalization) on the Xeon (AVX-512, ORT 1.32: ~120 us against ~40 on 128 x 384, profiled), and it is
# in every layer twice: our graph keeps the two apart, in the transformer optimizer's fusions and in the session's
# own graph optimizations (which would fuse them again). The peer gets the same graph; run_speed.py --frontier
# also times it as ONNX Runtime ships it (results/latency_budget).
ORT_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def optimize_onnx(path, out_path, skip_layer_norm=False):
    """ONNX Runtime's transformer optimizer (BERT fusions: Attention, BiasGelu; SkipLayerNormalization only with
    skip_layer_norm, as ONNX Runtime ships it: see ORT_DISABLED_OPTIMIZERS). Returns (out_path, {fused op: count})."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = skip_layer_norm
    with quiet_logs():  # e.g. "input hidden size (384) is not the q,k,v weights' (768)": a compressed block
        m = optimize_model(path, model_type="bert", num_heads=0, hidden_size=0,  # 0: read from the graph
                           optimization_options=options)
    m.save_model_to_file(out_path)
    return out_path, {k: v for k, v in m.get_fused_operator_statistics().items() if v}


# ONNX Runtime dynamic INT8 (onnxruntime.quantization.quantize_dynamic options): int8 weights, uint8 activations
# quantized on the fly per tensor; every MatMul, the fused Attention (QAttention) and the embedding tables
ORT_INT8_SCHEMES = {
    "per_channel": dict(per_channel=True),                      # one weight scale per output channel
    "per_tensor": dict(per_channel=False),                      # one weight scale per tensor
    "reduce_range": dict(per_channel=True, reduce_range=True),  # 7-bit weights: the u8 x s8 pair sums of CPUs
}                                                               # without VNNI cannot saturate int16


def quantize_onnx(path, out_path, scheme="per_channel"):
    """ONNX Runtime dynamic INT8 of an (optimized) ONNX model, in one of ORT_INT8_SCHEMES."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    if scheme not in ORT_INT8_SCHEMES:
        raise UserError(f"unknown ONNX Runtime INT8 scheme {scheme!r}; choose from {', '.join(ORT_INT8_SCHEMES)}")
    with quiet_logs():  # "consider pre-processing": advice for static quantization
        # shape inference does not type the outputs of the fused contrib ops: say they are float
        quantize_dynamic(path, out_path, weight_type=QuantType.QInt8, **ORT_INT8_SCHEMES[scheme],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out_path


def choose_ort_int8(fused_path, calibration, threads, schemes=tuple(ORT_INT8_SCHEMES)):
    """Quantize `fused_path` in each scheme (beside it, name_int8_SCHEME.onnx) and measure each one's relative
    logits error against the fp32 graph on the calibration batches. Returns (best scheme, {scheme: path},
    {scheme: error})."""
    ref = logits(OnnxModel(fused_path, threads), calibration)
    paths, errors = {}, {}
    for s in schemes:
        paths[s] = quantize_onnx(fused_path, fused_path.replace(".onnx", f"_int8_{s}.onnx"), s)
        errors[s] = relative_error(logits(OnnxModel(paths[s], threads), calibration), ref)
    return min(errors, key=errors.get), paths, errors


def onnx_op_counts(path):
    """{operator type: count} of an ONNX file's graph (weights not loaded)."""
    import collections
    import onnx
    return dict(collections.Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node))


def attention_layers(config):
    """How many layers have an attention block (a removed one, attn_dims 0, has none): the number of Attention
    nodes ONNX Runtime's optimizer must fuse (QAttention after INT8)."""
    return sum(1 for d in config.attn_dims if d)


def onnx_models(model, directory, name, threads, schemes=("per_channel",), shipped=False):
    """{"fp32": OnnxModel, "int8": OnnxModel, "int8[scheme]": ...}: `model` exported to directory/name.onnx, fused
    by ONNX Runtime's optimizer (name_fused.onnx), and that graph's dynamic INT8 in each scheme
    (name_fused_int8.onnx for the first, "int8"; name_fused_int8_SCHEME.onnx for the others)."""
    os.makedirs(directory, exist_ok=True)
    path = export_onnx(model, os.path.join(directory, f"{name}.onnx"))
    path, _ = optimize_onnx(path, os.path.join(directory, f"{name}_fused{'_shipped' if shipped else ''}.onnx"),
                            skip_layer_norm=shipped)
    disabled = () if shipped else ORT_DISABLED_OPTIMIZERS   # shipped: ONNX Runtime's graph and session as it ships
    out = {"fp32": OnnxModel(path, threads, disabled_optimizers=disabled)}
    for i, scheme in enumerate(schemes):
        key, suffix = ("int8", "") if i == 0 else (f"int8[{scheme}]", f"_{scheme}")
        out[key] = OnnxModel(quantize_onnx(path, path.replace(".onnx", f"_int8{suffix}.onnx"), scheme), threads,
                             disabled_optimizers=disabled)
    return out


class OnnxModel:
    """An ONNX Runtime session over an exported model, called like the PyTorch one (returns .logits).

    spin (default): the worker threads spin while a run dispatches its operators (no sleep/wake per parallel
    section) and stop spinning as soon as the run returns (`session.force_spinning_stop`), so they do not slow
    whatever runs next on the same cores, e.g. the PyTorch model timed right after in an interleaved loop.
    spin=False: they never spin (`allow_spinning` 0; the setting of the rows measured before).
    threads=None: ONNX Runtime's own defaults, untouched (a thread per physical core, spinning on, not stopped
    after a run): how the peer runs in a process of its own (run_speed.py --peer_process)."""

    SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")

    def __init__(self, path, threads, spin=True, profile_prefix=None, disabled_optimizers=ORT_DISABLED_OPTIMIZERS):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            for k in self.SPIN_KEYS:
                opts.add_session_config_entry(k, "1" if spin else "0")
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        if profile_prefix:  # ONNX Runtime's own profiler: every operator's time, end_profiling() writes the JSON
            opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
        self.path, self.threads, self.spin = path, threads, spin
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=list(disabled_optimizers))
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, input_ids, attention_mask, token_type_ids=None, **unused):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask,
                "token_type_ids": torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids}
        out = self.session.run(["logits"], {k: feed[k].cpu().numpy() for k in self.inputs})[0]
        return SequenceClassifierOutput(logits=torch.from_numpy(out))

    def eval(self):
        return self


class OpenVinoModel:
    """OpenVINO (the PyPI package) over an exported ONNX file, called like the PyTorch model (returns .logits):
    what a user on an Intel CPU would pick instead of ONNX Runtime. Without calibration it runs at OpenVINO's
    default precision on the CPU (bf16 where the CPU has AMX or AVX512-BF16, else fp32); with `calibration`
    (batches of input arrays: the task's training rows) it is first quantized to INT8 by NNCF's post-training
    quantization, as optimum-intel does (nncf.quantize, model_type TRANSFORMER). Give it the plain export
    (export_onnx), not ONNX Runtime's fused graph, whose contrib operators OpenVINO does not read."""

    def __init__(self, path, threads=None, calibration=None):
        import openvino as ov
        core = ov.Core()
        model = core.read_model(path)   # the plain ONNX export, or an OpenVINO IR (.xml) that save_openvino wrote
        self.inputs = [i.get_any_name() for i in model.inputs]
        if calibration is not None:
            model = quantize_openvino(model, calibration)
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads} if threads else {})
        self.path, self.threads, self.int8 = path, threads, calibration is not None
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")                 # bf16 on AMX, else f32
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, **unused):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask,
                "token_type_ids": torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids}
        out = self.compiled({k: feed[k].cpu().numpy() for k in self.inputs})[self.compiled.output(0)]
        return SequenceClassifierOutput(logits=torch.from_numpy(out))

    def eval(self):
        return self


def quantize_openvino(model, calibration):
    """NNCF's post-training INT8 of an OpenVINO model (model_type TRANSFORMER, as optimum-intel does), calibrated
    on `calibration` (batches of input arrays: the task's training rows)."""
    import nncf
    names = {i.get_any_name() for i in model.inputs}
    items = []
    for b in calibration:
        b = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in b.items()}
        if "token_type_ids" in names and "token_type_ids" not in b:   # a tokenizer without them (RoBERTa's)
            b["token_type_ids"] = b["input_ids"] * 0
        items.append({k: v for k, v in b.items() if k in names})
    return nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))


OPENVINO_FILES = {"openvino default": "openvino_model.xml", "openvino int8": "openvino_model_int8.xml"}


def save_openvino(onnx_path, directory, calibration):
    """OpenVINO IR files of a plain ONNX export (export_onnx) into `directory`: openvino_model.xml/.bin (fp32
    weights; the CPU runs it at OpenVINO's default precision, bf16 where it has AMX) and openvino_model_int8.xml/.bin
    (quantize_openvino on `calibration`); the names optimum-intel's OVModel classes look for. {name: xml path}."""
    import openvino as ov
    model = ov.convert_model(onnx_path)
    paths = {n: os.path.join(directory, f) for n, f in OPENVINO_FILES.items()}
    ov.save_model(model, paths["openvino default"], compress_to_fp16=False)
    ov.save_model(quantize_openvino(model, calibration), paths["openvino int8"], compress_to_fp16=False)
    return paths


def has_openvino():
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ checkpoints, timing
def checkpoint_data(checkpoint, task_name, data_dir=None, calibration_rows=128, max_rows=None):
    """(model, task, validation loader, calibration batches from the training split) of a fine-tuned model;
    `max_rows`: the first that many validation rows only."""
    import modeling_moddistilbert  # noqa: F401  (registers our classes with the Auto* loaders)
    from modcomp import tasks as T
    from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, AutoTokenizer
    task = T.get_task(task_name)
    auto = AutoModelForMultipleChoice if task.kind == "multiple_choice" else AutoModelForSequenceClassification
    if os.path.isdir(checkpoint):
        model_weights(checkpoint)  # none, truncated, corrupt or a pickle: one line, not from_pretrained's traceback
    model = auto.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    data_dir = data_dir or T.default_data_dir(task)
    rows = T.load_rows(task, "validation", data_dir, check_count=max_rows is None)[:max_rows]
    loader = T.make_loader(T.encode(task, rows, tok, 128), 64, False, tok.pad_token_id)
    train = T.load_rows(task, "train", data_dir, check_count=False)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:calibration_rows].tolist()
    cal_loader = T.make_loader(T.encode(task, [train[i] for i in pick], tok, 128), 32, False, tok.pad_token_id)
    calibration = []
    for b in cal_loader:
        b.pop("labels")
        calibration.append(dict(b))
    return model, task, loader, calibration


def time_onnx_alone(path, batch_size, seq_len, vocab, repeats, warmup):
    """time_variants of one ONNX model with ONNX Runtime's default session options, meant to run in a process of
    its own (nothing else loaded or timed beside it): (median, p10, p90) in ms."""
    return time_variants({"alone": OnnxModel(path, None, disabled_optimizers=())}, batch_size, seq_len, vocab, repeats,
                         warmup)["alone"]


@torch.inference_mode()
def time_variants(variants, batch_size, seq_len, vocab, repeats, warmup):
    """Median and spread (p10, p90) in ms of one forward, variants interleaved in every repeat. `seq_len` may be
    a list of lengths (a task's validation examples: run_speed.py --real_lengths): every repeat then runs one
    forward per length, and the time is the mean per forward."""
    lens = [seq_len] if isinstance(seq_len, int) else list(seq_len)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(1000, vocab, (batch_size, T), generator=g) for T in lens]
    batches = [(ids, torch.ones_like(ids)) for ids in batches]
    times = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for name, model in variants.items():
            t0 = time.perf_counter()
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3 / len(batches))
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        out[name] = (statistics.median(ts), q[0], q[-1])
    return out
