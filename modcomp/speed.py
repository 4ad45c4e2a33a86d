"""CPU inference benchmark: uncompressed vs compressed encoder, fp32 and INT8, PyTorch and ONNX Runtime, in one
process, variants interleaved in every repeat.

    python run_speed.py --threads 2 --json results/speed.json                 # DistilBERT shape, random weights
    python run_speed.py --model_name_or_path minilm --compression 2           # a real teacher's shape
    python run_speed.py --onnx_dir runs/onnx --torchscript --compile          # + ONNX Runtime, TorchScript, compile
    python run_speed.py --checkpoint runs/ft/stsb/x/seed1/model --task stsb --accuracy_only \\
        --int8_backends dynamic_per_channel smooth --onnx_dir runs/onnx       # validation score, fp32 vs each INT8

Beside every speedup it prints the FLOP bound: the ratio of multiply-adds of the whole model (encoder, the
[CLS] head) uncompressed vs compressed at that sequence length, and the fraction of it reached. With
--onnx_dir, `ort-int8 c=1` is the peer row (what a user would pick instead: the uncompressed model with ONNX
Runtime's fused graph and dynamic INT8) and every row also gets its speedup over it. The INT8 schemes (PyTorch
and ONNX Runtime) are in inference.py. The JSON records the CPU model and its ISA flags: INT8 speed depends on
VNNI/AMX. --profile also profiles the ONNX Runtime rows by operator (ONNX Runtime's own profiler).
"""
import argparse
import collections
import copy
import glob
import json
import os
import sys
import tempfile

import numpy as np
import torch
from tabulate import tabulate
from transformers import AutoTokenizer, DistilBertConfig

from modcomp import frontier as F
from modcomp import tasks as T

from modcomp.allocation import encoder_macs
from modcomp.compression import compress
from modeling_moddistilbert import ModDistilBertForSequenceClassification, config_from_teacher, resolve_model_path
from modcomp.inference import (INT8_SCHEMES, ORT_INT8_SCHEMES, OnnxModel, Traced, checkpoint_data, choose_alpha,
                       OpenVinoModel, has_int8_dot_product, has_openvino, int8, int8_label, onnx_models,
                       sensitivity, time_onnx_alone,
                       time_variants)
from modcomp.utils import UserError, atomic_write_json, cpu_info, cpu_line, run_main, set_seed

PEER = "ort-int8 c=1"
PEER_ALONE = "ort-int8[own process] c=1"
PEER_SHIPPED = "ort-int8[as shipped] c=1"   # --frontier: ONNX Runtime's graph and session as it ships them
OV_PEER, OV_INT8_PEER = "openvino c=1", "openvino-int8 c=1"   # --frontier's OpenVINO peers (default precision, NNCF)  # --peer_process: the same file, ONNX Runtime's defaults, a fresh process
# the default INT8: per-channel weights, 8-bit activations where the CPU has VNNI/AMX (7-bit elsewhere); with
# TorchScript it meets both INT8 targets here (results/RESULTS.md §4-5)
DEFAULT_SCHEMES = ["dynamic_per_channel"]


def model_macs(config, seq_len, num_labels=2):
    """Multiply-adds of one sequence through the encoder (allocation.encoder_macs: what --compression budgets)
    and the classification head on [CLS] (pre_classifier + classifier; lookups are free)."""
    H = config.hidden_size
    return encoder_macs(config, seq_len) + H * H + H * num_labels


