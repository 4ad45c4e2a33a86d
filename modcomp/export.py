"""Export a fine-tuned checkpoint (RUN/model of run_superglue.py, compressed or not) as a deployable ONNX directory.

    python export.py runs/ft/stsb/x/seed1/model runs/deploy/stsb
    python runs/deploy/stsb/predict.py "A man is playing a guitar." "A man plays the guitar."

OUT_DIR gets:
  model.onnx        fp32, fused by ONNX Runtime's transformer optimizer: every attention block (each layer
                    with its own head size) one Attention node, SkipLayerNormalization, BiasGelu
  model_int8.onnx   ONNX Runtime dynamic INT8 of model.onnx (QAttention, DynamicQuantizeMatMul), in the scheme
                    of inference.ORT_INT8_SCHEMES whose logits move least on 128 training rows (--int8 to choose)
  openvino_model.xml/.bin       OpenVINO IR of the plain (unfused) ONNX graph, fp32 weights: the CPU runs it
                                at OpenVINO's default precision (bf16 where it has AMX, else fp32)
  openvino_model_int8.xml/.bin  NNCF post-training INT8 of it (model_type TRANSFORMER), calibrated on the same
                                128 training rows (--no_openvino: neither; the names optimum-intel looks for)
  tokenizer.json (+ the other tokenizer files), config.json (label names)
  predict.py        the example: onnxruntime or openvino + tokenizers + numpy, no torch (python predict.py --help;
                    --model openvino_model_int8.xml runs OpenVINO)
  export.json       the checks: fused operator counts; fp32 logits against PyTorch's on the task's validation
                    rows (max |difference|, must be <= --tolerance); the validation score of PyTorch and of each
                    runtime's model, the points INT8 loses in each (a warning above 1); each ONNX Runtime INT8
                    scheme's calibration error; size on disk; batch-1 latency (ONNX Runtime and PyTorch timed
                    interleaved, OpenVINO in a block of its own: their thread pools disturb each other); and
                    what marks the directory as an export: "format" (EXPORT_FORMAT), the "files" it wrote,
                    "texts_per_example" (1 or 2: what predict.py checks each input against)
All files get the umask's permissions (utils.written_atomically).
The task (and its validation rows) comes from the checkpoint's config (finetuning_task) unless --task is given.
A multiple-choice model (COPA) is not exported. The ONNX code is inference.py's, shared with run_speed.py.

OUT_DIR is written beside (a temporary .tmp-* folder) and renamed into place when every check passed, so it is
replaced whole or not at all: a failed check (the fp32 tolerance, the fused attention count), an error, Ctrl-C
or SIGTERM leave an earlier OUT_DIR as it was and remove the temporary (one left by a killed export, SIGKILL,
is removed by the next export to OUT_DIR). Refused before any work, nothing written: an OUT_DIR that is a file,
and one that exists but is neither empty nor an earlier export (its export.json, and no files an export does
not write) unless --overwrite; always (even with --overwrite) the model directory itself, a folder above it, or
above the task data or this code.
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch

from modcomp import inference
from modcomp import tasks as T
from modcomp.utils import (UserError, at_least, atomic_write_json, cpu_info, cpu_line, run_main,
                           written_atomically)

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_LENGTH = 128  # the tokenized length of training and of checkpoint_data's validation rows
EXPORT_FORMAT = "modcomp-onnx-export/1"  # export.json's "format": how a later export knows OUT_DIR is one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
OPENVINO_FILES = tuple(f"{x}.{e}" for x in ("openvino_model", "openvino_model_int8") for e in ("xml", "bin"))
EXPORT_FILES = ("model.onnx", "model_int8.onnx", *OPENVINO_FILES, "config.json", "predict.py", "export.json",
                *TOKENIZER_FILES)
INT8_WARN_POINTS = 1.0   # INT8 losing more validation points than this (against PyTorch fp32) is printed loudly
BYPRODUCTS = ("__pycache__",)  # `from predict import Predictor` run in the directory writes it


class ToleranceError(UserError):
    """The fp32 ONNX logits are further from PyTorch's than --tolerance; .report: what export measured."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def not_an_export(out_dir):
    """None when the directory `out_dir` holds an export of export.py and nothing else; else why not."""
    path = os.path.join(out_dir, "export.json")
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except FileNotFoundError:
        return "no export.json"
    except (OSError, ValueError):
        return "its export.json cannot be read as JSON"
    legacy = isinstance(report, dict) and {"checkpoint", "task", "int8_scheme", "operators"} <= set(report)
    if not isinstance(report, dict) or not (report.get("format") == EXPORT_FORMAT or legacy):
        return "its export.json is not export.py's"
    files = report.get("files") if isinstance(report.get("files"), list) else EXPORT_FILES
    extra = sorted(set(os.listdir(out_dir)) - set(files) - {"export.json", *BYPRODUCTS})
    if extra:
        return f"it also holds {', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}, which no export writes"
    return None


