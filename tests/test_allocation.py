"""One budget, every block (allocation.py): the cost model, the exact choice, the curves, and the stages'
--allocate end to end (both blocks, the budget kept, allocation.json shared, removed blocks)."""
import itertools
import json
import os

import pytest
import torch

from modcomp import allocation
from modcomp import capture as capture_data
from modcomp import data_init
import ffn_modular
import mha_modular
from modcomp import modular
from modcomp import runner as run_superglue
from modcomp.activations import ActivationStore
from modcomp.compression import compress, load_modules, save_block
from modeling_moddistilbert import (FeedForward, ModDistilBertForSequenceClassification, MultiHeadSelfAttention,
                                    attention_mask_4d, make_block)
from modcomp.utils import UserError


# ------------------------------------------------------------------ cost and choice
def test_block_macs_count_the_matrix_products():
    from modeling_moddistilbert import ModDistilBertConfig
    c = ModDistilBertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            attn_dims=[384] * 6, ffn_dims=[1536] * 6)
    T, H = 128, 384
    assert allocation.block_macs(c, "mha", 384, T) == 4 * T * H * 384 + 2 * T * T * 384   # q k v o + QK^T + PV
    assert allocation.block_macs(c, "ffn", 1536, T) == 2 * T * H * 1536
    assert allocation.block_macs(c, "mha", 0, T) == allocation.block_macs(c, "ffn", 0, T) == 0
    # uniform compression by c divides every block's cost, hence the encoder's, by c
    half = {l: (192, 768) for l in range(6)}
    assert allocation.encoder_macs(c, T) == 2 * allocation.encoder_macs(c, T, half)


def test_choose_is_exact():
    """The dynamic programme finds the same minimum as trying every combination, within the budget."""
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        options = {}
        for b in range(4):
            sizes = sorted(set(torch.randint(0, 9, (4,), generator=g).tolist()) | {0})
            options[b] = {s: (s * (3 + b), float(torch.rand(1, generator=g)) / (1 + s)) for s in sizes}
        budget = int(torch.randint(5, 60, (1,), generator=g))
        best = min((sum(options[b][s][1] for b, s in zip(options, combo)), combo)
                   for combo in itertools.product(*[sorted(o) for o in options.values()])
                   if sum(options[b][s][0] for b, s in zip(options, combo)) <= budget)
        pick = allocation.choose(options, budget)
        assert sum(options[b][pick[b]][0] for b in options) <= budget
        assert sum(options[b][pick[b]][1] for b in options) == pytest.approx(best[0])


def test_choose_at_the_full_budget_keeps_every_block_whole():
    options = {b: {s: (s * 10, 1.0 - s / 8 if s < 8 else 0.0) for s in (0, 2, 4, 8)} for b in range(3)}
    assert allocation.choose(options, 3 * 80) == {0: 8, 1: 8, 2: 8}
    with pytest.raises(UserError, match="no choice"):
        allocation.choose({0: {4: (40, 0.0)}}, 10)


def test_grids_reach_down_to_removal():
    assert allocation.head_dim_grid(32) == [0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32]
    assert allocation.head_dim_grid(8)[:3] == [0, 1, 2] and allocation.head_dim_grid(8)[-1] == 8
    w = allocation.width_grid(1536)
    assert w[0] == 0 and w[-1] == 1536 and w[1] == 16 and all(x % 16 == 0 for x in w)
    assert allocation.width_grid(64)[-1] == 64


# ------------------------------------------------------------------ curves
def _tokens(n, H, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, H, generator=g) @ torch.randn(H, H, generator=g) * 0.5


