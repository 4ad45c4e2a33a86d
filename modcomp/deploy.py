"""One compressed model, made deployable: the pipeline's last stage with `modular_pipeline.sh --export OUT`.

    python -m modcomp.deploy --model RUN/model --teacher TEACHER --out OUT --work WORK_DIR [--task T --data_dir D]

OUT gets:
  model/        the compressed model in Hugging Face format (loads with trust_remote_code=True)
  onnx/         its export (export.py: ONNX Runtime fused fp32 and INT8, OpenVINO default precision and NNCF
                INT8, tokenizer, predict.py without torch)
  report.json   teacher against compressed, on this CPU: each validation metric in PyTorch fp32 and in each
                runtime's fp32 and INT8; size; batch-1 latency of each in the same runtime (export.py's
                measurements of both: the teacher is exported too, under WORK_DIR, not into OUT)
  report.md     the same, short
OUT is written whole or not at all (beside it, then renamed): a new or empty directory or an earlier OUT of this
command; anything else only with --overwrite; never a model directory or a folder above one.
"""
import argparse
import json
import os
import shutil

from modcomp import export as E
from modcomp import tasks as T
from modcomp.utils import UserError, atomic_write_bytes, atomic_write_json, cpu_line, run_main, written_atomically

FORMAT = "modcomp-deploy/1"
RUNTIMES = ("pytorch fp32", "onnx fp32", "onnx int8")   # an export without OpenVINO (--no_openvino) has these


def runtimes(*reports):
    """The runtimes every export report measured, in the export's order."""
    names = [n for n in reports[0].get("runtimes", RUNTIMES)]
    return [n for n in names if all(n in r["validation"] for r in reports)]


def is_deploy(out):
    try:
        with open(os.path.join(out, "report.json")) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out, inputs, overwrite):
    """Refuse (one line, before any work) an OUT that is a file, inside or above an input, or a non-empty
    directory that is no earlier OUT (unless --overwrite)."""
    out_abs = os.path.realpath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file")
    for what, path in inputs:
        p = os.path.realpath(path)
        if p == out_abs or p.startswith(out_abs + os.sep) or out_abs.startswith(p + os.sep):
            raise UserError(f"--out {out} is {what} ({path}), inside it or above it: give another directory")
    if os.path.isdir(out) and os.listdir(out) and not is_deploy(out) and not overwrite:
        raise UserError(f"--out {out} holds files that are no earlier export of this pipeline: give a new or empty "
                        "directory, or --overwrite to replace it")


def ensure_ours(teacher, task, work):
    """A directory of our own model class for the teacher (a user's transformers classifier is converted, its head
    kept), so that export.py exports it as it does the compressed model."""
    cfg = {}
    if os.path.isfile(os.path.join(teacher, "config.json")):
        with open(os.path.join(teacher, "config.json")) as f:
            cfg = json.load(f)
    if cfg.get("model_type") == "moddistilbert":
        return teacher
    from transformers import AutoTokenizer
    from modcomp.finetune import save_model
    from modeling_moddistilbert import ModDistilBertForSequenceClassification, resolve_model_path
    model = ModDistilBertForSequenceClassification.from_teacher(teacher, num_labels=task.num_labels)
    out = os.path.join(work, "teacher_model")
    save_model(model, AutoTokenizer.from_pretrained(resolve_model_path(teacher)), out, task)
    return out


def summary(task, teacher_path, model_path, teacher, compressed):
    """report.json's body from the two export reports."""
    rows, names = {}, runtimes(teacher, compressed)
    for name, r in (("teacher", teacher), ("compressed", compressed)):
        rows[name] = {"validation": {rt: r["validation"][rt] for rt in names},
                      "latency_ms": {rt: r["latency_ms"][rt]["median"] for rt in names},
                      "size_mb": dict(r["size_mb"]), "attn_dims": r["attn_dims"], "ffn_dims": r["ffn_dims"]}
    t, c = rows["teacher"], rows["compressed"]
    return {"format": FORMAT, "task": task.name, "teacher_path": teacher_path, "model_path": model_path,
            "machine": compressed["machine"], "latency_setting": compressed["latency_setting"],
            "validation_rows": compressed["validation_rows"], "runtimes": names, **rows,
            "openvino_precision": compressed.get("openvino_precision", {}),
            "retention": {rt: (c["validation"][rt]["score"] / t["validation"][rt]["score"]
                               if t["validation"][rt]["score"] else None) for rt in names},
            "speedup_same_runtime": {rt: t["latency_ms"][rt] / c["latency_ms"][rt] for rt in names},
            # what INT8 costs the compressed model, against PyTorch fp32 (export.py's int8_points_lost)
            "int8_points_lost": {rt: c["validation"]["pytorch fp32"]["score"] - c["validation"][rt]["score"]
                                 for rt in names if rt.endswith("int8")}}


