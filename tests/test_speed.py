"""run_speed.py: FLOP bound by hand, the benchmark rows, ONNX export equivalence, INT8 accuracy path."""
import json

import pytest
import torch
from transformers import BertConfig, DistilBertConfig
from transformers.modeling_outputs import SequenceClassifierOutput

import run_speed
from compression import compress
from modeling_moddistilbert import ModDistilBertForSequenceClassification, config_from_teacher

from conftest import TINY_BERT as TINY
from utils import UserError


@pytest.fixture(scope="module")
def tiny_teacher(tiny_bert_dir):
    return tiny_bert_dir


def test_model_macs_by_hand():
    cfg = config_from_teacher(BertConfig(**TINY), num_labels=2)
    T, H, A, F = 10, 32, 32, 64
    per_layer = T * 4 * H * A + 2 * T * T * A + 2 * T * H * F
    assert run_speed.model_macs(cfg, T) == 2 * per_layer + H * H + 2 * H
    # DistilBERT-base at c=2, 128 tokens: the bound the paper's 2x rests on
    big = config_from_teacher(DistilBertConfig(), num_labels=2)
    small = ModDistilBertForSequenceClassification(config_from_teacher(DistilBertConfig(), num_labels=2)).config
    small.attn_dims, small.ffn_dims = [384] * 6, [1536] * 6
    bound = run_speed.model_macs(big, 128) / run_speed.model_macs(small, 128)
    assert 1.98 < bound < 2.0