@torch.no_grad()
def test_ffn_curve_equals_refitting_every_width():
    """The one-Cholesky curve gives, at every width, the held-out error of data_init.fit_ffn at that width."""
    torch.manual_seed(0)
    H, F = 16, 48
    teacher = FeedForward(H, F).eval()
    x = _tokens(600, H, 1)
    y = teacher(x)
    train, val = torch.arange(500), torch.arange(500, 600)
    widths = [0, 8, 24, 48]
    curve = allocation.ffn_curve(teacher, x, y, train, val, widths, "cpu")
    handed = allocation.ffn_curve(teacher, x, y, train, val, widths, "cpu", hidden=teacher.act(teacher.lin1(x)))
    for w in widths[1:]:
        s = FeedForward(H, w).eval()
        data_init.fit_ffn(teacher, s, x, y, train, "cpu")
        assert curve[w] == pytest.approx(float(((s(x[val]) - y[val]) ** 2).sum()), rel=1e-3, abs=1e-9)
    assert handed == pytest.approx(curve, rel=1e-6, abs=1e-12)  # the hidden activations handed over (ffn_io)
    assert curve[0] == pytest.approx(float(((y[val] - y[train].mean(0)) ** 2).sum()), rel=1e-6)
    assert curve[48] < 1e-6 * curve[0]


@torch.no_grad()
def test_ffn_curve_with_fewer_tokens_than_units():
    """Fewer fitted tokens than FFN units (a tiny --fit_tokens): the Gram matrix is singular; the curve is still
    measured (more ridge) instead of failing in the Cholesky factorisation."""
    torch.manual_seed(0)
    teacher = FeedForward(16, 64).eval()
    x = _tokens(60, 16, 5)
    curve = allocation.ffn_curve(teacher, x, teacher(x), torch.arange(40), torch.arange(40, 60), [0, 32, 64], "cpu")
    assert all(v == v and v >= 0 for v in curve.values()) and curve[64] < curve[0]


@torch.no_grad()
def test_attention_curve_is_exact_at_full_rank_and_the_mean_at_zero():
    torch.manual_seed(0)
    H, nh = 16, 4
    teacher = MultiHeadSelfAttention(H, nh, H).eval()
    lengths = torch.tensor([7, 5, 9, 6, 8, 4, 7, 5])
    x = _tokens(int(lengths.sum()), H, 2)
    offs = data_init.sequence_offsets(lengths)
    xb, mask = data_init.pad_sequences(x, lengths, torch.arange(8), offs)
    y = teacher(xb, attention_mask_4d(mask))[mask]
    train, val = torch.arange(6), torch.arange(6, 8)
    curve = allocation.attention_curve(teacher, x, y, lengths, train, val, [0, 2, 4], "cpu")
    vt = data_init.flat_positions(lengths, val)
    mean = y[data_init.flat_positions(lengths, train)].mean(0)
    assert curve[0] == pytest.approx(float(((y[vt] - mean) ** 2).sum()), rel=1e-5)
    assert curve[4] < 1e-8 * curve[0] and curve[2] < curve[0]


# ------------------------------------------------------------------ removed blocks and the data fit
@torch.no_grad()
def test_a_removed_block_is_fitted_to_the_mean_output():
    torch.manual_seed(0)
    teacher = FeedForward(16, 32)
    x = _tokens(100, 16, 3)
    y = teacher(x)
    s = FeedForward(16, 0)
    info = data_init.fit_block(teacher, s, x, y, torch.tensor([50, 50]), torch.tensor([0]), "cpu")
    assert info["removed"] and torch.allclose(s(x[None])[0, 0], y[:50].mean(0), atol=1e-6)


