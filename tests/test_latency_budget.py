"""--budget latency (issue 27 item 3): a per-machine latency table of block shapes (latency.py), fewer heads per
layer (fit_mha from a subset of the teacher's heads, ranked by head_order), one budget in measured time over
heads, head dims, FFN widths and removed blocks; exact at c=1; the allocated model saves, reloads and exports."""
import json
import os

import pytest
import torch

from modcomp import allocation, data_init, latency
from modcomp import capture as capture_data
from modcomp import runner as run_superglue
from modcomp.utils import UserError
from modeling_moddistilbert import ModDistilBertForSequenceClassification, MultiHeadSelfAttention
import ffn_modular
import mha_modular


def synthetic_table(hidden=32, nh=4, d=8, F=64, length=128, threads=1, fixed=0.02, base=0.05):
    """A made-up table of the tiny BERT's shapes: attention 0.01 ms a head + 0.002 ms a head dim unit, FFN
    0.001 ms a unit of width."""
    return {"key": latency.table_key(hidden, nh, d, F, length, "ort-int8", threads, 2), "fixed_ms": fixed,
            "base_ms": base, "mha": {f"{k},{r}": 0.01 * k + 0.002 * k * r for k in latency.head_grid(nh)
                                     for r in latency.measured_dims(d)},
            "ffn": {str(w): 0.001 * w for w in latency.measured_widths(F)}}


def test_the_table_interpolates_and_adds_up():
    t = synthetic_table()
    assert latency.head_grid(12) == [1, 2, 3, 4, 6, 8, 12] and latency.head_grid(4) == [1, 2, 3, 4]
    # the grids' smallest sizes are measured: head dim 2 (1 is left out of a latency budget), width F/96
    assert latency.measured_dims(32) == [2, 4, 8, 16, 32] and latency.measured_dims(8) == [2, 4, 8]
    assert latency.measured_widths(64) == [1, 8, 16, 24, 32, 40, 48, 56, 64]
    assert latency.measured_widths(1536) == [16, 192, 384, 576, 768, 960, 1152, 1344, 1536]
    assert latency.block_ms(t, "mha", 2 * 8, 2) == pytest.approx(0.02 + 0.032)        # a measured shape
    assert latency.block_ms(t, "mha", 2 * 6, 2) == pytest.approx(0.02 + 0.024)        # between 4 and 8: linear
    assert latency.block_ms(t, "ffn", 20, None) == pytest.approx(0.020)
    # below the smallest measured size: what the smallest costs, not a line towards 0 (its operators all run)
    small = {**t, "mha": {k: v for k, v in t["mha"].items() if not k.endswith(",2")}}
    assert latency.block_ms(small, "mha", 2 * 2, 2) == pytest.approx(0.02 + 0.016)
    assert latency.block_ms({**t, "ffn": {"8": 0.008}}, "ffn", 3) == pytest.approx(0.008)
    old = {**small, "key": {**t["key"], "version": 2}}       # a committed version 2 table reads as it was read
    assert latency.block_ms(old, "mha", 2 * 2, 2) == pytest.approx((0.02 + 0.016) / 2)
    assert latency.block_ms(t, "mha", 0, 0) == latency.block_ms(t, "ffn", 0) == 0
    full = latency.encoder_ms(t, [(4, 32, 64)] * 2)
    assert full == pytest.approx(0.05 + 2 * (0.02 + 0.04 + 0.064 + 0.064))
    with pytest.raises(ValueError, match="no row of 5 heads"):
        latency.block_ms(t, "mha", 10, 5)


def _attention(seed=0, H=32, nh=4, d=8):
    torch.manual_seed(seed)
    a = MultiHeadSelfAttention(H, nh, nh * d).eval()
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0, 0.3)
    return a


def _inputs(n=6, T=7, H=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T - i % 3 for i in range(n)])
    return torch.randn(int(lengths.sum()), H, generator=g), lengths