def check_out_dir(out_dir, inputs, overwrite=False):
    """UserError (one line) unless the export may write `out_dir`, which it replaces whole: a new or empty
    directory, an earlier export (not_an_export), or with `overwrite` any directory; never a file, and never
    one of `inputs` (paths the export reads: the model, the data, this code) or a folder above one."""
    out = os.path.realpath(out_dir)
    for what, path in inputs:
        if path is None or not os.path.exists(path):
            continue
        p = os.path.realpath(path)
        if p == out or p.startswith(out.rstrip(os.sep) + os.sep):
            where = f"is {what}" if p == out else f"is a folder above {what} ({path})"
            raise UserError(f"{out_dir} {where}: the export replaces its output directory whole and would delete "
                            "it (even with --overwrite): give another output directory")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir} is a file, not a directory: give a directory to write the export into")
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{out_dir}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):  # the temporary goes beside out_dir
        raise UserError(f"{out_dir}: cannot write in {parent} (permission denied)")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        why = not_an_export(out_dir)
        if why:
            raise UserError(f"{out_dir} exists and is not an earlier export ({why}); the export replaces it whole, "
                            "deleting what it holds: give a new or empty directory, or --overwrite to replace it")


def texts_per_example(task, data_dir):
    """1 for a task of single texts (WSC), 2 for text pairs: what predict.py checks each input line against."""
    rows = T.load_rows(task, "validation", data_dir, check_count=False)[:1]
    return 1 if rows and T.format_example(task, rows[0])[1] is None else 2


def checkpoint_task(model_dir, task=None):
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{model_dir}: no config.json (expected a saved model, RUN/model of run_superglue.py)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON config ({e})") from e
    task = task or (config.get("finetuning_task") if isinstance(config, dict) else None)
    if not task:
        raise UserError(f"{path} names no finetuning_task: give --task")
    spec = config.get("user_task") if isinstance(config, dict) else None
    if isinstance(spec, dict) and spec.get("name") == task and task not in T.TASKS:   # your own task's files
        if not (os.path.isfile(spec.get("train_file", "")) and os.path.isfile(spec.get("validation_file", ""))):
            raise UserError(f"{path}: its task {task!r} was read from {spec.get('train_file')} and "
                            f"{spec.get('validation_file')}, which are not there any more")
        made = T.user_data.make_task(spec["train_file"], spec["validation_file"], spec["text_columns"],
                                     spec["label_column"], spec["task_type"], spec["name"], verbose=False)
        if list(made.label_names) != list(spec.get("label_names", made.label_names)):
            raise UserError(f"{path}: the labels of {spec['train_file']} changed since the model was trained")
    task = T.get_task(task)
    if task.kind == "multiple_choice":
        raise UserError(f"{task.name} is multiple choice: export.py exports classification and regression models")
    return task


def tokenizer_files(model_dir):
    """The checkpoint's tokenizer files; tokenizer.json (the fast tokenizer, what predict.py reads) must be there."""
    if not os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        raise UserError(f"{model_dir}: no tokenizer.json (save the model with a fast tokenizer)")
    return [os.path.join(model_dir, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(model_dir, n))]


@torch.inference_mode()
def validation_logits(models, loader):
    """({name: logits (N, labels) as float64}, labels) of each model over the loader's rows."""
    out, labels = {n: [] for n in models}, []
    for batch in loader:
        batch = dict(batch)
        labels.append(batch.pop("labels").numpy())
        for n, m in models.items():
            out[n].append(m(**batch).logits.double().numpy())
    return {n: np.concatenate(v) for n, v in out.items()}, np.concatenate(labels)