def test_benchmark_rows_and_json(tiny_teacher, tmp_path):
    out = tmp_path / "speed.json"
    run_speed.main(["--model_name_or_path", tiny_teacher, "--batch_sizes", "1", "2", "--seq_lens", "8",
                    "--repeats", "2", "--warmup", "1", "--threads", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert {r["variant"] for r in rows} == {"fp32 c=1", "fp32 c=2", "int8 c=1", "int8 c=2"}
    assert len(rows) == 8
    for r in rows:
        assert {"variant", "batch_size", "seq_len", "threads", "median_ms", "speedup", "flop_bound"} <= set(r)
        assert r["median_ms"] > 0 and r["threads"] == 1 and r["seq_len"] == 8
    base = [r for r in rows if r["variant"] == "fp32 c=1"]
    assert all(r["speedup"] == 1.0 and r["flop_bound"] == 1.0 for r in base)
    assert all(r["flop_bound"] > 1.5 for r in rows if r["variant"] == "fp32 c=2")


def test_onnx_export_same_logits(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = ModDistilBertForSequenceClassification(config_from_teacher(BertConfig(**TINY), num_labels=3)).eval()
    compress(m, 2.0, "svd")
    session = run_speed.OnnxModel(run_speed.export_onnx(m, str(tmp_path / "m.onnx")), 1)
    ids = torch.randint(1000, 30000, (3, 21))       # another batch and length than exported with
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        expected = m(input_ids=ids, attention_mask=mask).logits
    out = session(ids, mask)
    assert isinstance(out, SequenceClassifierOutput) and out.to_tuple() == (out.logits,)
    assert torch.allclose(out.logits, expected, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_build_variants_of_a_cuda_model(tiny_teacher):
    base = ModDistilBertForSequenceClassification.from_teacher(tiny_teacher, num_labels=2).eval()
    cpu = run_speed.build_variants(base, [2.0], int8_backends=())
    gpu = run_speed.build_variants(base.cuda(), [2.0], int8_backends=())  # INT8 (quantize_dynamic) is CPU only
    assert set(gpu) == {"fp32 c=1", "fp32 c=2"} and gpu["fp32 c=2"].config.attn_dims == [16, 16]
    assert all(p.device.type == "cuda" for p in gpu["fp32 c=2"].parameters())
    ids = torch.randint(1000, 30000, (2, 8))
    with torch.no_grad():
        got = gpu["fp32 c=2"](input_ids=ids.cuda(), attention_mask=torch.ones_like(ids).cuda()).logits.cpu()
        want = cpu["fp32 c=2"](input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert (got - want).abs().max() < 1e-3


def test_int8_keeps_the_model_close():
    torch.manual_seed(0)
    m = ModDistilBertForSequenceClassification(config_from_teacher(BertConfig(**TINY), num_labels=2)).eval()
    q = run_speed.int8(m)
    assert any("quantized" in type(mod).__module__ for mod in q.modules())
    ids = torch.randint(1000, 30000, (4, 12))
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, q(input_ids=ids).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-3


def test_int8_accuracy_of_a_checkpoint(tmp_path):
    from conftest import SHARED_DATA, save_with_tokenizer
    torch.manual_seed(0)
    m = ModDistilBertForSequenceClassification(config_from_teacher(BertConfig(**TINY), num_labels=2)).eval()
    compress(m, 2.0, "svd")
    d = save_with_tokenizer(m, tmp_path / "ckpt")
    acc = run_speed.accuracy_rows(d, "rte", SHARED_DATA)
    for k in ("fp32", "int8"):
        assert 0.0 <= acc[k]["accuracy"] <= 1.0 and acc[k]["score"] == pytest.approx(100 * acc[k]["accuracy"])
    # 277 validation rows: the same logits up to INT8 error flip at most a few predictions
    assert abs(acc["fp32"]["accuracy"] - acc["int8"]["accuracy"]) <= 10 / 277
    out = tmp_path / "acc.json"
    run_speed.main(["--checkpoint", d, "--task", "rte", "--data_dir", SHARED_DATA, "--accuracy_only",
                    "--int8_backends", "dynamic", "dynamic_per_channel", "--accuracy_json", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved) == {"checkpoint", "task", "int8_keep_fp32", "fp32", "int8", "int8[dynamic_per_channel]"}
    assert saved["fp32"] == pytest.approx(acc["fp32"]) and saved["int8"] == pytest.approx(acc["int8"])
    with pytest.raises(UserError, match="--accuracy_only needs --checkpoint"):
        run_speed.main(["--accuracy_only"])


def test_several_compressions_in_one_run(tiny_teacher, tmp_path):
    out = tmp_path / "speed.json"
    run_speed.main(["--model_name_or_path", tiny_teacher, "--compression", "1.5", "2", "4", "--batch_sizes", "1",
                    "--seq_lens", "8", "--repeats", "2", "--warmup", "1", "--threads", "1", "--no_int8",
                    "--json", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"fp32 c=1", "fp32 c=1.5", "fp32 c=2", "fp32 c=4"}
    assert [rows[f"fp32 c={c}"]["compression"] for c in ("1", "1.5", "2", "4")] == [1.0, 1.5, 2.0, 4.0]
    bounds = [rows[f"fp32 c={c}"]["flop_bound"] for c in ("1", "1.5", "2", "4")]
    assert bounds[0] == 1.0 and bounds == sorted(bounds) and bounds[-1] > 3


@pytest.mark.parametrize("backend", ["dynamic_per_channel", "torchao"])
def test_other_int8_backends_keep_the_model_close(backend):
    if backend == "torchao":
        pytest.importorskip("torchao")
    torch.manual_seed(0)
    m = ModDistilBertForSequenceClassification(config_from_teacher(BertConfig(**TINY), num_labels=2)).eval()
    q = run_speed.int8(m, backend)
    ids = torch.randint(1000, 30000, (4, 12))
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, q(input_ids=ids).logits
    assert not torch.equal(a, b)                       # it did quantize
    if backend == "dynamic_per_channel":
        w = q.moddistilbert.layers[0].ffn.lin1.weight()
        assert w.qscheme() == torch.per_channel_affine and w.q_per_channel_scales().numel() == w.shape[0]
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-3
    assert torch.equal(m(input_ids=ids).logits, a)     # on a copy: the fp32 model is untouched


def test_unknown_int8_backend_and_bad_compression_are_user_errors(tiny_teacher):
    with pytest.raises(UserError, match="unknown INT8 backend"):
        run_speed.int8(torch.nn.Linear(2, 2), "int4")
    for bad in ("0.5", "1"):
        with pytest.raises(UserError, match="--compression values must be > 1"):
            run_speed.main(["--model_name_or_path", tiny_teacher, "--compression", "2", bad, "--no_int8"])


@pytest.mark.parametrize("backend", ["dynamic", "dynamic_per_channel", "torchao"])
def test_int8_keep_fp32_leaves_the_named_layers_alone(backend):
    if backend == "torchao":
        pytest.importorskip("torchao")
    torch.manual_seed(0)
    m = ModDistilBertForSequenceClassification(config_from_teacher(BertConfig(**TINY), num_labels=2)).eval()
    q = run_speed.int8(m, backend, keep_fp32=["lin2", "classifier"])
    layers = dict(q.named_modules())
    names = [n for n, x in m.named_modules() if isinstance(x, torch.nn.Linear)]
    kept = [n for n in names if "lin2" in n or "classifier" in n]
    assert kept and len(kept) < len(names)
    for n in names:
        plain = type(layers[n]) is torch.nn.Linear and layers[n].weight.dtype == torch.float32 \
            and type(layers[n].weight) in (torch.nn.Parameter, torch.Tensor)
        assert plain == (n in kept), n
        if n in kept:
            assert torch.equal(layers[n].weight, dict(m.named_modules())[n].weight)