@torch.no_grad()
def test_a_subset_of_heads_at_full_rank_is_exactly_those_heads():
    """fit_mha(heads=[2, 0]) at the teacher's head dim: the student is the teacher with heads 1 and 3 left out
    (their value bias, a constant since each attention row sums to 1, stays in the output bias)."""
    teacher = _attention()
    x, lengths = _inputs()
    idx = torch.arange(len(lengths))
    stats = data_init.mha_statistics(teacher, x, lengths, idx, "cpu")
    student = MultiHeadSelfAttention(32, 2, 16)
    data_init.fit_mha(teacher, student, stats, heads=[2, 0])
    masked = _attention()
    d = 8
    for h in (1, 3):
        cols = slice(h * d, (h + 1) * d)
        masked.out_lin.bias += masked.out_lin.weight[:, cols] @ masked.v_lin.bias[cols]
        masked.out_lin.weight[:, cols] = 0
    want = data_init.attention_outputs(masked, x, lengths, idx, "cpu")
    got = data_init.attention_outputs(student.eval(), x, lengths, idx, "cpu")
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    with pytest.raises(ValueError, match="distinct teacher heads"):
        data_init.fit_mha(teacher, student, stats, heads=[2, 2])


@torch.no_grad()
def test_heads_are_ranked_by_their_contribution():
    teacher = _attention()
    teacher.out_lin.weight[:, 24:32] *= 10    # head 3: ten times the output
    teacher.out_lin.weight[:, 8:16] = 0       # head 1: none
    x, lengths = _inputs()
    order = allocation.head_order(teacher, x, lengths, torch.arange(len(lengths)), "cpu")
    assert order[0] == 3 and order[-1] == 1 and sorted(order) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def capture(tiny_bert_dir, tmp_path_factory):
    cap = str(tmp_path_factory.mktemp("lat") / "cap")
    capture_data.main(["--model_name_or_path", tiny_bert_dir, "--task", "stsb", "--output_dir", cap,
                       "--max_samples", "40", "--dtype", "fp32"])
    return cap


@pytest.fixture
def cached_table(tmp_path, monkeypatch):
    """The synthetic table as this machine's cached one (MODCOMP_CACHE): no measuring in the quick tests."""
    monkeypatch.setenv("MODCOMP_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    t = synthetic_table()
    path = latency.table_path(t["key"])
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(t, f)
    return t


def _stages(cap, out, c, *extra):
    common = ["--activations_dir", cap, "--output_dir", out, "--init", "data", "--epochs", "0", "--compression",
              str(c), "--allocate", "--budget", "latency", "--threads", "1", *extra]
    mha_modular.main(common)
    ffn_modular.main(common)
    with open(os.path.join(out, "allocation.json")) as f:
        return json.load(f)


def test_a_latency_budget_chooses_heads_and_sizes_and_the_model_follows(capture, cached_table, tiny_bert_dir,
                                                                       tmp_path):
    out = str(tmp_path / "mod")
    alloc = _stages(capture, out, 2)
    b = alloc["budget"]["latency"]
    assert b["predicted_ms"] <= b["budget_ms"] + 1e-6 and b["predicted_ratio"] >= 2 - 1e-6
    assert b["uncompressed_ms"] == pytest.approx(latency.encoder_ms(cached_table, [(4, 32, 64)] * 2))
    heads = {int(l): k for l, k in alloc["heads"].items()}
    assert set(alloc["head_order"]) == {"0", "1"} and all(sorted(o) == [0, 1, 2, 3]
                                                          for o in alloc["head_order"].values())
    for l, (a, w) in alloc["dims"].items():
        k = heads[int(l)]
        assert (a == 0) == (k == 0) and (not k or a % k == 0)
    assert any("," in s for s in alloc["curves"]["0"]["mha"])          # curves over (heads, head dim)
    ft = tmp_path / "ft"
    run_superglue.main(["--model_name_or_path", tiny_bert_dir, "--task", "stsb", "--output_dir", str(ft),
                        "--compression", "2", "--init", "data", "--modules_dir", out, "--epochs", "1",
                        "--max_train_samples", "16", "--max_eval_samples", "8", "--threads", "1"])
    model = ModDistilBertForSequenceClassification.from_pretrained(str(ft / "model")).eval()
    assert [model.config.heads(l) for l in range(2)] == [heads[0], heads[1]]
    assert [[a, w] for a, w in zip(model.config.attn_dims, model.config.ffn_dims)] == list(alloc["dims"].values())
    att = [layer.attention for layer in model.moddistilbert.layers]
    assert [a.num_heads for a in att if not a.removed] == [heads[l] for l in range(2) if alloc["dims"][str(l)][0]]
    from transformers import AutoModelForSequenceClassification
    again = AutoModelForSequenceClassification.from_pretrained(str(ft / "model"), trust_remote_code=True).eval()
    ids = torch.randint(1000, 2000, (2, 9))
    assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)
    pytest.importorskip("onnxruntime")
    from modcomp import export
    report = export.main([str(ft / "model"), str(tmp_path / "onnx"), "--max_rows", "8", "--threads", "1",
                          "--repeats", "2", "--seq_len", "16", "--no_openvino"])
    assert report["fp32_within_tolerance"] and report["attention_layers"] == sum(1 for a in att if not a.removed)


