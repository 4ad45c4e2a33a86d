"""CPU inference benchmark: uncompressed vs compressed encoder, fp32 and dynamic INT8, one process, interleaved.

    python run_speed.py --threads 2 --json results/speed.json                 # DistilBERT shape, random weights
    python run_speed.py --model_name_or_path minilm --compression 2           # a real teacher's shape
    python run_speed.py --checkpoint runs/rte/modular/seed1/model --task rte  # + validation accuracy, fp32 vs INT8

Beside every speedup it prints the FLOP bound: the ratio of multiply-adds of the whole model (encoder, the
[CLS] head) uncompressed vs compressed at that sequence length, and the fraction of it reached.
"""
import argparse
import copy
import os
import statistics
import time
import warnings

import torch
from tabulate import tabulate
from transformers import DistilBertConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from compression import compress
from modeling_moddistilbert import ModDistilBertForSequenceClassification, config_from_teacher
from utils import UserError, atomic_write_json, run_main, set_seed


def model_macs(config, seq_len, num_labels=2):
    """Multiply-adds of one sequence through the encoder and the classification head (lookups are free)."""
    H, T, total = config.hidden_size, seq_len, 0
    for a, f in zip(config.attn_dims, config.ffn_dims):
        total += T * (3 * H * a + a * H)   # q, k, v, out projections
        total += 2 * T * T * a             # scores and weighted values
        total += 2 * T * H * f             # FFN
    return total + H * H + H * num_labels  # pre_classifier + classifier on [CLS]


INT8_BACKENDS = ("dynamic", "dynamic_per_channel", "torchao")


def int8(model, backend="dynamic", keep_fp32=()):
    """Dynamic INT8 on every Linear (weights int8, activations quantized on the fly), on a copy.

    keep_fp32: Linear layers whose qualified name contains any of these strings stay fp32 (e.g. "lin2",
    the FFN output projection, whose post-GELU input has the widest range).

    dynamic: torch.ao quantize_dynamic, one scale per weight tensor (the fastest here, with
    dynamic_per_channel); dynamic_per_channel: one scale per output channel, as fast and closer to fp32 on
    every checkpoint measured; torchao: torchao's Int8DynamicActivationInt8WeightConfig (per-token
    activation scales: the most accurate, but slower on this CPU). Numbers: results/RESULTS.md, sections 4-5.
    """
    if backend not in INT8_BACKENDS:
        raise UserError(f"unknown INT8 backend {backend!r}; choose from {', '.join(INT8_BACKENDS)}")
    model = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and not any(k in n for k in keep_fp32)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if backend == "torchao":
            try:
                from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            except ImportError as e:
                raise UserError(f"--int8_backends torchao needs torchao (pip install torchao): {e}") from e
            quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, n: n in names)
            return model
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig if backend == "dynamic_per_channel" \
            else torch.ao.quantization.default_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(model, {n: qconfig for n in names}, dtype=torch.qint8)


def int8_label(backend):
    """"int8" for the default backend, "int8[backend]" for the others (variant names, accuracy keys)."""
    return "int8" if backend == "dynamic" else f"int8[{backend}]"


class OnnxModel:
    """An ONNX Runtime session over an exported model, called like the PyTorch one (returns .logits)."""

    def __init__(self, path, threads):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids, attention_mask):
        out = self.session.run(["logits"], {"input_ids": input_ids.numpy(),
                                            "attention_mask": attention_mask.numpy()})[0]
        return SequenceClassifierOutput(logits=torch.from_numpy(out))


def export_onnx(model, path, seq_len=16):
    """torch.onnx.export with dynamic batch and sequence axes; inputs input_ids, attention_mask; output logits."""
    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.randint(1000, model.config.vocab_size, (2, seq_len))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(model).eval(), (ids, torch.ones_like(ids)), path, dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                        "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}},
                          opset_version=17)
    return path


def build_variants(base, compressions, int8_backends=("dynamic",), onnx_dir=None, keep_fp32=()):
    """{name: model}: fp32 c=1 and each compression, each INT8 backend on all of them, ONNX of all."""
    models = {1.0: base}
    for c in compressions:
        models[float(c)] = compress(copy.deepcopy(base), c, "svd").eval()
    variants = {f"fp32 c={c:g}": m for c, m in models.items()}
    for backend in int8_backends:
        variants.update({f"{int8_label(backend)} c={c:g}": int8(m, backend, keep_fp32) for c, m in models.items()})
    if onnx_dir:
        os.makedirs(onnx_dir, exist_ok=True)
        for c, m in models.items():
            path = export_onnx(m, os.path.join(onnx_dir, f"model_c{c:g}.onnx"))
            variants[f"onnx c={c:g}"] = OnnxModel(path, torch.get_num_threads())
    return variants


def variant_compression(name):
    return float(name.rsplit("c=", 1)[1])


@torch.inference_mode()
def time_variants(variants, batch_size, seq_len, vocab, repeats, warmup):
    """Median and spread (p10, p90) in ms of one forward, variants interleaved in every repeat."""
    ids = torch.randint(1000, vocab, (batch_size, seq_len))
    mask = torch.ones_like(ids)
    times = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for name, model in variants.items():
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        out[name] = (statistics.median(ts), q[0], q[-1])
    return out