def export(args):
    """Write the export directory (module docstring); returns the report (export.json). Raises UserError
    before any work for an output directory it may not replace (check_out_dir), and ToleranceError, with
    nothing written, when the fp32 graph misses --tolerance."""
    inputs = [("the model directory", args.model_dir), ("the task data", args.data_dir),
              ("the repo's task data", T.REPO_DATA_DIR), ("this code", HERE)]
    check_out_dir(args.out_dir, inputs, args.overwrite)
    if not args.no_openvino and not inference.has_openvino():
        raise UserError("the OpenVINO export needs the openvino and nncf packages (pip install openvino nncf), "
                        "or give --no_openvino")
    task = checkpoint_task(args.model_dir, args.task)
    torch.set_num_threads(args.threads)
    model, task, loader, calibration = inference.checkpoint_data(args.model_dir, task.name, args.data_dir,
                                                                 max_rows=args.max_rows)
    tokenizer_files(args.model_dir)  # before the slow part
    report = {"format": EXPORT_FORMAT, "checkpoint": os.path.abspath(args.model_dir), "task": task.name,
              "texts_per_example": texts_per_example(task, args.data_dir or T.default_data_dir(task)),
              "max_length": MAX_LENGTH, "attn_dims": model.config.attn_dims, "ffn_dims": model.config.ffn_dims,
              "machine": cpu_info()}
    with written_atomically(args.out_dir, directory=True) as tmp:
        raw = inference.export_onnx(model, os.path.join(tmp, "raw.onnx"))
        fused, fused_ops = inference.optimize_onnx(raw, os.path.join(tmp, "model.onnx"))
        ov_paths = {} if args.no_openvino else inference.save_openvino(raw, tmp, calibration)
        os.remove(raw)
        schemes = list(inference.ORT_INT8_SCHEMES) if args.int8 == "auto" else [args.int8]
        best, paths, errors = inference.choose_ort_int8(fused, calibration, args.threads, schemes)
        int8_path = os.path.join(tmp, "model_int8.onnx")
        os.replace(paths[best], int8_path)
        for p in paths.values():
            if os.path.exists(p):
                os.remove(p)
        ops = {"fp32": inference.onnx_op_counts(fused), "int8": inference.onnx_op_counts(int8_path)}
        expected = inference.attention_layers(model.config)
        if (ops["fp32"].get("Attention", 0), ops["int8"].get("QAttention", 0)) != (expected, expected):
            raise UserError(f"ONNX Runtime fused {ops['fp32'].get('Attention', 0)} attention blocks "
                            f"({ops['int8'].get('QAttention', 0)} after INT8) of the {expected} the model has")
        for f in tokenizer_files(args.model_dir):
            shutil.copy(f, tmp)
        config = model.config.to_dict()
        config.pop("auto_map", None)  # the ONNX directory holds no model code
        atomic_write_json(os.path.join(tmp, "config.json"), config)
        shutil.copy(os.path.join(HERE, "predict.py"), tmp)

        sessions = {"onnx fp32": inference.OnnxModel(fused, args.threads),
                    "onnx int8": inference.OnnxModel(int8_path, args.threads)}
        ov = {n: inference.OpenVinoModel(p, args.threads) for n, p in ov_paths.items()}
        logits, labels = validation_logits({"pytorch fp32": model, **sessions, **ov}, loader)
        diff = float(np.abs(logits["onnx fp32"] - logits["pytorch fp32"]).max())
        scores = {n: {**(m := T.compute_metrics(task, z, labels)), "score": T.task_score(task, m)}
                  for n, z in logits.items()}
        timing = inference.time_variants({"pytorch fp32": model, **sessions}, 1, args.seq_len,
                                         model.config.vocab_size, args.repeats, warmup=3)
        if ov:   # a block of its own, after ONNX Runtime's
            timing.update(inference.time_variants(ov, 1, args.seq_len, model.config.vocab_size, args.repeats,
                                                  warmup=3))
        lost = {n: scores["pytorch fp32"]["score"] - scores[n]["score"] for n in scores if n.endswith("int8")}
        report.update({
            # what ONNX Runtime's session must not do to these graphs (predict.py passes it on): inference.py
            "ort_disabled_optimizers": list(inference.ORT_DISABLED_OPTIMIZERS),
            "runtimes": list(scores), "int8_points_lost": lost,
            "int8_within_points": {n: bool(v <= INT8_WARN_POINTS) for n, v in lost.items()},
            "openvino_precision": {n: m.precision for n, m in ov.items()},
            "fused_operators": fused_ops, "operators": ops, "attention_layers": expected,
            "int8_scheme": best, "int8_calibration_error": errors,
            "validation_rows": len(labels), "fp32_max_abs_logit_difference": diff, "tolerance": args.tolerance,
            "fp32_within_tolerance": bool(diff <= args.tolerance), "validation": scores,
            "size_mb": {"onnx fp32": os.path.getsize(fused) / 2 ** 20,
                        "onnx int8": os.path.getsize(int8_path) / 2 ** 20,
                        **{n: (os.path.getsize(p) + os.path.getsize(p[:-4] + ".bin")) / 2 ** 20
                           for n, p in ov_paths.items()}},
            "latency_ms": {n: {"median": round(t[0], 3), "p10": round(t[1], 3), "p90": round(t[2], 3)}
                           for n, t in timing.items()},
            "latency_setting": {"batch_size": 1, "seq_len": args.seq_len, "threads": args.threads,
                                "repeats": args.repeats},
        })
        if not report["fp32_within_tolerance"]:  # NaN too
            raise ToleranceError(f"the fp32 ONNX logits differ from PyTorch's by {diff:.2e} > --tolerance "
                                 f"{args.tolerance:g}: nothing written ({args.out_dir} is as it was)", report)
        report["files"] = sorted({*os.listdir(tmp), "export.json"})
        atomic_write_json(os.path.join(tmp, "export.json"), report)
        check_out_dir(args.out_dir, inputs, args.overwrite)  # still replaceable after the slow part
    return report