def test_context_rounds_choose_again_and_keep_the_smallest_measured_error(capture, cached_table, tmp_path,
                                                                          monkeypatch):
    """--context_rounds 2: the blocks' sensitivities measured inside the last choice, a new choice, and the one
    kept whose closed-form blocks all in place give the smallest measured output error; the result still fits
    the budget, and the stages' sizes are the kept round's."""
    alloc = _stages(capture, str(tmp_path / "mod"), 3, "--context_rounds", "2")
    rounds = alloc["rounds"]
    assert 1 <= len(rounds) <= 3 and rounds[0]["sensitivity"] is None
    assert all(r["sensitivity"] for r in rounds[1:])
    kept = [r for r in rounds if r.get("kept")]
    assert len(kept) == 1 and kept[0]["measured_error"] == min(r["measured_error"] for r in rounds)
    assert all(r["measured_error"] >= 0 and r["predicted_error"] >= 0 for r in rounds)
    assert alloc["predicted_error"] == kept[0]["predicted_error"]
    for l, (a, w) in alloc["dims"].items():
        size = kept[0]["sizes"][f"{l},mha"]
        assert (a, w) == (0, 0) if size is None else (size == [alloc["heads"][l], a]
                                                        and kept[0]["sizes"][f"{l},ffn"] == w)
    b = alloc["budget"]["latency"]
    assert b["predicted_ms"] <= b["budget_ms"] + 1e-6
    # the same settings: read back, not recomputed; no rounds: none recorded
    calls = []
    real = allocation._in_context
    monkeypatch.setattr(allocation, "_in_context", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _stages(capture, str(tmp_path / "mod"), 3, "--context_rounds", "2") == alloc and calls == []
    assert _stages(capture, str(tmp_path / "mod0"), 3)["rounds"] is None


@torch.no_grad()
def test_in_context_with_no_blocks_is_the_sensitivity_among_the_teachers_blocks(capture, tiny_bert_dir):
    """Inside an empty choice (every block the teacher's) a probe changes the output by what _carried measures."""
    from modcomp.activations import ActivationStore, select_sequences
    store = ActivationStore(capture)
    teacher = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=1).base_model.eval()
    n = len(store.sequence_info()[0])
    idx = torch.arange(n)
    x0, lens = select_sequences(*store.load_layer(0), idx)
    h = x0
    for layer in teacher.layers:
        h = data_init.layer_forward(layer, h, lens, "cpu")
    energy = float((h.double() ** 2).sum())
    torch.manual_seed(0)
    probes = {(l, k): (MultiHeadSelfAttention(32, 4, 8) if k == "mha" else
                       __import__("modeling_moddistilbert").FeedForward(32, 16)).eval()
              for l in range(2) for k in ("mha", "ffn")}
    sens, removal = allocation._in_context(teacher, {}, [], probes, x0, lens, energy, "cpu")
    for (l, k), v in sens.items():
        x, ln = select_sequences(*store.load_layer(l), idx)
        alone = allocation._carried(teacher, l, "attention" if k == "mha" else "ffn", probes[(l, k)], x, ln, idx,
                                    h, "cpu") / energy
        assert v == pytest.approx(alone, rel=0.05), (l, k)
    for l, v in removal.items():
        x, ln = select_sequences(*store.load_layer(l), idx)
        assert v == pytest.approx(allocation._carried_removed(teacher, l, x, ln, idx, h, "cpu") / energy, rel=0.05)