def accuracy_rows(checkpoint, task_name, data_dir=None, int8_backends=("dynamic",), keep_fp32=()):
    """Validation score of a fine-tuned checkpoint: {"fp32": ..., "int8": ..., "int8[backend]": ...}."""
    import tasks as T
    from finetune import evaluate
    from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, AutoTokenizer
    task = T.get_task(task_name)
    auto = AutoModelForMultipleChoice if task.kind == "multiple_choice" else AutoModelForSequenceClassification
    model = auto.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    rows = T.load_rows(task, "validation", data_dir or T.default_data_dir(task))
    loader = T.make_loader(T.encode(task, rows, tok, 128), 64, False, tok.pad_token_id)
    dev = torch.device("cpu")
    out = {"fp32": evaluate(model, loader, task, dev)}
    for backend in int8_backends:
        out[int8_label(backend)] = evaluate(int8(model, backend, keep_fp32), loader, task, dev)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default=None, help="teacher whose shape (and weights) to use; "
                   "default: DistilBERT-base shape with random weights")
    p.add_argument("--compression", type=float, nargs="+", default=[2.0],
                   help="one or more compression factors, all timed against c=1 in the same run")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seq_lens", type=int, nargs="+", default=[128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no_int8", action="store_true")
    p.add_argument("--int8_backends", nargs="+", default=["dynamic"], choices=INT8_BACKENDS,
                   help="dynamic (default, quantize_dynamic per tensor), dynamic_per_channel, torchao")
    p.add_argument("--int8_keep_fp32", nargs="+", default=[], metavar="NAME",
                   help="leave Linear layers whose name contains NAME in fp32 (e.g. lin2: the FFN output)")
    p.add_argument("--onnx_dir", default=None, help="also export both models to ONNX here and time ONNX Runtime")
    p.add_argument("--checkpoint", default=None, help="fine-tuned compressed model: also report fp32 vs INT8 "
                   "validation score on --task")
    p.add_argument("--task", default=None)
    p.add_argument("--data_dir", default=None, help="task files for --checkpoint (default: repo data/ or the hub)")
    p.add_argument("--json", default=None, help="write the rows as a JSON list")
    p.add_argument("--accuracy_json", default=None, help="with --checkpoint: write the fp32/INT8 scores here")
    p.add_argument("--accuracy_only", action="store_true", help="with --checkpoint: skip the timing")
    args = p.parse_args(argv)
    if args.checkpoint and not args.task:
        raise UserError("--checkpoint needs --task (the validation set to score it on)")
    if args.accuracy_only and not args.checkpoint:
        raise UserError("--accuracy_only needs --checkpoint")
    if any(c <= 1 for c in args.compression):
        raise UserError(f"--compression values must be > 1 (c=1 is the reference, always timed), "
                        f"got {args.compression}")
    torch.set_num_threads(args.threads)
    if args.accuracy_only:
        return report_accuracy(args)
    set_seed(0)
    if args.model_name_or_path:
        base = ModDistilBertForSequenceClassification.from_teacher(args.model_name_or_path, num_labels=2)
    else:
        base = ModDistilBertForSequenceClassification(config_from_teacher(DistilBertConfig(), num_labels=2))
    base.eval()
    variants = build_variants(base, args.compression, [] if args.no_int8 else args.int8_backends, args.onnx_dir,
                              args.int8_keep_fp32)
    configs = {variant_compression(n): m.config for n, m in variants.items() if n.startswith("fp32")}
    rows = []
    for T_ in args.seq_lens:
        bounds = {c: model_macs(base.config, T_) / model_macs(cfg, T_) for c, cfg in configs.items()}
        for bs in args.batch_sizes:
            res = time_variants(variants, bs, T_, base.config.vocab_size, args.repeats, args.warmup)
            ref = res["fp32 c=1"][0]
            for name, (med, p10, p90) in res.items():
                b = bounds[variant_compression(name)]
                rows.append({"variant": name, "compression": variant_compression(name), "batch_size": bs,
                             "seq_len": T_, "threads": args.threads,
                             "median_ms": round(med, 3), "p10_ms": round(p10, 3), "p90_ms": round(p90, 3),
                             "speedup": round(ref / med, 3), "flop_bound": round(b, 3),
                             "fraction_of_bound": round(ref / med / b, 3) if not name.startswith("int8") else None})
            print(f"bs {bs} x {T_} done", flush=True)
    print(tabulate([[r["variant"], r["batch_size"], r["seq_len"], r["threads"], r["median_ms"],
                     f"{r['p10_ms']}-{r['p90_ms']}", f"{r['speedup']:.2f}x", f"{r['flop_bound']:.2f}x",
                     "" if r["fraction_of_bound"] is None else f"{r['fraction_of_bound']:.2f}"] for r in rows],
                   headers=["variant", "bs", "seq", "threads", "median ms", "p10-p90", "speedup",
                            "FLOP bound", "of bound"], tablefmt="github"))
    if args.json:
        atomic_write_json(args.json, rows)
    if args.checkpoint:
        report_accuracy(args)


def report_accuracy(args):
    acc = accuracy_rows(args.checkpoint, args.task, args.data_dir, args.int8_backends, args.int8_keep_fp32)
    print(f"{args.task} validation score: " + ", ".join(f"{k} {v['score']:.2f}" for k, v in acc.items()))
    if args.accuracy_json:
        atomic_write_json(args.accuracy_json, {"checkpoint": args.checkpoint, "task": args.task,
                                               "int8_keep_fp32": args.int8_keep_fp32, **acc})


if __name__ == "__main__":
    run_main(main)