def markdown(r):
    metrics = [k for k in r["compressed"]["validation"]["onnx fp32"] if k != "score"]
    lines = [f"# {r['task']}: teacher against compressed", "",
             f"Teacher `{r['teacher_path']}`; compressed `{r['model_path']}`; {r['validation_rows']} validation rows; "
             f"{cpu_line(r['machine'])}, {r['latency_setting']['threads']} threads, batch 1 x "
             f"{r['latency_setting']['seq_len']} tokens.", "",
             "| model | runtime | score | " + " | ".join(metrics) + " | ms | speed-up (same runtime) |",
             "|---|---|---|" + "---|" * len(metrics) + "---|---|"]
    for name in ("teacher", "compressed"):
        for rt in r["runtimes"]:
            v = r[name]["validation"][rt]
            up = "" if name == "teacher" else f"{r['speedup_same_runtime'][rt]:.2f}×"
            lines.append(f"| {name} | {rt} | {v['score']:.2f} | " + " | ".join(f"{v[m]:.4f}" for m in metrics)
                         + f" | {r[name]['latency_ms'][rt]:.2f} | {up} |")
    size = lambda n: r[n]["size_mb"].get("onnx int8")
    lost = "; ".join(f"{rt} {v:.2f}" for rt, v in r["int8_points_lost"].items())
    prec = "".join(f" {rt} runs in {p} on this CPU." for rt, p in r.get("openvino_precision", {}).items()
                   if rt in r["runtimes"] and not rt.endswith("int8"))
    lines += ["", f"Retention (ONNX INT8): {r['retention']['onnx int8']:.3f}; INT8 costs the compressed model "
              f"(points against PyTorch fp32): {lost}; ONNX INT8 size {size('teacher'):.1f} → "
              f"{size('compressed'):.1f} MB.{prec}"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the compressed fine-tuned model (run_superglue.py's RUN/model)")
    p.add_argument("--teacher", required=True, help="the uncompressed teacher it is compared with (a directory)")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="where the two exports are made (the teacher's stays there)")
    p.add_argument("--task", default=None, help="default: the model config's finetuning_task")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    check_out(a.out, [("the compressed model", a.model), ("the teacher", a.teacher), ("the work directory", a.work)],
              a.overwrite)
    task = E.checkpoint_task(a.model, a.task)
    os.makedirs(a.work, exist_ok=True)
    teacher = ensure_ours(a.teacher, task, a.work)
    common = ["--task", task.name, "--threads", str(a.threads), "--repeats", str(a.repeats), "--overwrite"]
    common += ["--data_dir", a.data_dir] if a.data_dir else []
    reports = {name: E.main([src, os.path.join(a.work, name), *common])
               for name, src in (("teacher", teacher), ("compressed", a.model))}
    r = summary(task, os.path.abspath(a.teacher), os.path.abspath(a.model), reports["teacher"], reports["compressed"])
    check_out(a.out, [("the compressed model", a.model), ("the teacher", a.teacher), ("the work directory", a.work)],
              a.overwrite)
    with written_atomically(a.out, directory=True) as tmp:
        shutil.copytree(a.model, os.path.join(tmp, "model"))
        shutil.copytree(os.path.join(a.work, "compressed"), os.path.join(tmp, "onnx"))
        atomic_write_json(os.path.join(tmp, "report.json"), r)
        atomic_write_bytes(os.path.join(tmp, "report.md"), markdown(r).encode())
    print(markdown(r))
    print(f"-> {a.out}: model/ (Hugging Face), onnx/ (predict.py), report.json, report.md")
    return r


if __name__ == "__main__":
    run_main(main)