def test_context_rounds_are_refused_before_any_stage_without_an_output_allocation():
    from modcomp import config
    with pytest.raises(config.RecipeError, match="--context_rounds re-measures"):
        config.resolve("default", {"context_rounds": "2", "currency": "layernorm"})
    with pytest.raises(config.RecipeError, match="--context_rounds must be >= 0"):
        config.resolve("default", {"context_rounds": "-1"})


def test_the_curves_are_measured_once_for_every_compression(capture, cached_table, tmp_path, monkeypatch):
    """A second modules dir of the same capture (another --compression) reads the curves, head orders and layer
    removals from the cache beside it and allocates exactly what measuring them again gives."""
    first = _stages(capture, str(tmp_path / "mods" / "c2"), 2)
    cache = [f for f in os.listdir(tmp_path / "mods") if f.startswith("curves-")]
    assert len(cache) == 1
    calls = []
    real = allocation.attention_curve
    monkeypatch.setattr(allocation, "attention_curve", lambda *a, **k: calls.append(1) or real(*a, **k))
    cached = _stages(capture, str(tmp_path / "mods" / "c3"), 3)
    assert calls == [] and cached["head_order"] == first["head_order"]   # not measured again
    fresh = _stages(capture, str(tmp_path / "alone" / "c3"), 3)   # no cache beside it: measured
    assert len(calls) == 2
    for k in ("dims", "heads", "head_order", "removed_layers", "predicted_error", "sensitivity", "curves",
              "layer_removal_error"):
        assert cached[k] == fresh[k], k
    # a multiply-add budget near 1, whose probe is at the teacher's own head dim: the cached curves (written by
    # c=2, 0 at that size) give what measuring them gives
    macs = lambda out, c: (mha_modular.main(["--activations_dir", capture, "--output_dir", str(out), "--init", "data",
                                             "--epochs", "0", "--compression", str(c), "--allocate", "--threads", "1"]),
                           json.loads((out / "allocation.json").read_text()))[1]
    macs(tmp_path / "m" / "c2", 2)
    near, alone = macs(tmp_path / "m" / "c1.05", 1.05), macs(tmp_path / "m1" / "c1.05", 1.05)
    assert near["dims"] == alone["dims"] and near["sensitivity"] == alone["sensitivity"]
    (tmp_path / "mods" / cache[0]).write_text("{")              # a broken cache: measured again, not an error
    again = _stages(capture, str(tmp_path / "mods" / "c4"), 4)
    assert len(calls) == 2 + 2 + 2 + 2 and again["dims"]     # (the two macs runs measured theirs once)
    (tmp_path / "mods" / cache[0]).write_text("[1, 2]")         # valid JSON, not a cache's shape: the same
    assert _stages(capture, str(tmp_path / "mods" / "c5"), 5)["dims"] and len(calls) == 10


def test_context_rounds_need_the_output_currency(capture, cached_table, tmp_path):
    with pytest.raises(UserError, match="--context_rounds 1: needs --currency output"):
        _stages(capture, str(tmp_path / "mod"), 3, "--context_rounds", "1", "--currency", "layernorm")


def test_closed_form_refuses_a_latency_allocation(capture, cached_table, tmp_path):
    from modcomp import closed_form
    out = str(tmp_path / "mod")
    _stages(capture, out, 2)
    with pytest.raises(UserError, match="latency budget's .heads per layer."):
        closed_form.main(["--activations_dir", capture, "--output_dir", str(tmp_path / "cf"), "--compression", "2",
                          "--allocation", os.path.join(out, "allocation.json"), "--threads", "1"])


def test_at_c1_a_latency_budget_keeps_every_block_and_head(capture, cached_table, tmp_path):
    alloc = _stages(capture, str(tmp_path / "mod"), 1)
    assert all(d == [32, 64] for d in alloc["dims"].values()) and set(alloc["heads"].values()) == {4}
    assert alloc["budget"]["latency"]["predicted_ratio"] == pytest.approx(1)


