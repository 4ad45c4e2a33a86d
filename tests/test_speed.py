"""run_speed.py and inference.py: FLOP bound by hand, the benchmark rows and their JSON, ONNX export and
ONNX Runtime's fused/INT8 graphs, TorchScript, the INT8 schemes (SmoothQuant, sensitivity), the accuracy path."""
import json

import pytest
import torch
from transformers import BertConfig, DistilBertConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from modcomp import inference
from modcomp import speed as run_speed
from modcomp.compression import compress
from modeling_moddistilbert import ModDistilBertForSequenceClassification, config_from_teacher

from conftest import TINY_BERT as TINY, needs_full_data
from modcomp.utils import UserError, cpu_info, cpu_line


@pytest.fixture(scope="module")
def tiny_teacher(tiny_bert_dir):
    return tiny_bert_dir


def tiny_model(num_labels=2, c=None, seed=0):
    torch.manual_seed(seed)
    m = ModDistilBertForSequenceClassification(config_from_teacher(BertConfig(**TINY), num_labels=num_labels))
    if c:
        compress(m, c, "svd")
    return m.eval()


def padded_batch(batch=3, length=21, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    return ids, mask, types


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
                    "--repeats", "2", "--warmup", "1", "--threads", "1", "--int8_backends", "dynamic",
                    "--int8_activation_bits", "7", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["machine"] == cpu_info() and saved["command"][-2:] == ["--json", str(out)]
    rows = saved["rows"]
    assert {r["variant"] for r in rows} == {"fp32 c=1", "fp32 c=2", "int8 c=1", "int8 c=2"}
    assert len(rows) == 8
    for r in rows:
        assert {"variant", "batch_size", "seq_len", "threads", "median_ms", "speedup", "flop_bound"} <= set(r)
        assert r["median_ms"] > 0 and r["threads"] == 1 and r["seq_len"] == 8 and r["vs_peer"] is None
        assert (r["fraction_of_bound"] is None) == r["variant"].startswith("int8")
    base = [r for r in rows if r["variant"] == "fp32 c=1"]
    assert all(r["speedup"] == 1.0 and r["flop_bound"] == 1.0 for r in base)
    assert all(r["flop_bound"] > 1.5 for r in rows if r["variant"] == "fp32 c=2")


def test_saved_checkpoints_and_real_lengths(tiny_teacher, tmp_path):
    """--models times fine-tuned checkpoints at their own (non-uniform, even removed) sizes beside c=1, named by
    their multiply-add ratio; --real_lengths adds batch-1 rows over a task's validation lengths, with the FLOP
    bound averaged over those lengths."""
    m = ModDistilBertForSequenceClassification.from_teacher(tiny_teacher, num_labels=1)
    compress(m, 2.0, "svd")
    from modeling_moddistilbert import make_block
    for layer, attn, ffn in ((0, 16, 16), (1, 0, 48)):     # per-layer sizes, layer 1's attention removed
        m.base_model.layers[layer].attention = make_block(m.config, layer, "mha", attn)
        m.base_model.layers[layer].ffn = make_block(m.config, layer, "ffn", ffn)
        m.config.attn_dims[layer], m.config.ffn_dims[layer] = attn, ffn
    m.save_pretrained(str(tmp_path / "ckpt"))
    c = run_speed.saved_compression(m.config.__class__(**{**m.config.to_dict(), "attn_dims": [32, 32],
                                                          "ffn_dims": [64, 64]}), m)
    out = tmp_path / "speed.json"
    run_speed.main(["--model_name_or_path", tiny_teacher, "--batch_sizes", "1", "--seq_lens", "8", "--repeats", "2",
                    "--warmup", "0", "--threads", "1", "--no_int8", "--models", str(tmp_path / "ckpt"),
                    "--real_lengths", "stsb", "--real_examples", "5", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["variant"] for r in rows} == {"fp32 c=1", "fp32 c=2", f"fp32 c={c:g} ckpt"} and c > 2
    assert [r["checkpoint"] for r in rows if r["variant"].endswith("ckpt")] == [True, True]
    real = [r for r in rows if isinstance(r["seq_len"], str)]
    assert len(real) == 3 and all(r["seq_len"].startswith("stsb (5 sequences") and r["batch_size"] == 1 for r in real)
    lens = run_speed.real_lengths("stsb", run_speed.AutoTokenizer.from_pretrained(tiny_teacher), n=5)
    cfg0 = ModDistilBertForSequenceClassification.from_teacher(tiny_teacher, num_labels=2).config
    bound = sum(run_speed.model_macs(cfg0, t) for t in lens) / sum(run_speed.model_macs(m.config, t) for t in lens)
    assert [r["flop_bound"] for r in real if r["variant"] == f"fp32 c={c:g} ckpt"] == [round(bound, 3)]
    tok = run_speed.AutoTokenizer.from_pretrained(tiny_teacher)     # a COPA example is two forwards, both timed
    copa = run_speed.real_lengths("copa", tok, n=3)
    enc = run_speed.T.encode(run_speed.T.get_task("copa"), run_speed.T.load_rows(run_speed.T.get_task("copa"),
                             "validation", run_speed.T.default_data_dir(run_speed.T.get_task("copa"))), tok, 128)
    assert len(copa) == 6                                            # 3 examples x 2 choices
    assert set(copa) <= {len(c) for e in enc["input_ids"] for c in e}
    with pytest.raises(UserError, match="both run at c="):       # two checkpoints of one c: never one row
        run_speed.main(["--model_name_or_path", tiny_teacher, "--no_int8", "--models", str(tmp_path / "ckpt"),
                        str(tmp_path / "ckpt")])


def test_default_scheme_and_every_row_family(tiny_teacher, tmp_path):
    """--onnx_dir adds the ONNX Runtime rows and the peer column; --torchscript the TorchScript rows."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "speed.json"
    run_speed.main(["--model_name_or_path", tiny_teacher, "--batch_sizes", "1", "--seq_lens", "8", "--repeats",
                    "2", "--warmup", "1", "--threads", "1", "--onnx_dir", str(tmp_path / "onnx"), "--torchscript",
                    "--json", str(out), "--profile", str(tmp_path / "profile.json")])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    q = inference.int8_label(run_speed.DEFAULT_SCHEMES[0], 8 if inference.has_int8_dot_product() else 7)
    assert set(rows) == {"fp32 c=1", "fp32 c=2", f"{q} c=1", f"{q} c=2", "ort c=1", "ort-int8 c=1", "ort c=2",
                         "ort-int8 c=2", "ts fp32 c=2", f"ts {q} c=2"}
    assert rows[run_speed.PEER]["vs_peer"] == 1.0 and all(r["vs_peer"] > 0 for r in rows.values())
    prof = json.loads((tmp_path / "profile.json").read_text())
    assert set(prof["profiles"]) == {"fp32 c=1", "fp32 c=2", f"{q} c=2", "ts fp32 c=2", f"ts {q} c=2", "ort c=2",
                                     "ort-int8 c=1", "ort-int8 c=2"}
    ops = prof["profiles"][f"{q} c=2"]
    assert any(o["op"] == "quantized::linear_dynamic" for o in ops)
    assert abs(sum(o["share"] for o in ops) - 1) < 0.2 and all(o["self_ms"] >= 0 for o in ops)
    ort_ops = {o["op"]: o for o in prof["profiles"]["ort-int8 c=2"]}  # ONNX Runtime's profiler, after its fusions
    assert ort_ops["QAttention"]["calls"] == 2 and ort_ops["DynamicQuantizeMatMul"]["calls"] >= 4
    assert abs(sum(o["share"] for o in ort_ops.values()) - 1) < 1e-3 and "(between operators)" in ort_ops


def test_ort_int8_schemes_and_no_spin_rows(tiny_teacher, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "speed.json"
    run_speed.main(["--model_name_or_path", tiny_teacher, "--batch_sizes", "1", "--seq_lens", "8", "--repeats",
                    "2", "--warmup", "1", "--threads", "1", "--no_int8", "--onnx_dir", str(tmp_path / "onnx"),
                    "--ort_int8_schemes", "per_channel", "per_tensor", "--ort_no_spin", "--json", str(out)])
    rows = {r["variant"] for r in json.loads(out.read_text())["rows"]}
    assert rows == {f"{v} c={c}" for c in (1, 2) for v in ("fp32", "ort", "ort-int8", "ort-int8[per_tensor]",
                                                            "ort[no-spin]", "ort-int8[no-spin]")}
    with pytest.raises(SystemExit):  # argparse: not a scheme
        run_speed.main(["--onnx_dir", str(tmp_path), "--ort_int8_schemes", "per_row"])


def test_cpu_info_reads_model_and_isa_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
                 "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu\n")
    info = cpu_info(str(f))
    assert info["cpu"] == "Some CPU 9000" and info["isa"] == ["avx2", "avx512f", "avx512_vnni"]
    assert "Some CPU 9000" in cpu_line(info) and "avx512_vnni" in cpu_line(info)
    assert cpu_info(str(tmp_path / "missing"))["isa"] == []


@pytest.mark.parametrize("c", [None, 2.0])
def test_onnx_export_fused_and_int8(tmp_path, c):
    """The export and ONNX Runtime's fused graph give the model's logits (padding, segment ids, another shape
    than exported); the fusion finds every attention block; INT8 keeps the predictions close."""
    pytest.importorskip("onnxruntime")
    m = tiny_model(3, c)
    ids, mask, types = padded_batch()
    with torch.no_grad():
        expected = m(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    plain = inference.OnnxModel(inference.export_onnx(m, str(tmp_path / "m.onnx")), 1)
    out = plain(ids, mask, types)
    assert isinstance(out, SequenceClassifierOutput) and out.to_tuple() == (out.logits,)
    assert torch.allclose(out.logits, expected, atol=1e-4)
    assert m.base_model.eager_attention is False          # export switches the eager path on only for itself
    fused_path, ops = inference.optimize_onnx(str(tmp_path / "m.onnx"), str(tmp_path / "m_fused.onnx"))
    # ours: the residual Adds and LayerNorms apart (ORT_DISABLED_OPTIMIZERS); as shipped: SkipLayerNormalization
    assert ops.get("Attention") == 2 and "SkipLayerNormalization" not in ops and ops.get("LayerNormalization") >= 4
    assert torch.allclose(inference.OnnxModel(fused_path, 1)(ids, mask, types).logits, expected, atol=1e-4)
    shipped, ops_shipped = inference.optimize_onnx(str(tmp_path / "m.onnx"), str(tmp_path / "m_shipped.onnx"),
                                                   skip_layer_norm=True)
    assert ops_shipped.get("Attention") == 2 and ops_shipped.get("SkipLayerNormalization", 0) >= 4
    assert torch.allclose(inference.OnnxModel(shipped, 1, disabled_optimizers=())(ids, mask, types).logits, expected,
                          atol=1e-4)
    import onnx
    session_graph = str(tmp_path / "session.onnx")   # the session leaves the two apart too
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = session_graph
    ort.InferenceSession(fused_path, opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(inference.ORT_DISABLED_OPTIMIZERS))
    assert "SkipLayerNormalization" not in {n.op_type for n in onnx.load(session_graph).graph.node}
    q = inference.OnnxModel(inference.quantize_onnx(fused_path, str(tmp_path / "m_int8.onnx")), 1)
    got = q(ids, mask, types).logits
    assert not torch.equal(got, out.logits) and (got - expected).abs().max() < 0.1 * expected.abs().max() + 1e-2


def test_peer_in_its_own_process(tiny_teacher, tmp_path):
    """--peer_process adds the peer timed in a fresh process with ONNX Runtime's defaults; 'vs peer' is against
    the faster of the two peer rows, named in every row; without --onnx_dir it is refused."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "speed.json"
    run_speed.main(["--model_name_or_path", tiny_teacher, "--batch_sizes", "1", "--seq_lens", "8", "--repeats",
                    "3", "--warmup", "1", "--threads", "1", "--no_int8", "--onnx_dir", str(tmp_path / "onnx"),
                    "--peer_process", "--json", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {f"{v} c={c}" for c in (1, 2) for v in ("fp32", "ort", "ort-int8")} | {run_speed.PEER_ALONE}
    (faster,) = {r["peer"] for r in rows.values()}   # one peer named in every row: the faster of the two
    other = run_speed.PEER_ALONE if faster == run_speed.PEER else run_speed.PEER
    assert faster in (run_speed.PEER, run_speed.PEER_ALONE)
    assert rows[faster]["median_ms"] <= rows[other]["median_ms"]   # (the JSON's ms are rounded: ties happen)
    for r in rows.values():
        assert r["peer"] == faster
        assert r["vs_peer"] == pytest.approx(rows[faster]["median_ms"] / r["median_ms"], rel=0.05)  # ms rounded
    assert rows[faster]["vs_peer"] == 1.0 and rows[run_speed.PEER]["vs_peer"] <= 1.0 >= rows[run_speed.PEER_ALONE]["vs_peer"]
    with pytest.raises(UserError, match="needs --onnx_dir"):
        run_speed.main(["--model_name_or_path", tiny_teacher, "--peer_process"])


def test_onnx_sessions_with_onnx_runtimes_defaults(tmp_path):
    """threads=None leaves ONNX Runtime's session options as they come (no thread count, no spin settings)."""
    pytest.importorskip("onnxruntime")
    path = inference.export_onnx(tiny_model(), str(tmp_path / "m.onnx"))
    opts = inference.OnnxModel(path, None).session.get_session_options()
    assert opts.intra_op_num_threads == 0
    for key in ("session.force_spinning_stop", *inference.OnnxModel.SPIN_KEYS):
        with pytest.raises(RuntimeError, match="does not have configuration"):
            opts.get_session_config_entry(key)


def test_onnx_sessions_spin_only_during_a_run(tmp_path):
    pytest.importorskip("onnxruntime")
    path = inference.export_onnx(tiny_model(), str(tmp_path / "m.onnx"))
    for spin, allowed in ((True, "1"), (False, "0")):
        opts = inference.OnnxModel(path, 1, spin=spin).session.get_session_options()
        assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
        for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            assert opts.get_session_config_entry(key) == allowed


def test_ort_int8_schemes_differ_and_unknown_is_a_user_error(tmp_path):
    pytest.importorskip("onnxruntime")
    m = tiny_model(2, 2.0)
    ids, mask, types = padded_batch()
    fused, _ = inference.optimize_onnx(inference.export_onnx(m, str(tmp_path / "m.onnx")), str(tmp_path / "f.onnx"))
    out = {s: inference.OnnxModel(inference.quantize_onnx(fused, str(tmp_path / f"{s}.onnx"), s), 1)(
        ids, mask, types).logits for s in inference.ORT_INT8_SCHEMES}
    assert len({tuple(v.flatten().tolist()) for v in out.values()}) == len(out)  # three different models
    with pytest.raises(UserError, match="unknown ONNX Runtime INT8 scheme"):
        inference.quantize_onnx(fused, str(tmp_path / "x.onnx"), "per_row")


@pytest.mark.parametrize("c", [None, 2.0])
def test_eager_attention_and_fused_qkv_are_the_same_function(c):
    m = tiny_model(2, c)
    ids, mask, types = padded_batch()
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        m.base_model.eager_attention = True
        eager = m(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        fused = inference.fused_copy(m)
        m.base_model.eager_attention = False
        fused.base_model.eager_attention = False
        got = fused(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert torch.allclose(eager, ref, atol=1e-5) and torch.allclose(got, ref, atol=1e-5)
    att = fused.base_model.layers[0].attention
    assert not hasattr(att, "q_lin") and att.qkv_lin.out_features == 3 * m.config.attn_dims[0]
    assert hasattr(m.base_model.layers[0].attention, "q_lin")   # a copy: the original keeps its layout


def test_traced_model_gives_the_same_logits_at_other_shapes():
    m = tiny_model(2, 2.0)
    q = inference.int8(m, "dynamic_per_channel")
    ts = inference.Traced(q, torch.randint(1000, 30000, (1, 12)))
    ids, mask, types = padded_batch(3, 21)
    with torch.no_grad():
        want = q(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    got = ts(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert torch.allclose(got, want, atol=1e-5)
    fp = inference.Traced(m, torch.randint(1000, 30000, (1, 12)))
    with torch.no_grad():
        assert torch.allclose(fp(ids, mask, types).logits,
                              m(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, atol=1e-5)


def test_int8_keeps_the_model_close():
    m = tiny_model()
    q = inference.int8(m, "dynamic")
    assert any("quantized" in type(mod).__module__ for mod in q.modules())
    ids = torch.randint(1000, 30000, (4, 12))
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, q(input_ids=ids).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-3


@pytest.mark.parametrize("backend", ["dynamic_per_channel", "smooth", "torchao"])
def test_other_int8_backends_keep_the_model_close(backend):
    if backend == "torchao":
        pytest.importorskip("torchao")
    m = tiny_model()
    cal = run_speed.random_batches(30522, n=2, batch_size=4, seq_len=12)
    q = inference.int8(m, backend, calibration=cal)
    ids = torch.randint(1000, 30000, (4, 12))
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, q(input_ids=ids).logits
    assert not torch.equal(a, b)                       # it did quantize
    if backend == "dynamic_per_channel":
        w = q.moddistilbert.layers[0].ffn.lin1.weight()
        assert w.qscheme() == torch.per_channel_affine and w.q_per_channel_scales().numel() == w.shape[0]
    if backend == "smooth":
        assert q.int8_alpha in inference.SMOOTH_ALPHAS
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-3
    assert torch.equal(m(input_ids=ids).logits, a)     # on a copy: the fp32 model is untouched


def test_smoothing_moves_an_outlier_channel_into_the_weights():
    """Before quantization the smoothed Linear is the same function; the input's outlier channel is flattened
    (its range moves into the weight), and INT8 of the smoothed layer is closer than plain per-tensor INT8."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(64, 16)
    x[:, 3] *= 100                                                    # BERT-style outlier dimension
    model = torch.nn.Sequential(lin)
    absmax = {"0": x.abs().amax(0)}
    smoothed = torch.nn.Sequential(torch.nn.Linear(16, 8))
    smoothed.load_state_dict(model.state_dict())
    inner = inference.smooth(smoothed, absmax, 0.5)
    assert inner == ["0.inner"] and isinstance(smoothed[0], inference.Smoothed)
    with torch.no_grad():
        assert torch.allclose(smoothed(x), lin(x), rtol=1e-4, atol=1e-4)
        spread = lambda t: (t.abs().amax(0).max() / t.abs().amax(0).min()).item()
        assert spread(x * smoothed[0].inv_scale) < spread(x) / 5      # ~117 -> ~12 at alpha 0.5
        qs = torch.ao.quantization.quantize_dynamic(smoothed, {"0.inner": torch.ao.quantization.
                                                               per_channel_dynamic_qconfig}, dtype=torch.qint8)
        qp = torch.ao.quantization.quantize_dynamic(model, {"0": torch.ao.quantization.per_channel_dynamic_qconfig},
                                                    dtype=torch.qint8)
        ref = lin(x)
        assert (qs(x) - ref).pow(2).sum() < (qp(x) - ref).pow(2).sum()


def test_input_absmax_records_every_layer_input():
    m = tiny_model()
    cal = run_speed.random_batches(30522, n=2, batch_size=2, seq_len=6)
    names = inference.linear_names(m)
    stats = inference.input_absmax(m, cal, names)
    assert set(stats) == set(names)
    assert stats["moddistilbert.layers.0.ffn.lin2"].shape == (m.config.ffn_dims[0],)
    assert all((s >= 0).all() for s in stats.values())


def test_sensitivity_ranks_every_layer_and_keeping_the_top_one_helps():
    m = tiny_model()
    cal = run_speed.random_batches(30522, n=2, batch_size=4, seq_len=12)
    ranking = inference.sensitivity(m, cal, "dynamic")
    names = [n for n, _ in ranking]
    assert sorted(names) == sorted(inference.linear_names(inference.fused_copy(m)))
    assert [e for _, e in ranking] == sorted((e for _, e in ranking), reverse=True) and ranking[0][1] > 0
    ref = inference.logits(m, cal)
    error_without = lambda name: inference.relative_error(
        inference.logits(inference.int8(m, "dynamic", only=[n for n in names if n != name]), cal), ref)
    assert error_without(names[0]) < error_without(names[-1])


def test_int8_only_and_keep_fp32_choose_the_layers():
    m = tiny_model()
    q = inference.int8(m, "dynamic_per_channel", only=["moddistilbert.layers.0.ffn.lin1"])
    quantized = [n for n, x in q.named_modules() if type(x).__name__ == "Linear" and "quantized" in type(x).__module__]
    assert quantized == ["moddistilbert.layers.0.ffn.lin1"]


@needs_full_data  # its tolerances count flips among all 408 MRPC / 277 RTE validation rows
def test_int8_accuracy_of_a_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    from conftest import SHARED_DATA, save_with_tokenizer
    m = tiny_model(2, 2.0)
    d = save_with_tokenizer(m, tmp_path / "ckpt")
    acc = run_speed.accuracy_rows(d, "mrpc", SHARED_DATA, ["dynamic", "smooth"], onnx_dir=str(tmp_path / "onnx"),
                                  most_sensitive=2)
    keys = {"fp32", "int8", "int8[smooth]", "int8+fp32 top 2", "int8[smooth]+fp32 top 2", "ort", "ort-int8"}
    assert keys | {"details"} == set(acc)
    for k in keys:
        assert 0.0 <= acc[k]["accuracy"] <= 1.0 and 0 <= acc[k]["score"] <= 100
    assert acc["ort"]["accuracy"] == pytest.approx(acc["fp32"]["accuracy"], abs=1 / 408)   # same model, fp32
    assert len(acc["int8+fp32 top 2"]["fp32_layers"]) == 2
    assert acc["details"]["int8[smooth] alpha"] in inference.SMOOTH_ALPHAS
    assert len(acc["details"]["int8 sensitivity"]) == len(inference.linear_names(inference.fused_copy(m)))
    out = tmp_path / "acc.json"
    run_speed.main(["--checkpoint", d, "--task", "rte", "--data_dir", SHARED_DATA, "--accuracy_only",
                    "--int8_backends", "dynamic", "dynamic_per_channel", "--int8_activation_bits", "7",
                    "--accuracy_json", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved) == {"checkpoint", "task", "int8_keep_fp32", "machine", "fp32", "int8",
                          "int8[dynamic_per_channel]"}
    # 277 validation rows: the same logits up to INT8 error flip at most a few predictions
    assert abs(saved["fp32"]["accuracy"] - saved["int8"]["accuracy"]) <= 10 / 277
    with pytest.raises(UserError, match="--accuracy_only needs --checkpoint"):
        run_speed.main(["--accuracy_only"])


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


def test_several_compressions_in_one_run(tiny_teacher, tmp_path):
    out = tmp_path / "speed.json"
    run_speed.main(["--model_name_or_path", tiny_teacher, "--compression", "1.5", "2", "4", "--batch_sizes", "1",
                    "--seq_lens", "8", "--repeats", "2", "--warmup", "1", "--threads", "1", "--no_int8",
                    "--json", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"fp32 c=1", "fp32 c=1.5", "fp32 c=2", "fp32 c=4"}
    assert [rows[f"fp32 c={c}"]["compression"] for c in ("1", "1.5", "2", "4")] == [1.0, 1.5, 2.0, 4.0]
    bounds = [rows[f"fp32 c={c}"]["flop_bound"] for c in ("1", "1.5", "2", "4")]
    assert bounds[0] == 1.0 and bounds == sorted(bounds) and bounds[-1] > 3


def test_bad_inputs_are_user_errors(tiny_teacher):
    with pytest.raises(UserError, match="unknown INT8 scheme"):
        inference.int8(torch.nn.Linear(2, 2), "int4")
    with pytest.raises(UserError, match="needs calibration"):
        inference.int8(tiny_model(), "smooth")
    for bad in ("0.5", "1"):
        with pytest.raises(UserError, match="--compression values must be > 1"):
            run_speed.main(["--model_name_or_path", tiny_teacher, "--compression", "2", bad, "--no_int8"])


@pytest.mark.parametrize("backend", ["dynamic", "dynamic_per_channel", "torchao"])
def test_int8_keep_fp32_leaves_the_named_layers_alone(backend):
    if backend == "torchao":
        pytest.importorskip("torchao")
    m = tiny_model()
    fused = inference.fused_copy(m)
    q = inference.int8(m, backend, keep_fp32=["lin2", "classifier"])
    layers = dict(q.named_modules())
    names = [n for n, x in fused.named_modules() if isinstance(x, torch.nn.Linear)]
    kept = [n for n in names if "lin2" in n or "classifier" in n]
    assert kept and len(kept) < len(names)
    for n in names:
        plain = type(layers[n]) is torch.nn.Linear and layers[n].weight.dtype == torch.float32 \
            and type(layers[n].weight) in (torch.nn.Parameter, torch.Tensor)
        assert plain == (n in kept), n
        if n in kept:
            assert torch.equal(layers[n].weight, dict(fused.named_modules())[n].weight)


def test_eight_bit_activations_are_closer_where_the_cpu_has_int8_dot_products():
    """torch's dynamic Linear rounds its input to 7 bits; activation_bits=8 uses all 8 (exact with VNNI/AMX)."""
    m = tiny_model()
    q7, q8 = inference.int8(m, "dynamic_per_channel"), inference.int8(m, "dynamic_per_channel", activation_bits=8)
    assert {type(x).__name__ for x in q8.modules()} >= {"FullRangeDynamicLinear"}
    assert "FullRangeDynamicLinear" not in {type(x).__name__ for x in q7.modules()}
    assert inference.int8_label("dynamic", 8) == "int8[dynamic,x8]" and inference.int8_label("dynamic") == "int8"
    if not inference.has_int8_dot_product():
        pytest.skip("no VNNI/AMX here: 8-bit activations may saturate, nothing to compare")
    cal = run_speed.random_batches(30522, n=2, batch_size=4, seq_len=16)
    ref = inference.logits(m, cal)
    e7 = inference.relative_error(inference.logits(q7, cal), ref)
    e8 = inference.relative_error(inference.logits(q8, cal), ref)
    assert e8 < e7
    ts = inference.Traced(q8, torch.randint(1000, 30000, (1, 12)))     # the traced graph keeps the 8 bits
    assert torch.allclose(inference.logits(ts, cal), inference.logits(q8, cal), atol=1e-5)
    with pytest.raises(UserError, match="activation_bits"):
        inference.int8(m, "torchao", activation_bits=8)


def test_has_int8_dot_product_reads_the_isa_flags():
    assert inference.has_int8_dot_product({"isa": ["avx2", "avx512f", "avx512_vnni"]})
    assert inference.has_int8_dot_product({"isa": ["avx2", "avx_vnni"]})
    assert not inference.has_int8_dot_product({"isa": ["avx2", "avx512f"]})