def random_batches(vocab, n=2, batch_size=8, seq_len=128, seed=0):
    """Calibration input for timing-only runs (random weights): random token ids, no padding."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1000, vocab, (batch_size, seq_len), generator=g) for _ in range(n)]
    return [{"input_ids": i, "attention_mask": torch.ones_like(i)} for i in ids]


def build_variants(base, compressions, int8_backends=tuple(DEFAULT_SCHEMES), onnx_dir=None, keep_fp32=(),
                   calibration=None, compile_=False, torchscript=False, activation_bits=(7,),
                   ort_schemes=("per_channel",), ort_no_spin=False, saved=None):
    """{name: model}: fp32 c=1 and each compression; each INT8 scheme of all of them; with onnx_dir, ONNX
    Runtime fused fp32 (`ort`) and dynamic INT8 (`ort-int8` in the first of ort_schemes, `ort-int8[scheme]` in
    the others) of all, and with ort_no_spin the same two sessions with threads that never spin (`[no-spin]`);
    with torchscript / compile_, TorchScript (`ts ...`) / torch.compile (`compiled ...`) of the compressed
    PyTorch models. `saved` ({c: model}): fine-tuned checkpoints at their own per-layer sizes, timed beside the
    uniform ones (c: their multiply-add ratio, saved_compression)."""
    models = {"c=1": base}
    for c in compressions:
        models[f"c={c:g}"] = compress(copy.deepcopy(base), c, "svd").eval()
    models.update({f"c={c:g} ckpt": m for c, m in (saved or {}).items()})
    variants = {f"fp32 {c}": m for c, m in models.items()}
    for scheme in int8_backends:
        for bits in activation_bits:
            variants.update({f"{int8_label(scheme, bits)} {c}":
                             int8(m, scheme, keep_fp32, calibration, activation_bits=bits) for c, m in models.items()})
    if onnx_dir:
        for c, m in models.items():
            ort = onnx_models(m, onnx_dir, "model_" + c.replace("=", "").replace(" ", "_"), torch.get_num_threads(),
                              ort_schemes)
            variants.update({(f"ort-{k}" if k != "fp32" else "ort") + f" {c}": v for k, v in ort.items()})
            if ort_no_spin:
                variants.update({f"ort{'' if k == 'fp32' else '-int8'}[no-spin] {c}":
                                 OnnxModel(ort[k].path, ort[k].threads, spin=False) for k in ("fp32", "int8")})
    compressed = [n for n in variants if not n.startswith("ort") and not n.endswith("c=1")]
    if torchscript:
        example = torch.randint(1000, base.config.vocab_size, (1, 128))
        variants.update({f"ts {n}": Traced(variants[n], example) for n in compressed})
    if compile_:
        variants.update({f"compiled {n}": torch.compile(variants[n]) for n in compressed})
    return variants


def variant_compression(name):
    return float(model_key(name)[2:].split()[0])


def model_key(name):
    """The model a variant runs: 'c=2' (uniform, SVD start) or 'c=3.01 ckpt' (a --models checkpoint)."""
    return "c=" + name.rsplit("c=", 1)[1]


def is_int8(name):
    return "int8" in name


@torch.inference_mode()
def profile_ops(model, vocab, seq_len=128, repeats=10, rows=20):
    """Where one forward's time goes, by operator (batch 1): [{op, calls, self_ms per forward, share}]."""
    ids = torch.randint(1000, vocab, (1, seq_len))
    mask = torch.ones_like(ids)
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            model(input_ids=ids, attention_mask=mask)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "calls": e.count // repeats, "self_ms": round(e.self_cpu_time_total / repeats / 1e3, 3),
             "share": round(e.self_cpu_time_total / total, 4)} for e in events[:rows]]


def profile_onnx(model, vocab, seq_len=128, repeats=10, rows=20):
    """profile_ops for an OnnxModel, from ONNX Runtime's own profiler (a fresh session over the same file and
    session options): [{op (operator type after ONNX Runtime's graph optimizations), calls, self_ms, share}];
    "(between operators)" is the rest of each run (dispatch, thread wake-ups, input/output copies)."""
    ids = torch.randint(1000, vocab, (1, seq_len))
    mask = torch.ones_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        m = OnnxModel(model.path, model.threads, model.spin, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(3 + repeats):
            m(input_ids=ids, attention_mask=mask)
        m.session.end_profiling()
        with open(glob.glob(os.path.join(tmp, "ort*.json"))[0]) as f:
            events = json.load(f)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                  key=lambda e: e["ts"])[3:]  # after the warm-up runs
    start = runs[0]["ts"]
    us, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            us[e["args"]["op_name"]] += e["dur"]
            calls[e["args"]["op_name"]] += 1
    us["(between operators)"] = max(0, sum(e["dur"] for e in runs) - sum(us.values()))
    total = sum(us.values())
    return [{"op": op, "calls": calls[op] // len(runs), "self_ms": round(t / len(runs) / 1e3, 3),
             "share": round(t / total, 4)} for op, t in us.most_common(rows)]