def print_report(r, out_dir):
    print(f"{out_dir}: {r['task']}, {r['attention_layers']} attention blocks fused "
          f"(heads x head dim per layer {r['attn_dims']}), INT8 scheme {r['int8_scheme']}")
    print(f"fp32 ONNX vs PyTorch on {r['validation_rows']} validation rows: max |logit difference| "
          f"{r['fp32_max_abs_logit_difference']:.2e} (tolerance {r['tolerance']:g})")
    lat = r["latency_ms"]
    print(f"{'':17}{'score':>8}{'MB':>9}{'ms (bs 1 x ' + str(r['latency_setting']['seq_len']) + ')':>18}")
    for n in r.get("runtimes", ("pytorch fp32", "onnx fp32", "onnx int8")):
        size = r["size_mb"].get(n)
        prec = r.get("openvino_precision", {}).get(n)
        print(f"{n:17}{r['validation'][n]['score']:8.2f}{'' if size is None else f'{size:.1f}':>9}"
              f"{lat[n]['median']:18.2f}" + (f"  (runs in {prec})" if prec else ""))
    print(f"CPU: {cpu_line(r['machine'])}, {r['latency_setting']['threads']} threads")
    for n, v in r.get("int8_points_lost", {}).items():
        if v > INT8_WARN_POINTS:
            print(f"WARNING: {n} loses {v:.2f} validation points against PyTorch fp32 (more than "
                  f"{INT8_WARN_POINTS:g}); the fp32 model of that runtime keeps them")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a saved fine-tuned model (config.json, model.safetensors, tokenizer)")
    p.add_argument("out_dir", help="the export directory to write: a new or empty one, or an earlier export "
                                   "(replaced whole); another directory only with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace out_dir even when it is not an earlier export (what it holds is deleted); never "
                        "the model directory or a folder above it")
    p.add_argument("--task", default=None, help="default: the checkpoint config's finetuning_task")
    p.add_argument("--data_dir", default=None, help="task files (default: the repo's data/, else the hub)")
    p.add_argument("--int8", default="auto", choices=["auto", *inference.ORT_INT8_SCHEMES],
                   help="ONNX Runtime INT8 scheme; auto: the one with the smallest logits error on 128 training rows")
    p.add_argument("--no_openvino", action="store_true",
                   help="write no OpenVINO files (they need the openvino and nncf packages)")
    p.add_argument("--max_rows", type=at_least(1), default=None, help="check on the first N validation rows only")
    p.add_argument("--tolerance", type=at_least(0.0, float), default=1e-4,
                   help="max |fp32 ONNX - PyTorch| logit difference (above it nothing is written)")
    p.add_argument("--threads", type=at_least(1), default=2, help="for the checks and the latency")
    p.add_argument("--seq_len", type=at_least(1), default=128, help="tokens of the batch-1 latency input")
    p.add_argument("--repeats", type=at_least(2), default=20, help="timed forwards of each model (at least 2)")
    args = p.parse_args(argv)
    try:
        report = export(args)
    except ToleranceError as e:
        print_report(e.report, args.out_dir)
        raise
    print_report(report, args.out_dir)
    return report


if __name__ == "__main__":
    run_main(main)