def test_attention_outputs_of_a_subset_follow_its_order(tiny_bert_dir):
    """attention_outputs on sequences (2, 0) gives sequence 2's rows, then sequence 0's (the order of
    flat_positions, which the curves index the targets with), each as the attention computes it alone."""
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2).eval()
    lengths = torch.tensor([5, 9, 3, 7])
    x = _tokens(int(lengths.sum()), 32, 6)
    attn = model.base_model.layers[0].attention
    got = data_init.attention_outputs(attn, x, lengths, torch.tensor([2, 0]), "cpu")
    with torch.no_grad():
        want = torch.cat([attn(x[14:17][None])[0], attn(x[0:5][None])[0]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fit_tokens_subset_follows_the_seed():
    """--fit_tokens draws its subset with the stage's --seed (it used seed 0 whatever --seed said)."""
    torch.manual_seed(0)
    teacher = FeedForward(16, 32)
    lengths = torch.full((40,), 10)
    x = _tokens(400, 16, 4)
    y = teacher(x).detach()
    fits = {}
    for seed in (1, 1, 2):
        s = FeedForward(16, 8)
        data_init.fit_block(teacher, s, x, y, lengths, torch.arange(40), "cpu", max_tokens=100, seed=seed)
        fits.setdefault(seed, []).append(s.lin2.weight.detach().clone())
    assert torch.equal(fits[1][0], fits[1][1]) and not torch.allclose(fits[1][0], fits[2][0])


def test_compress_with_data_keeps_each_blocks_mode(tiny_bert_dir):
    """compress(init="data") fitted in eval mode and returned every block in eval mode; it keeps the model's own
    mode (and device: the default fit device is the model's)."""
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2).train()
    ids = torch.randint(5, 1000, (6, 9))
    with torch.no_grad():
        xs = model.base_model(ids, output_hidden_states=True).hidden_states
    data = {l: (xs[l].reshape(-1, 32), torch.full((6,), 9)) for l in range(2)}
    compress(model, 2.0, "data", data=data)
    assert all(m.training for m in model.modules())
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}


# ------------------------------------------------------------------ the stages, end to end
@pytest.fixture(scope="module")
def stsb_capture(tiny_bert_dir, tmp_path_factory):
    cap = str(tmp_path_factory.mktemp("alloc") / "cap")
    capture_data.main(["--model_name_or_path", tiny_bert_dir, "--task", "stsb", "--output_dir", cap,
                       "--max_samples", "40", "--dtype", "fp32"])
    return cap


def _stages(cap, out, c, *extra):
    common = ["--activations_dir", cap, "--output_dir", out, "--init", "data", "--epochs", "0",
              "--compression", str(c), "--allocate", "--threads", "1", *extra]
    mha_modular.main(common)
    ffn_modular.main(common)
    with open(os.path.join(out, "allocation.json")) as f:
        return json.load(f)


def test_allocate_spends_one_budget_on_both_blocks(stsb_capture, tiny_bert_dir, tmp_path):
    """Both stages read one allocation.json; the modules have its sizes; the multiply-adds stay within 1/c of
    the uncompressed encoder's; run_superglue builds the model at those sizes and records them."""
    out = str(tmp_path / "mod")
    alloc = _stages(stsb_capture, out, 3)
    b = alloc["budget"]
    assert b["used_macs"] <= b["budget_macs"] == b["uncompressed_macs"] // 3
    assert b["achieved_compression"] >= 3 and b["used_macs"] > 0.9 * b["budget_macs"]
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    sizes = {(e["layer"], e["block"]): e["inner_size"] for e in report["layers"]}
    for l, (a, w) in alloc["dims"].items():
        assert sizes[(int(l), "mha")] == a and sizes[(int(l), "ffn")] == w
    assert set(alloc["curves"]["0"]) == {"mha", "ffn"}
    ft = tmp_path / "ft"
    run_superglue.main(["--model_name_or_path", tiny_bert_dir, "--task", "stsb", "--output_dir", str(ft),
                        "--compression", "3", "--init", "data", "--modules_dir", out, "--epochs", "1",
                        "--max_train_samples", "16", "--max_eval_samples", "8", "--threads", "1"])
    model = ModDistilBertForSequenceClassification.from_pretrained(str(ft / "model"))
    assert [[a, w] for a, w in zip(model.config.attn_dims, model.config.ffn_dims)] == list(alloc["dims"].values())
    with open(ft / "results.json") as f:
        macs = json.load(f)["macs"]       # every score is reported with its multiply-adds
    assert macs["encoder_macs"] == b["used_macs"] and macs["uncompressed_encoder_macs"] == b["uncompressed_macs"]
    assert macs["achieved_compression"] >= 3 and macs["length"] == 128
    # a rerun of a stage reads the allocation instead of measuring it again
    mtime = os.path.getmtime(os.path.join(out, "allocation.json"))
    mha_modular.main(["--activations_dir", stsb_capture, "--output_dir", out, "--init", "data", "--epochs", "0",
                      "--compression", "3", "--allocate", "--threads", "1"])
    assert os.path.getmtime(os.path.join(out, "allocation.json")) == mtime