def saved_compression(base_config, model):
    """A saved checkpoint's compression as run_speed names it: the encoder+head multiply-adds ratio to the base's
    at 128 tokens, to 2 decimals (an allocated c=3 model: about 3.0)."""
    return round(model_macs(base_config, 128) / model_macs(model.config, 128), 2)


def real_lengths(task_name, tokenizer, data_dir=None, n=200, seed=0):
    """Token counts of the sequences of a seeded sample of `n` validation examples of the task (truncated at 128):
    what batch-1 inference on that task's inputs runs at. A multiple-choice example is one sequence per choice
    (each choice is its own forward: all of them are counted, not only the first)."""
    task = T.get_task(task_name)
    rows = T.load_rows(task, "validation", data_dir or T.default_data_dir(task))
    enc = T.encode(task, rows, tokenizer, 128)["input_ids"]
    per_example = [[len(c) for c in e] if task.num_choices else [len(e)] for e in enc]
    idx = torch.randperm(len(per_example), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [t for i in idx for t in per_example[i]]


def speed_rows(args, variants, base_config, lengths=None):
    """Rows of every (sequence length, batch size); `lengths` ({label: [token counts]}) adds rows timed over those
    real lengths (batch 1 only), their FLOP bound averaged over them."""
    configs = {model_key(n): m.config for n, m in variants.items() if n.startswith("fp32")}
    rows = []
    shapes = [(T_, bs, T_) for T_ in args.seq_lens for bs in args.batch_sizes]
    shapes += [(label, 1, lens) for label, lens in (lengths or {}).items()]
    for T_, bs, lens in shapes:
        macs = lambda cfg: sum(model_macs(cfg, t) for t in ([lens] if isinstance(lens, int) else lens))
        bounds = {c: macs(base_config) / macs(cfg) for c, cfg in configs.items()}
        res = time_variants(variants, bs, lens, base_config.vocab_size, args.repeats, args.warmup)
        if args.peer_process:
            res[PEER_ALONE] = peer_alone(variants[PEER].path, bs, lens, base_config.vocab_size, args.repeats,
                                         args.warmup)
        ref = res["fp32 c=1"][0]
        peer_name = min((n for n in (PEER, PEER_ALONE) if n in res), key=lambda n: res[n][0], default=None)
        peer = res[peer_name][0] if peer_name else None  # the faster of the peer's two timings
        for name, (med, p10, p90) in res.items():
            b = bounds[model_key(name)]
            rows.append({"variant": name, "compression": variant_compression(name),
                         "checkpoint": model_key(name).endswith(" ckpt"), "batch_size": bs,
                         "seq_len": T_ if isinstance(lens, int) else f"{T_} ({len(lens)} sequences, mean "
                                                                     f"{sum(lens) / len(lens):.1f} tokens)",
                         "threads": args.threads,
                         "median_ms": round(med, 3), "p10_ms": round(p10, 3), "p90_ms": round(p90, 3),
                         "speedup": round(ref / med, 3), "flop_bound": round(b, 3),
                         "fraction_of_bound": None if is_int8(name) else round(ref / med / b, 3),
                         "vs_peer": None if peer is None else round(peer / med, 3), "peer": peer_name})
        print(f"bs {bs} x {T_} done", flush=True)
    return rows


def peer_alone(path, batch_size, lengths, vocab, repeats, warmup):
    """The peer's ONNX file timed in a fresh process (spawned: no PyTorch model loaded or timed beside it) with
    ONNX Runtime's default threading: its best chance (inference.time_onnx_alone)."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(time_onnx_alone, (path, batch_size, lengths, vocab, repeats, warmup))


def print_rows(rows, machine):
    print(f"CPU: {cpu_line(machine)}")
    peer = any(r["vs_peer"] is not None for r in rows)
    print(tabulate([[r["variant"], r["batch_size"], r["seq_len"], r["threads"], r["median_ms"],
                     f"{r['p10_ms']}-{r['p90_ms']}", f"{r['speedup']:.2f}x", f"{r['flop_bound']:.2f}x",
                     "" if r["fraction_of_bound"] is None else f"{r['fraction_of_bound']:.2f}"]
                    + ([f"{r['vs_peer']:.2f}x"] if peer else []) for r in rows],
                   headers=["variant", "bs", "seq", "threads", "median ms", "p10-p90", "speedup",
                            "FLOP bound", "of bound"] + (["vs peer"] if peer else []), tablefmt="github"))


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
    p.add_argument("--int8_backends", nargs="+", default=DEFAULT_SCHEMES, choices=INT8_SCHEMES,
                   help=f"PyTorch INT8 schemes (inference.py; default {' '.join(DEFAULT_SCHEMES)}): dynamic "
                   "(one scale per weight tensor), dynamic_per_channel, smooth (SmoothQuant + per channel), "
                   "torchao (per-token activation scales)")
    p.add_argument("--int8_activation_bits", type=int, nargs="+", default=None, choices=[7, 8],
                   help="7 (torch's own, reduce_range) and/or 8 (full range, label suffix ',x8': cannot saturate "
                   "only on CPUs with VNNI or AMX); default 8 on such CPUs, else 7")
    p.add_argument("--int8_keep_fp32", nargs="+", default=[], metavar="NAME",
                   help="leave Linear layers whose name contains NAME in fp32 (e.g. lin2: the FFN output)")
    p.add_argument("--onnx_dir", default=None, help="also export to ONNX here: ONNX Runtime fused fp32 (ort) and "
                   "dynamic INT8 (ort-int8) rows, ort-int8 c=1 being the peer row")
    p.add_argument("--ort_int8_schemes", nargs="+", default=["per_channel"], choices=list(ORT_INT8_SCHEMES),
                   help="with --onnx_dir: ONNX Runtime INT8 schemes (inference.ORT_INT8_SCHEMES); the first gives the "
                   "ort-int8 rows (the peer row at c=1), the others ort-int8[SCHEME] rows")
    p.add_argument("--ort_no_spin", action="store_true", help="with --onnx_dir: also time the fp32 and first INT8 "
                   "ONNX Runtime sessions with worker threads that never spin (rows 'ort[no-spin] ...', "
                   "'ort-int8[no-spin] ...': the session setting before; the plain rows spin during a run only)")
    p.add_argument("--peer_process", action="store_true", help="with --onnx_dir: also time the peer's INT8 file "
                   f"in a process of its own with ONNX Runtime's default threading (row '{PEER_ALONE}'); every "
                   "row's 'vs peer' is then against the faster of the two peer rows (its 'peer' field says which)")
    p.add_argument("--torchscript", action="store_true", help="also time TorchScript (q/k/v fused, traced, "
                   "frozen) of the compressed models: rows 'ts ...'")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (inductor) of the compressed "
                   "models: rows 'compiled ...'. Time it in a run of its own: after a compiled model has run, the "
                   "other variants of the same process run up to 25%% slower (measured, results/RESULTS.md §4)")
    p.add_argument("--profile", default=None, metavar="JSON", help="write a by-operator profile of one batch-1 "
                   "forward of fp32 c=1, each compressed variant and the ONNX Runtime INT8 rows (the peer included) here")
    p.add_argument("--checkpoint", default=None, help="fine-tuned compressed model: also report fp32 vs INT8 "
                   "validation score on --task")
    p.add_argument("--task", default=None)
    p.add_argument("--data_dir", default=None, help="task files for --checkpoint (default: repo data/ or the hub)")
    p.add_argument("--int8_fp32_most_sensitive", type=int, default=0, metavar="K",
                   help="with --checkpoint: also score each scheme with the K Linear layers whose INT8 alone "
                   "moves the logits most (on training rows) kept in fp32")
    p.add_argument("--models", nargs="+", default=[], metavar="DIR",
                   help="fine-tuned compressed checkpoints (e.g. --allocate's non-uniform sizes): each is timed "
                        "at its own per-layer sizes beside the others, named by its multiply-add ratio to the "
                        "base at 128 tokens (c=3.01 ...); the base (--model_name_or_path) must be their teacher's "
                        "shape")
    p.add_argument("--real_lengths", nargs="+", default=[], metavar="TASK",
                   help="also time batch 1 over a seeded sample of --real_examples validation examples of each "
                        "TASK, each sequence at its own length (truncated at 128; a multiple-choice example is one sequence "
                        "per choice), interleaved: mean ms per sequence")
    p.add_argument("--real_examples", type=int, default=200)
    p.add_argument("--frontier", default=None, metavar="FILE",
                   help="re-time every point of a frontier.json (scripts/make_frontier.py; modcomp/frontier.py): "
                        "each point's shapes (random weights), ONNX Runtime INT8 as export.py writes it, beside the "
                        "peers (PyTorch fp32, ONNX Runtime fp32 and INT8 of the uncompressed model, the INT8 one "
                        "also in a process of its own), at batch 1 x --seq_lens[0] and at each task's real lengths; "
                        "--json gets {machine, command, peers, points}")
    p.add_argument("--ov_calibration", type=int, default=128, metavar="N",
                   help="--frontier: training rows of the first point's task that calibrate the OpenVINO INT8 peer")
    p.add_argument("--json", default=None, help="write {machine, command, rows} here")
    p.add_argument("--accuracy_json", default=None, help="with --checkpoint: write the fp32/INT8 scores here")
    p.add_argument("--accuracy_only", action="store_true", help="with --checkpoint: skip the timing")
    args = p.parse_args(argv)
    if args.checkpoint and not args.task:
        raise UserError("--checkpoint needs --task (the validation set to score it on)")
    if args.peer_process and not args.onnx_dir:
        raise UserError("--peer_process times the peer's ONNX file: it needs --onnx_dir")
    if args.accuracy_only and not args.checkpoint:
        raise UserError("--accuracy_only needs --checkpoint")
    if args.models and not args.model_name_or_path:
        raise UserError("--models needs --model_name_or_path: their teacher, timed as c=1")
    if any(c <= 1 for c in args.compression):
        raise UserError(f"--compression values must be > 1 (c=1 is the reference, always timed), "
                        f"got {args.compression}")
    torch.set_num_threads(args.threads)
    machine = cpu_info()
    if args.int8_activation_bits is None:
        args.int8_activation_bits = [8] if has_int8_dot_product(machine) else [7]
    elif 8 in args.int8_activation_bits and not has_int8_dot_product(machine):
        print(f"warning: 8-bit activations on a CPU without VNNI/AMX ({cpu_line(machine)}): the int16 pair sums "
              "can saturate, so the INT8 rows may lose accuracy here", file=sys.stderr)
    if args.accuracy_only:
        return report_accuracy(args, machine)
    set_seed(0)
    if args.frontier:
        return time_frontier(args, machine, argv)
    if args.model_name_or_path:
        base = ModDistilBertForSequenceClassification.from_teacher(args.model_name_or_path, num_labels=2)
    else:
        base = ModDistilBertForSequenceClassification(config_from_teacher(DistilBertConfig(), num_labels=2))
    base.eval()
    schemes = [] if args.no_int8 else args.int8_backends
    calibration = random_batches(base.config.vocab_size) if "smooth" in schemes else None
    saved = {}
    for d in args.models:
        m = ModDistilBertForSequenceClassification.from_pretrained(d).eval()
        if (m.config.hidden_size, m.config.num_hidden_layers) != (base.config.hidden_size, base.config.num_hidden_layers):
            raise UserError(f"--models {d}: hidden size / layers differ from the base model's (--model_name_or_path)")
        c = saved_compression(base.config, m)
        if c in saved:
            raise UserError(f"--models: {d} and another checkpoint both run at c={c:g}: time them in separate runs")
        saved[c] = m
        print(f"{d}: c={saved_compression(base.config, m):g} (attn_dims {m.config.attn_dims}, "
              f"ffn_dims {m.config.ffn_dims})")
    variants = build_variants(base, args.compression, schemes, args.onnx_dir, args.int8_keep_fp32, calibration,
                              args.compile, args.torchscript, args.int8_activation_bits, args.ort_int8_schemes,
                              args.ort_no_spin, saved)
    lengths = {}
    if args.real_lengths:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(args.model_name_or_path or "minilm"))
        lengths = {t: real_lengths(t, tok, args.data_dir, args.real_examples) for t in args.real_lengths}
    rows = speed_rows(args, variants, base.config, lengths)
    print_rows(rows, machine)
    if args.json:
        command = ["python", "run_speed.py"] + (sys.argv[1:] if argv is None else list(argv))
        atomic_write_json(args.json, {"machine": machine, "command": command, "rows": rows})
    if args.profile:
        prof = {name: (profile_onnx if name.startswith("ort") else profile_ops)(m, base.config.vocab_size,
                                                                                args.seq_lens[0])
                for name, m in variants.items() if not name.startswith("compiled")
                and (name == "fp32 c=1" or name.startswith("ort-int8") or not name.endswith("c=1"))}
        atomic_write_json(args.profile, {"machine": machine, "seq_len": args.seq_lens[0], "batch_size": 1,
                                         "threads": args.threads, "profiles": prof})
        for name, ops in prof.items():
            print(f"\nprofile, {name} (bs 1 x {args.seq_lens[0]}, ms per forward):")
            print(tabulate([[o["op"], o["calls"], o["self_ms"], f"{100 * o['share']:.1f}%"] for o in ops[:12]],
                           headers=["op", "calls", "self ms", "share"], tablefmt="github"))
    if args.checkpoint:
        report_accuracy(args, machine)


def time_frontier(args, machine, argv=None):
    """run_speed.py --frontier: every committed point's shapes, timed in ONNX Runtime INT8 and in OpenVINO (its
    default precision) beside the peers; each runtime in a block of its own (their thread pools disturb each
    other), its variants interleaved in every repeat. A point's headline figures are in its own runtime (the one
    its budget was measured in; ONNX Runtime INT8 for a multiply-add budget)."""
    data = F.read(args.frontier)
    base = ModDistilBertForSequenceClassification.from_teacher(data.get("model") or "minilm", num_labels=2).eval()
    n_layers = base.config.num_hidden_layers
    ov = has_openvino()
    if not ov:
        print("warning: openvino and nncf are not installed: no OpenVINO peers or rows (pip install openvino nncf)",
              file=sys.stderr)
        if any(p.get("runtime") == "openvino" for p in data["points"]):
            raise UserError("--frontier: its latency points were budgeted in OpenVINO: install openvino and nncf")
    models = {}
    for p in data["points"]:
        a = p["allocation"]
        if len(a["attn_dims"]) != n_layers:
            raise UserError(f"--frontier: {p['task']} {p['budget']} has {len(a['attn_dims'])} layers, the model "
                            f"{data.get('model')!r} {n_layers}")
        dims = {l: (a["attn_dims"][l], a["ffn_dims"][l]) for l in range(n_layers)}
        heads = {l: k for l, k in enumerate(a["attn_heads"])} if a.get("attn_heads") else None
        models[f"{p['task']} {p['budget']}"] = compress(copy.deepcopy(base), p["compression"], "svd", dims=dims,
                                                        heads=heads, removed_layers=a.get("removed_layers")).eval()
    onnx_dir = args.onnx_dir or tempfile.mkdtemp(prefix="frontier-onnx-")
    ort = onnx_models(base, onnx_dir, "model_c1", args.threads)
    shipped = onnx_models(base, onnx_dir, "model_c1", args.threads, shipped=True)   # as ONNX Runtime ships it
    blocks = {"ort-int8": {"fp32 c=1": base, "ort c=1": ort["fp32"], PEER: ort["int8"],
                           PEER_SHIPPED: shipped["int8"]}, "openvino": {}}
    own = {"ort-int8": PEER, "openvino": OV_PEER}   # the uncompressed model in the same runtime
    tok = AutoTokenizer.from_pretrained(resolve_model_path(data.get("model") or "minilm"))
    if ov:   # OpenVINO at its default precision (bf16 on AMX) and NNCF INT8 on the task's training rows
        task = data["points"][0]["task"]
        rows = T.load_rows(T.get_task(task), "train", args.data_dir or T.default_data_dir(T.get_task(task)),
                           check_count=False)
        pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:args.ov_calibration].tolist()
        enc = T.encode(T.get_task(task), [rows[i] for i in pick], tok, 128)
        cal = [{k: np.asarray([enc[k][i]], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")
                if k in enc} for i in range(len(pick))]
        raw = os.path.join(onnx_dir, "model_c1.onnx")
        blocks["openvino"].update({OV_PEER: OpenVinoModel(raw, args.threads),
                                   OV_INT8_PEER: OpenVinoModel(raw, args.threads, cal)})
    peers = [*blocks["ort-int8"], *blocks["openvino"], PEER_ALONE]
    names = {}
    for name, m in models.items():
        stem = "model_" + name.replace(" ", "_").replace("=", "").replace("(", "").replace(")", "")
        blocks["ort-int8"][name] = onnx_models(m, onnx_dir, stem, args.threads)["int8"]
        names[name] = {"ort-int8": name}
        if ov:
            blocks["openvino"][f"{name} [openvino]"] = OpenVinoModel(os.path.join(onnx_dir, f"{stem}.onnx"),
                                                                     args.threads)
            names[name]["openvino"] = f"{name} [openvino]"
    T_ = args.seq_lens[0]
    shapes = [(str(T_), T_, list(models))]
    for task in dict.fromkeys(p["task"] for p in data["points"]):
        lens = real_lengths(task, tok, args.data_dir, args.real_examples)
        shapes.append((task, lens, [n for n in models if n.split()[0] == task]))
    timed = {}
    for label, lens, points in shapes:   # per length: each runtime's block (its peers and these points)
        res = {}
        for rt, variants in blocks.items():
            chosen = {n: v for n, v in variants.items() if n in peers or any(n == names[q].get(rt) for q in points)}
            if chosen:
                res.update(time_variants(chosen, 1, lens, base.config.vocab_size, args.repeats, args.warmup))
        res[PEER_ALONE] = peer_alone(shipped["int8"].path, 1, lens, base.config.vocab_size, args.repeats,
                                     args.warmup)
        timed[label] = {n: res[n][0] for n in res}
        print(f"bs 1 x {label if isinstance(lens, int) else f'{label} ({len(lens)} sequences)'} done", flush=True)

    def fastest(label):
        return min(peers, key=lambda n: timed[label].get(n, float("inf")))
    out_points = []
    for p in data["points"]:
        name = f"{p['task']} {p['budget']}"
        rt = p.get("runtime", "ort-int8")
        by = {r: {"ms_128": round(timed[str(T_)][v], 3), "ms_real": round(timed[p["task"]][v], 3),
                  "vs_own_128": round(timed[str(T_)][own[r]] / timed[str(T_)][v], 3),
                  "vs_own_real": round(timed[p["task"]][own[r]] / timed[p["task"]][v], 3)}
              for r, v in names[name].items()}
        ms, ms_real = by[rt]["ms_128"], by[rt]["ms_real"]
        peer, peer_real = fastest(str(T_)), fastest(p["task"])
        out_points.append({"task": p["task"], "budget": p["budget"], "runtime": rt, "seeds": p.get("seeds"),
                           "retention": p.get("retention"), "ms_128": ms,
                           "vs_peer_128": round(timed[str(T_)][peer] / ms, 3), "ms_real": ms_real,
                           "vs_peer_real": round(timed[p["task"]][peer_real] / ms_real, 3), "peer": peer,
                           "peer_real": peer_real, "seq_len": T_, "vs_own_128": by[rt]["vs_own_128"],
                           "vs_own_real": by[rt]["vs_own_real"], "runtimes": by,
                           "shape_seed": p["allocation"].get("seed")})
    out_peers = [{"name": n, "ms_128": round(timed[str(T_)][n], 3),
                  "ms_real": {t: round(timed[t][n], 3) for t in timed if t != str(T_)}}
                 for n in peers]
    print(f"CPU: {cpu_line(machine)}; {args.threads} threads; batch 1")
    print(tabulate([[q["name"], q["ms_128"], *q["ms_real"].values()] for q in out_peers],
                   headers=["peer", f"ms x {T_}", *(f"ms {t}" for t in out_peers[0]["ms_real"])], tablefmt="github"))
    print(tabulate([[q["task"], q["budget"], q["retention"], q["runtime"], q["ms_128"], f"{q['vs_peer_128']:.2f}x",
                     f"{q['vs_own_128']:.2f}x", q["ms_real"], f"{q['vs_peer_real']:.2f}x"] for q in out_points],
                   headers=["task", "budget", "retention", "runtime", f"ms x {T_}", "vs peer", "vs own c=1",
                            "ms real", "vs peer (real)"], tablefmt="github"))
    print(f"vs peer: against the fastest peer at that length ({', '.join(sorted({q['peer'] for q in out_points}))})")
    if args.json:
        command = ["python", "run_speed.py"] + (sys.argv[1:] if argv is None else list(argv))
        atomic_write_json(args.json, {"machine": machine, "command": command, "frontier": args.frontier,
                                      "threads": args.threads, "peers": out_peers, "points": out_points})
    return out_points


def accuracy_rows(checkpoint, task_name, data_dir=None, int8_backends=tuple(DEFAULT_SCHEMES), keep_fp32=(),
                  onnx_dir=None, most_sensitive=0, activation_bits=(7,)):
    """Validation score of a fine-tuned checkpoint: {"fp32": ..., "int8[scheme]": ..., "ort-int8": ...,
    "int8[scheme]+fp32 top K": ..., "details": {smooth alphas, sensitivity ranking}}."""
    from modcomp.finetune import evaluate
    model, task, loader, calibration = checkpoint_data(checkpoint, task_name, data_dir)
    dev = torch.device("cpu")
    out, details = {"fp32": evaluate(model, loader, task, dev)}, {}
    for scheme in int8_backends:
        for bits in activation_bits:
            label, alpha = int8_label(scheme, bits), None
            if scheme == "smooth":
                alpha, errors = choose_alpha(model, calibration, keep_fp32, activation_bits=bits)
                details[f"{label} alpha errors"] = {str(a): e for a, e in errors.items()}
                details[f"{label} alpha"] = alpha
            out[label] = evaluate(int8(model, scheme, keep_fp32, calibration, alpha, activation_bits=bits), loader,
                                  task, dev)
            if most_sensitive:
                ranking = sensitivity(model, calibration, scheme, alpha if alpha is not None else 0.5, bits)
                details[f"{label} sensitivity"] = ranking
                kept, only = [n for n, _ in ranking[:most_sensitive]], [n for n, _ in ranking[most_sensitive:]]
                q = int8(model, scheme, calibration=calibration, alpha=alpha, only=only, activation_bits=bits)
                out[f"{label}+fp32 top {most_sensitive}"] = {**evaluate(q, loader, task, dev), "fp32_layers": kept}
    if onnx_dir:
        if task.kind == "multiple_choice":
            raise UserError("the ONNX Runtime rows score sequence-classification tasks only")
        ort = onnx_models(model, onnx_dir, f"{task_name}_checkpoint", torch.get_num_threads())
        out["ort"] = evaluate(ort["fp32"], loader, task, dev)
        out["ort-int8"] = evaluate(ort["int8"], loader, task, dev)
    if details:
        out["details"] = details
    return out


def report_accuracy(args, machine):
    acc = accuracy_rows(args.checkpoint, args.task, args.data_dir, args.int8_backends, args.int8_keep_fp32,
                        args.onnx_dir, args.int8_fp32_most_sensitive, args.int8_activation_bits)
    print(f"{args.task} validation score: " + ", ".join(f"{k} {v['score']:.2f}" for k, v in acc.items()
                                                          if k != "details"))
    if args.accuracy_json:
        atomic_write_json(args.accuracy_json, {"checkpoint": args.checkpoint, "task": args.task,
                                               "int8_keep_fp32": args.int8_keep_fp32, "machine": machine, **acc})


if __name__ == "__main__":
    run_main(main)
