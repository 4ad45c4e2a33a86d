"""export.py and predict.py on tiny checkpoints: the fused fp32 ONNX gives PyTorch's logits, every attention
block is fused (per-layer head sizes, removed blocks), INT8 runs and is checked, predict.py runs without torch."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, DistilBertConfig

from modcomp import export
from modcomp import inference
from modcomp import tasks as T
from modcomp.compression import compress
from modcomp.finetune import label_config
from modeling_moddistilbert import ModDistilBertForSequenceClassification, config_from_teacher
from modcomp.utils import UserError

from conftest import ROOT, TINY_BERT, save_with_tokenizer

pytest.importorskip("onnxruntime")
REPO_DATA = os.path.join(ROOT, "data")  # the repo ships wsc (single texts, labels) and stsb (pairs, regression)
# predict.py in a process where torch and transformers cannot be imported
NO_TORCH = ("import runpy, sys; sys.modules['torch'] = sys.modules['transformers'] = None; "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def checkpoint(path, task, attn_dims=None, ffn_dims=None, c=None, seed=0, distilbert=False, heads=None):
    """A tiny fine-tuned-looking checkpoint of `task`: random weights, label names, tokenizer. BERT-shaped
    (segment ids) unless `distilbert`."""
    torch.manual_seed(seed)
    teacher = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64) if distilbert \
        else BertConfig(**TINY_BERT)
    config = config_from_teacher(teacher, num_labels=T.get_task(task).num_labels)
    if attn_dims:
        config.attn_dims, config.ffn_dims, config.attn_heads = attn_dims, ffn_dims, heads
    model = ModDistilBertForSequenceClassification(config)
    if c:
        compress(model, c, "svd")
    with torch.no_grad():  # a removed block's constant output: make it matter
        for n, p in model.named_parameters():
            if n.endswith(("out_lin.bias", "lin2.bias")):
                p.normal_(0, 0.5)
    label_config(model, T.get_task(task))
    return save_with_tokenizer(model.eval(), path)


def run_export(ckpt, out, *extra):
    return export.main([ckpt, str(out), "--data_dir", REPO_DATA, "--max_rows", "24", "--threads", "1",
                        "--repeats", "2", "--seq_len", "16", *extra])


@pytest.mark.parametrize("dims", [dict(c=2.0), dict(attn_dims=[8, 24], ffn_dims=[16, 48]),
                                  dict(attn_dims=[0, 16], ffn_dims=[48, 0]), dict(c=2.0, distilbert=True),
                                  dict(attn_dims=[8, 24], ffn_dims=[16, 48], heads=[1, 3])],
                         ids=["c2", "per-layer-dims", "removed-blocks", "distilbert-c2", "per-layer-heads"])
def test_export_checks_fp32_and_int8(tmp_path, one_thread, dims):
    ckpt = checkpoint(tmp_path / "ckpt", "wsc", **dims)
    report = run_export(ckpt, tmp_path / "out")
    out = tmp_path / "out"
    assert {"model.onnx", "model_int8.onnx", "tokenizer.json", "config.json", "predict.py", "export.json"} \
        <= set(os.listdir(out))
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(report))
    n_attn = sum(1 for d in report["attn_dims"] if d)
    assert report["attention_layers"] == n_attn == report["operators"]["fp32"]["Attention"] \
        == report["operators"]["int8"]["QAttention"]
    assert "MatMul" not in report["operators"]["int8"] and "Gemm" not in report["operators"]["int8"]  # all INT8
    assert report["validation_rows"] == 24 and report["task"] == "wsc"
    assert report["fp32_max_abs_logit_difference"] <= 1e-4 and report["fp32_within_tolerance"]
    assert report["int8_scheme"] in inference.ORT_INT8_SCHEMES
    assert set(report["int8_calibration_error"]) == set(inference.ORT_INT8_SCHEMES)
    assert report["int8_calibration_error"][report["int8_scheme"]] == min(report["int8_calibration_error"].values())
    v = report["validation"]
    assert v["onnx fp32"]["score"] == v["pytorch fp32"]["score"] and 0 <= v["onnx int8"]["score"] <= 100
    assert report["size_mb"]["onnx int8"] < report["size_mb"]["onnx fp32"]
    assert all(t["median"] > 0 for t in report["latency_ms"].values())
    import onnxruntime as ort
    names = [i.name for i in ort.InferenceSession(str(out / "model_int8.onnx")).get_inputs()]
    assert names == ["input_ids", "attention_mask"] + ([] if dims.get("distilbert") else ["token_type_ids"])
    # OpenVINO (issue 27 item 2): its IR at fp32 gives PyTorch's logits; the INT8 one is NNCF's (FakeQuantize)
    assert set(export.OPENVINO_FILES) <= set(os.listdir(out)) and set(report["files"]) >= set(export.OPENVINO_FILES)
    assert report["runtimes"] == ["pytorch fp32", "onnx fp32", "onnx int8", "openvino default", "openvino int8"]
    assert set(report["int8_points_lost"]) == {"onnx int8", "openvino int8"}
    assert report["int8_points_lost"]["onnx int8"] == v["pytorch fp32"]["score"] - v["onnx int8"]["score"]
    assert set(report["latency_ms"]) == set(report["runtimes"]) and report["openvino_precision"]
    import openvino as ov
    core = ov.Core()
    fp = core.compile_model(core.read_model(str(out / "openvino_model.xml")), "CPU",
                            {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    feed = {i.get_any_name(): feed[i.get_any_name()].numpy() for i in fp.inputs}
    model = ModDistilBertForSequenceClassification.from_pretrained(ckpt).eval()
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(x) for k, x in feed.items()}).logits.numpy()
    assert abs(fp(feed)[fp.output(0)] - want).max() < 1e-4
    int8_ops = {op.get_type_name() for op in core.read_model(str(out / "openvino_model_int8.xml")).get_ops()}
    assert "FakeQuantize" in int8_ops or "FakeConvert" in int8_ops


@pytest.mark.slow
def test_predict_without_torch_gives_the_models_predictions(tmp_path, one_thread):
    """Pairs (STS-B, regression) through predict.py in a process that cannot import torch: the fp32 model's
    scores are the PyTorch model's on the same pairs (so the tokenization is the same too)."""
    ckpt = checkpoint(tmp_path / "ckpt", "stsb", attn_dims=[8, 16], ffn_dims=[0, 32])
    out = tmp_path / "out"
    run_export(ckpt, out, "--int8", "per_channel")
    rows = T.load_rows("stsb", "validation", REPO_DATA, check_count=False)[:5]
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows]
    (tmp_path / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = ModDistilBertForSequenceClassification.from_pretrained(ckpt).eval()
    with torch.no_grad():
        want = model(**tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=128,
                           padding=True, return_tensors="pt")).logits[:, 0]
    # each runtime's model, the other runtime not importable (predict.py needs one of them)
    no_ov = NO_TORCH.replace("= None;", "= sys.modules['openvino'] = None;", 1)
    no_ort = NO_TORCH.replace("= None;", "= sys.modules['onnxruntime'] = None;", 1)
    for model_file, blocker in (("model.onnx", no_ov), ("model_int8.onnx", no_ov), ("openvino_model.xml", no_ort),
                                ("openvino_model_int8.xml", no_ort), (None, no_ort)):
        res = subprocess.run([sys.executable, "-c", blocker, str(out / "predict.py"), "--file",
                              str(tmp_path / "pairs.tsv"), "--threads", "1", *(["--model", model_file]
                                                                               if model_file else [])],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        got = torch.tensor([json.loads(line)["score"] for line in res.stdout.splitlines()])
        assert len(got) == 5
        # bf16 (OpenVINO's default on an AMX CPU) and INT8: close; ONNX fp32: PyTorch's
        assert (got - want).abs().max() < (2e-4 if model_file == "model.onnx" else 0.1 * want.abs().max() + 0.05)
    res = subprocess.run([sys.executable, "-c", no_ort, str(out / "predict.py"), "a", "b", "--model",
                          "model.onnx"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: the model needs the onnxruntime package (pip install onnxruntime)"]
    # the blocker works: the same command cannot import torch
    res = subprocess.run([sys.executable, "-c", NO_TORCH.replace("runpy.run_path(sys.argv[0], run_name='__main__')",
                                                                 "import torch")], capture_output=True, text=True)
    assert res.returncode != 0 and ("ModuleNotFoundError" in res.stderr or "ImportError" in res.stderr)


@pytest.mark.slow
def test_predict_prints_label_names_for_single_texts(tmp_path, one_thread):
    ckpt = checkpoint(tmp_path / "ckpt", "wsc", c=2.0)
    run_export(ckpt, tmp_path / "out", "--int8", "per_tensor")
    res = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path / "out" / "predict.py"),
                          "The trophy does not fit in the *suitcase* because _it_ is too small."],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["label"] in ("False", "True") and set(out["scores"]) == {"False", "True"}
    assert abs(sum(out["scores"].values()) - 1) < 1e-3
    assert json.loads((tmp_path / "out" / "export.json").read_text())["int8_scheme"] == "per_tensor"


def test_export_refuses_what_it_cannot_export(tmp_path):
    ckpt = checkpoint(tmp_path / "ckpt", "wsc")
    with pytest.raises(UserError, match="multiple choice"):
        export.main([ckpt, str(tmp_path / "out"), "--task", "copa"])
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg.pop("finetuning_task")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="--task"):
        export.main([ckpt, str(tmp_path / "out")])
    with pytest.raises(UserError, match="no config.json"):
        export.main([str(tmp_path), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