def test_a_budget_below_the_base_is_one_line(capture, cached_table, tmp_path):
    # whole layers may go, so only the base (embeddings, head: 0.05 of 0.426 ms) is out of the budget's reach
    with pytest.raises(UserError, match=r"below what the encoder costs with every layer removed .*at most "
                                        r"8\.5\dx here"):
        _stages(capture, str(tmp_path / "mod"), 10)


def test_choose_takes_a_whole_layer_removal_where_it_is_best():
    import itertools
    import random
    rng = random.Random(0)
    for trial in range(30):
        options = {(l, k): {s: (rng.randint(0, 9), rng.random()) for s in range(3)}
                   for l in range(3) for k in ("mha", "ffn")}
        removals = {l: (((l, "mha"), (l, "ffn")), (rng.randint(0, 3), rng.random() * 1.5)) for l in range(3)}
        budget = rng.randint(4, 30)
        best = None   # brute force: every layer kept at some sizes, or removed
        for layer_choice in itertools.product(*[[None] + list(itertools.product(range(3), range(3)))] * 3):
            cost = err = 0
            for l, ch in enumerate(layer_choice):
                if ch is None:
                    cost, err = cost + removals[l][1][0], err + removals[l][1][1]
                else:
                    for k, s in zip(("mha", "ffn"), ch):
                        cost, err = cost + options[(l, k)][s][0], err + options[(l, k)][s][1]
            if cost <= budget and (best is None or err < best - 1e-12):
                best = err
        pick = allocation.choose(options, budget, removals)
        got = sum(removals[l][1][1] if pick[(l, "mha")] is None else
                  options[(l, "mha")][pick[(l, "mha")]][1] + options[(l, "ffn")][pick[(l, "ffn")]][1]
                  for l in range(3))
        cost = sum(removals[l][1][0] if pick[(l, "mha")] is None else
                   options[(l, "mha")][pick[(l, "mha")]][0] + options[(l, "ffn")][pick[(l, "ffn")]][0]
                   for l in range(3))
        assert all((pick[(l, "mha")] is None) == (pick[(l, "ffn")] is None) for l in range(3))
        assert cost <= budget and got == pytest.approx(best), trial
    with pytest.raises(ValueError, match="consecutive"):
        allocation.choose(options, 10, {"x": (((0, "mha"), (1, "ffn")), (0, 0.0))})