def test_closed_form_script_fits_an_allocation(stsb_capture, tiny_bert_dir, tmp_path):
    """closed_form.py --allocation: the blocks take the allocation's sizes; isolated, they are the stages' own
    blocks (the same fit on the same tokens); sequential, they load into the allocated model as the stages'
    do; an allocation made at another --compression is refused."""
    from modcomp import closed_form
    from safetensors.torch import load_file
    mod = str(tmp_path / "mod")
    alloc = _stages(stsb_capture, mod, 3)
    path = os.path.join(mod, "allocation.json")
    for sequential in (False, True):
        out = str(tmp_path / f"cf{int(sequential)}")
        closed_form.main(["--activations_dir", stsb_capture, "--output_dir", out, "--compression", "3",
                          "--allocation", path, "--threads", "1"] + (["--sequential"] if sequential else []))
        model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=1)
        compress(model, 3.0, "svd")
        names, missing = load_modules(model, out)
        assert len(names) == 4 and missing == []
        assert [[a, w] for a, w in zip(model.config.attn_dims, model.config.ffn_dims)] == list(alloc["dims"].values())
        for name in names:
            ours, theirs = load_file(os.path.join(out, name)), load_file(os.path.join(mod, name))
            assert ours.keys() == theirs.keys()
            if not sequential:
                for k in ours:
                    torch.testing.assert_close(ours[k], theirs[k], atol=1e-5, rtol=1e-4)
    # the sequential fit took its own path: layer 1's FFN is fitted on inputs that come from layer 0's compressed
    # blocks, not the teacher's (its attention is removed in this allocation: a constant, nearly the same)
    iso, seq = (load_file(os.path.join(tmp_path / f"cf{i}", "layer01_ffn.safetensors")) for i in (0, 1))
    assert any(not torch.allclose(iso[k], seq[k], atol=1e-4) for k in iso)
    with pytest.raises(UserError, match="compression"):
        closed_form.main(["--activations_dir", stsb_capture, "--output_dir", str(tmp_path / "bad"),
                          "--compression", "2", "--allocation", path, "--threads", "1"])


def test_blocks_of_two_allocations_in_one_dir_are_refused(stsb_capture, tiny_bert_dir, tmp_path):
    """A stage rerun into the same dir with other settings makes a new allocation while the other stage's blocks
    keep the old sizes: together they would not keep the budget, so load_modules refuses the mix (each block
    records the allocation it was sized by)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    out = str(tmp_path / "mod")
    _stages(stsb_capture, out, 3)
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=1)
    compress(model, 3.0, "svd")
    load_modules(model, out)                                     # one allocation: fine
    path = os.path.join(out, "layer00_mha.safetensors")
    with safe_open(path, "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, path, metadata={**meta, "allocation": meta["allocation"].replace("[", "[1", 1)})
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=1)
    compress(model, 3.0, "svd")
    with pytest.raises(UserError, match="two different allocations"):
        load_modules(model, out)


def test_a_new_allocation_refits_blocks_whose_size_it_kept(stsb_capture, tiny_bert_dir, tmp_path, monkeypatch):
    """Both stages rerun into the same dir after the allocation changed (here: a new allocation.VERSION, and one
    block's size moved) refit every block, also those whose size stayed: the dir then holds one allocation and
    loads (the blocks used to be skipped with the old allocation recorded, and load_modules refused the dir)."""
    out = str(tmp_path / "mod")
    first = _stages(stsb_capture, out, 3)
    real = allocation.allocate

    def moved(*a, **k):  # the same allocation but layer 0's attention one grid step away
        result = real(*a, **k)
        grid = [s * 4 for s in allocation.head_dim_grid(8)]  # the tiny model: 4 heads of dim 8
        result["dims"][0][0] = grid[(grid.index(result["dims"][0][0]) + 1) % len(grid)]
        return result

    monkeypatch.setattr(allocation, "VERSION", allocation.VERSION + "-test")
    monkeypatch.setattr(allocation, "allocate", moved)
    second = _stages(stsb_capture, out, 3)
    assert second["dims"]["0"][0] != first["dims"]["0"][0] and second["dims"]["1"] == first["dims"]["1"]
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=1)
    compress(model, 3.0, "svd")
    load_modules(model, out)
    assert [[a, w] for a, w in zip(model.config.attn_dims, model.config.ffn_dims)] == list(second["dims"].values())


def test_allocate_at_c1_keeps_every_block_whole(stsb_capture, tmp_path):
    alloc = _stages(stsb_capture, str(tmp_path / "mod"), 1)
    assert all(d == [32, 64] for d in alloc["dims"].values()) and alloc["budget"]["achieved_compression"] == 1


def test_modules_of_another_compression_or_task_are_refused(stsb_capture, tiny_bert_dir, tmp_path):
    out = str(tmp_path / "mod")
    _stages(stsb_capture, out, 2)
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=1)
    compress(model, 4.0, "svd")
    with pytest.raises(UserError, match="made for --compression 2"):
        load_modules(model, out)
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=1)
    compress(model, 2.0, "svd")
    with pytest.raises(UserError, match="fitted on stsb data, but this run is rte"):
        load_modules(model, out, task="rte")


def test_removed_blocks_load_run_save_and_reload(tiny_bert_dir, tmp_path):
    """Allocated modules of size 0 remove their block: the model runs, saves and reloads with the same logits."""
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2).eval()
    compress(model, 2.0, "svd")
    meta = {"allocated": True, "compression": 2.0}
    gone_attn, gone_ffn = make_block(model.config, 0, "mha", 0), make_block(model.config, 1, "ffn", 0)
    with torch.no_grad():
        gone_attn.out_lin.bias.fill_(0.1)
        gone_ffn.lin2.bias.fill_(-0.2)
    save_block(str(tmp_path / "layer00_mha.safetensors"), gone_attn, {**meta, "block": "mha", "layer": 0, "inner_size": 0})
    save_block(str(tmp_path / "layer01_ffn.safetensors"), gone_ffn, {**meta, "block": "ffn", "layer": 1, "inner_size": 0})
    load_modules(model, str(tmp_path), allow_partial=True)
    assert model.config.attn_dims[0] == 0 and model.config.ffn_dims[1] == 0
    ids = torch.randint(5, 1000, (2, 7))
    with torch.no_grad():
        ref = model(ids, torch.ones_like(ids)).logits
    model.save_pretrained(str(tmp_path / "saved"))
    again = ModDistilBertForSequenceClassification.from_pretrained(str(tmp_path / "saved")).eval()
    with torch.no_grad():
        assert torch.allclose(again(ids, torch.ones_like(ids)).logits, ref, atol=1e-6)


def test_allocate_beyond_uniform_sizes(stsb_capture, tiny_bert_dir, tmp_path):
    """--allocate spends any budget: at c = 20 uniform sizes do not exist for the tiny model (head dim 8 / 20
    rounds to 0), but the allocation does (blocks thin or removed); the stages and run_superglue take it."""
    out = str(tmp_path / "mod")
    with pytest.raises(UserError, match="too large"):          # uniform sizes: refused, as before
        mha_modular.main(["--activations_dir", stsb_capture, "--output_dir", str(tmp_path / "u"), "--init", "data",
                          "--epochs", "0", "--compression", "20", "--threads", "1", "--allocate", "0"])
    alloc = _stages(stsb_capture, out, 20)
    assert alloc["budget"]["achieved_compression"] >= 20
    ft = tmp_path / "ft"
    run_superglue.main(["--model_name_or_path", tiny_bert_dir, "--task", "stsb", "--output_dir", str(ft),
                        "--compression", "20", "--init", "data", "--modules_dir", out, "--epochs", "1",
                        "--max_train_samples", "16", "--max_eval_samples", "8", "--threads", "1"])
    with open(ft / "results.json") as f:
        assert json.load(f)["macs"]["achieved_compression"] >= 20
    os.remove(os.path.join(out, "layer01_ffn.safetensors"))     # a partial dir: the missing block takes the
    from modcomp.finetune import build_model                             # size its allocation.json gave it
    from modcomp.tasks import get_task
    model, _, _ = build_model(tiny_bert_dir, get_task("stsb"), 20.0, "data", out, allow_partial_modules=True)
    assert [[a, w] for a, w in zip(model.config.attn_dims, model.config.ffn_dims)] == list(alloc["dims"].values())


def test_layernorm_currency_is_the_error_after_the_layernorm():
    """The layernorm currency: a small error e added to the residual stream r changes LN(r) by what the currency
    says (to first order), relative to LN(r)'s own energy; the residual currency is ||e||^2 / ||r||^2."""
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(64)
    with torch.no_grad():
        ln.weight.uniform_(0.2, 2.0)
        ln.bias.normal_()
    r = torch.randn(200, 64) * torch.linspace(0.5, 3, 64) + 1.0
    r[:, 3] += 40.0                                              # an outlier dim, as BERT's residual streams have
    e = 1e-3 * torch.randn(200, 64)
    val = torch.arange(100, 200)
    with torch.no_grad():
        moved = ((ln(r[val]) - ln(r[val] - e[val])) ** 2).sum() / ((ln(r[val]) - ln.bias) ** 2).sum()
    got = allocation.currency("layernorm", ln, r, val)(e[val], val)
    assert got == pytest.approx(float(moved), rel=0.05)
    resid = allocation.currency("residual", ln, r, val)(e[val], val)
    assert resid == pytest.approx(float((e[val] ** 2).sum() / (r[val] ** 2).sum()), rel=1e-9)
    assert got > 3 * resid                                       # the outlier inflates the residual's energy
    with pytest.raises(ValueError, match="currency must be one of"):
        allocation.currency("own", ln, r, val)


def test_output_currency_is_the_layernorm_curve_times_a_measured_sensitivity(stsb_capture):
    """--currency output: each block's layernorm curve scaled by how much of its error reaches the encoder's
    output (measured once per block, with the block at its uniform size and every other block the teacher's)."""
    store = ActivationStore(stsb_capture)
    teacher, _ = modular.load_capture_teacher(store)
    train_idx, val_idx = modular.holdout_split(store.sequence_info()[1], 0.2, 0)
    got = {c: allocation.allocate(teacher, store, train_idx, val_idx, 2.0, "cpu", currency_name=c, log=lambda m: 0)
           for c in ("layernorm", "output")}
    sens = got["output"]["sensitivity"]
    assert set(sens) == {"0", "1"} and all(v > 0 for s in sens.values() for v in s.values())
    for l, cs in got["layernorm"]["curves"].items():
        for kind, curve in cs.items():
            for size, e in curve.items():
                assert got["output"]["curves"][l][kind][size] == pytest.approx(e * sens[l][kind], rel=1e-9)
    # the last layer's FFN feeds the output directly: its sensitivity is the layernorm currency's own scale
    assert 0.2 < sens["1"]["ffn"] < 5