def test_a_budget_that_leaves_no_block_runs_both_stages(capture, tmp_path, monkeypatch):
    """Blocks that each cost a quarter of the model: at 1/8 every block goes (no multiply-adds left: the achieved
    compression is infinite, null in allocation.json); the FFN stage reads that file back without failing."""
    monkeypatch.setenv("MODCOMP_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    t = synthetic_table(fixed=0.0, base=0.001)
    t["mha"] = {k: 1.0 for k in t["mha"]}
    t["ffn"] = {k: 1.0 for k in t["ffn"]}
    os.makedirs(os.path.dirname(latency.table_path(t["key"])))
    with open(latency.table_path(t["key"]), "w") as f:
        json.dump(t, f)
    alloc = _stages(capture, str(tmp_path / "mod"), 8)
    assert all(d == [0, 0] for d in alloc["dims"].values()) and alloc["budget"]["achieved_compression"] is None
    assert {f"layer0{l}_{k}.safetensors" for l in (0, 1) for k in ("mha", "ffn")} <= set(os.listdir(tmp_path / "mod"))


def test_a_latency_budget_removes_whole_layers_and_the_model_follows(capture, tiny_bert_dir, tmp_path,
                                                                     monkeypatch):
    """A layer's fixed cost (0.3 ms here) above what half the budget leaves: one layer must go whole, and the
    model built from the modules has it as the identity; it saves, reloads with trust_remote_code and exports."""
    monkeypatch.setenv("MODCOMP_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    t = synthetic_table(fixed=0.3)
    os.makedirs(os.path.dirname(latency.table_path(t["key"])))
    with open(latency.table_path(t["key"]), "w") as f:
        json.dump(t, f)
    out = str(tmp_path / "mod")
    alloc = _stages(capture, out, 2)
    removed = alloc["removed_layers"]
    assert len(removed) == 1 and alloc["dims"][str(removed[0])] == [0, 0] and alloc["heads"][str(removed[0])] == 0
    assert set(alloc["layer_removal_error"]) == {"0", "1"}
    b = alloc["budget"]["latency"]
    kept = [None if l in removed else (alloc["heads"][str(l)], *alloc["dims"][str(l)]) for l in range(2)]
    assert b["predicted_ms"] == pytest.approx(latency.encoder_ms(t, kept)) and b["predicted_ms"] <= b["budget_ms"]
    ft = tmp_path / "ft"
    run_superglue.main(["--model_name_or_path", tiny_bert_dir, "--task", "stsb", "--output_dir", str(ft),
                        "--compression", "2", "--init", "data", "--modules_dir", out, "--epochs", "1",
                        "--max_train_samples", "16", "--max_eval_samples", "8", "--threads", "1"])
    from modeling_moddistilbert import RemovedLayer
    from transformers import AutoModelForSequenceClassification
    again = AutoModelForSequenceClassification.from_pretrained(str(ft / "model"), trust_remote_code=True).eval()
    assert again.config.removed_layers == removed
    assert isinstance(again.base_model.layers[removed[0]], RemovedLayer)
    assert not any(k.startswith(f"layers.{removed[0]}.") for k in again.base_model.state_dict())
    ids = torch.randint(1000, 2000, (2, 9))
    h = again.base_model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.equal(h[removed[0] + 1], h[removed[0]])     # the identity
    # a modules dir whose removed layer has a block with a size: refused in one line, not silently dropped
    import shutil
    from safetensors import safe_open
    from modcomp.compression import checkpoint_path, load_modules, save_block
    bad = str(tmp_path / "bad_modules")
    shutil.copytree(out, bad)
    with safe_open(checkpoint_path(bad, removed[0], "mha"), "pt") as f:
        meta = dict(f.metadata())
    save_block(checkpoint_path(bad, removed[0], "mha"), MultiHeadSelfAttention(32, 4, 16),
               {k: v for k, v in {**meta, "inner_size": "16"}.items() if k != "format"})
    with pytest.raises(UserError, match=f"layer {removed[0]} is removed whole in the model, but this mha block has "
                                        "size 16"):
        load_modules(again, bad)
    pytest.importorskip("onnxruntime")
    from modcomp import export
    report = export.main([str(ft / "model"), str(tmp_path / "onnx"), "--max_rows", "8", "--threads", "1",
                          "--repeats", "2", "--seq_len", "16", "--no_openvino"])
    assert report["fp32_within_tolerance"]


@pytest.mark.slow
def test_the_table_is_measured_once_per_machine(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("MODCOMP_CACHE", str(tmp_path))
    t, path = latency.load_or_measure(32, 4, 8, 64, 16, "ort-int8", 1, 2, log=lambda *a: None)
    assert os.path.isfile(path) and t["key"]["cpu"] and t["fixed_ms"] != 0 and t["context_layers"] == 2
    assert set(t["mha"]) == {f"{k},{r}" for k in (1, 2, 3, 4) for r in (2, 4, 8)} and len(t["ffn"]) == 9
    assert all(v >= 0 for v in [*t["mha"].values(), *t["ffn"].values()])
    mtime = os.path.getmtime(path)
    again, same = latency.load_or_measure(32, 4, 8, 64, 16, "ort-int8", 1, 2, log=lambda *a: None)
    assert same == path and os.path.getmtime(path) == mtime and again == t


def test_a_removed_layer_must_have_no_blocks(tiny_bert_dir):
    from modeling_moddistilbert import ModDistilBertConfig
    with pytest.raises(ValueError, match="removed layer 1: needs"):
        ModDistilBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, removed_layers=[1])
    from modcomp.compression import compress
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=1)
    with pytest.raises(UserError, match=r"layers \[0\] are removed whole but their sizes are not given as \(0, 0\)"):
        compress(model, 2, "svd", dims={0: (16, 32), 1: (16, 32)}, removed_layers=[0])
