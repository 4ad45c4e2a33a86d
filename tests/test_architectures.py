"""The teacher architectures besides BERT/DistilBERT (tests/test_modeling.py): RoBERTa, XLM-RoBERTa and ELECTRA (its
embeddings_project). Each at c=1 is transformers' own sequence classifier (logits and every layer's hidden states,
same weights); RoBERTa's position ids; compressed (c=2, svd) each runs, saves and reloads with the same logits;
the stages (capture, closed-form modules, run_superglue's fine-tune) and the ONNX export take them; any other
architecture is a one-line error naming the supported ones. Tiny random checkpoints built offline (conftest)."""
import json
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2Model

import ffn_modular
import mha_modular
import modeling_moddistilbert as M
from conftest import FIXTURE_DATA, ROOT, TINY_ARCHS
from modcomp import capture as capture_data
from modcomp import runner as run_superglue
from modcomp import tasks as T
from modcomp.compression import compress
from modcomp.finetune import build_model, save_model
from modcomp.utils import UserError
from test_modeling import _assert_real_tokens_close

ARCHS = list(TINY_ARCHS)
# Our model and transformers' do the same float32 operations, some in another order (SDPA against their
# attention, the embedding sum): on O(1) LayerNorm outputs after 2 layers they differ by a few float32 eps
# (~1e-6 seen); 1e-5 is ~80 eps.
TOL = 1e-5
TEXTS = ["a tiny random model", "says nothing useful at all, in a longer sentence", "but the same way twice"]
PAIRED = ["its pair", "a second text", "and a third one"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(d):
    """Text pairs, tokenized, padded to the longest: three lengths, so padding (RoBERTa's positions) matters."""
    tok = AutoTokenizer.from_pretrained(d)
    enc = dict(tok(TEXTS, PAIRED, padding=True, return_tensors="pt"))
    assert enc["attention_mask"].sum(1).unique().numel() == 3
    return enc


@torch.no_grad()
def _theirs_and_ours(d):
    """transformers' classifier saved in `d`, and ours from it as a teacher: a sequence classifier with as many
    outputs as asked keeps its fine-tuned head (RobertaClassificationHead / ElectraClassificationHead: dense,
    act, out_proj), so nothing is copied here."""
    theirs = AutoModelForSequenceClassification.from_pretrained(d).eval()
    ours = M.ModDistilBertForSequenceClassification.from_teacher(d, num_labels=3).eval()
    return theirs, ours


@pytest.mark.parametrize("arch", ARCHS)
def test_c1_is_transformers_own_classifier(tiny_arch_dirs, arch):
    d = tiny_arch_dirs[arch]
    theirs, ours = _theirs_and_ours(d)
    tc, cfg = theirs.config, ours.config
    assert (cfg.layer_norm_eps, cfg.hidden_act, cfg.type_vocab_size) == (tc.layer_norm_eps, tc.hidden_act,
                                                                         tc.type_vocab_size)
    assert cfg.head_type == {"electra": "electra"}.get(arch, "roberta")
    assert cfg.position_style == ("absolute" if arch == "electra" else "roberta")
    assert cfg.embedding_size == getattr(tc, "embedding_size", tc.hidden_size)
    emb = ours.moddistilbert.embeddings
    if arch == "electra":  # embedding_size 16 -> hidden 32, the teacher's projection
        assert emb.word_embeddings.weight.shape == (tc.vocab_size, 16)
        assert torch.equal(emb.project.weight, theirs.electra.embeddings_project.weight)
    else:
        assert emb.project is None and emb.token_type_embeddings.weight.shape == (1, 32)
    batch = _inputs(d)
    assert ("token_type_ids" in batch) == (arch == "electra")
    compress(ours, 1.0, "svd")  # c=1: every block rebuilt from its SVD, the same function
    assert ours.config.compression == 1.0 and ours.config.attn_dims == [32, 32]
    with torch.no_grad():
        a = ours(**batch, output_hidden_states=True)
        b = theirs(**batch, output_hidden_states=True)
    assert a.logits.shape == b.logits.shape == (3, 3)
    assert (a.logits - b.logits).abs().max() < TOL
    assert len(a.hidden_states) == len(b.hidden_states) == 3  # the first layer's input (projected), then each layer's
    for x, y in zip(a.hidden_states, b.hidden_states):
        _assert_real_tokens_close(x, y, batch["attention_mask"], TOL)
    assert a.hidden_states[0].shape[-1] == 32


@pytest.mark.parametrize("arch", ["roberta", "xlm-roberta"])
def test_roberta_positions_count_real_tokens_from_padding_idx(tiny_arch_dirs, arch):
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings
    model = M.ModDistilBertModel.from_teacher(tiny_arch_dirs[arch]).eval()
    pad = model.config.pad_token_id
    assert pad == 1
    ids = torch.tensor([[0, 7, 8, 9, 2, pad, pad], [0, 7, 2, pad, pad, pad, pad], [pad, pad, 0, 7, 8, 9, 2]])
    pos = model.embeddings.positions(ids)
    assert torch.equal(pos, RobertaEmbeddings.create_position_ids_from_input_ids(ids, pad))
    assert pos[0].tolist() == [2, 3, 4, 5, 6, 1, 1] and pos[2].tolist() == [1, 1, 2, 3, 4, 5, 6]
    # so a sequence's states do not depend on how much padding follows it
    with torch.no_grad():
        alone = model(ids[:1, :5], torch.ones(1, 5, dtype=torch.long)).last_hidden_state
        padded = model(ids[:1], (ids[:1] != pad).long()).last_hidden_state[:, :5]
    assert (alone - padded).abs().max() < TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_compressed_runs_saves_and_reloads(tiny_arch_dirs, tmp_path, arch):
    model, tokenizer, info = build_model(tiny_arch_dirs[arch], T.get_task("rte"), compression=2.0, init="svd")
    assert type(model) is M.ModDistilBertForSequenceClassification and info["macs"]["achieved_compression"] >= 2
    assert model.config.attn_dims == [16, 16] and model.config.ffn_dims == [32, 32]
    model.eval()
    batch = _inputs(tiny_arch_dirs[arch])
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    d = str(tmp_path / "model")
    save_model(model, tokenizer, d, T.get_task("rte"))
    assert os.path.isfile(os.path.join(d, "modeling_moddistilbert.py"))
    loaded = AutoModelForSequenceClassification.from_pretrained(d).eval()
    assert type(loaded) is M.ModDistilBertForSequenceClassification
    for key in ("head_type", "position_style", "embedding_size", "layer_norm_eps", "hidden_act", "attn_dims"):
        assert getattr(loaded.config, key) == getattr(model.config, key), key
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, logits)
    assert loaded.config.teacher == tiny_arch_dirs[arch]


def test_other_architectures_get_one_line_naming_the_supported(tmp_path, tiny_arch_dirs):
    d = str(tmp_path / "gpt2")
    GPT2Model(GPT2Config(vocab_size=2048, n_embd=16, n_layer=1, n_head=2, n_positions=32)).save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_arch_dirs["roberta"]).save_pretrained(d)
    names = ("BERT", "DistilBERT", "RoBERTa", "XLM-RoBERTa", "ELECTRA")
    with pytest.raises(M.ModelError) as e:
        M.ModDistilBertForSequenceClassification.from_teacher(d, num_labels=2)
    assert "\n" not in str(e.value) and "'gpt2'" in str(e.value) and all(n in str(e.value) for n in names)
    with pytest.raises(UserError) as e:  # run_superglue --compression: before any model is built
        build_model(d, T.get_task("rte"), compression=2.0)
    assert "\n" not in str(e.value) and "'gpt2'" in str(e.value) and all(n in str(e.value) for n in names)


def test_roberta_fine_tune_compressed(tiny_arch_dirs, tmp_path):
    """run_superglue.py --init svd --compression 2 on 16 rows, one epoch: results.json and a loadable model."""
    out = tmp_path / "ft"
    run_superglue.main(["--model_name_or_path", tiny_arch_dirs["roberta"], "--task", "rte", "--output_dir", str(out),
                        "--data_dir", FIXTURE_DATA, "--compression", "2", "--init", "svd",
                        "--max_train_samples", "16", "--max_eval_samples", "16", "--epochs", "1",
                        "--batch_size", "8", "--max_length", "64", "--device", "cpu", "--threads", "1"])
    r = json.loads((out / "results.json").read_text())
    assert r["architecture"] == "ModDistilBertForSequenceClassification" and r["compression"] == 2.0
    assert r["init"] == "svd" and r["n_train"] == 16 and 0 <= r["epochs"][0]["accuracy"] <= 1
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert model.config.position_style == "roberta" and model.config.attn_dims == [16, 16]
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}


def test_electra_capture_modules_fine_tune(tiny_arch_dirs, tmp_path):
    """ELECTRA (projected embeddings) through the stages: the capture holds what each layer sees (the first
    layer's input is the projection's output), the closed-form modules load into its compressed model."""
    d = tiny_arch_dirs["electra"]
    cap, mods, ft = (str(tmp_path / n) for n in ("cap", "mod", "ft"))
    capture_data.main(["--model_name_or_path", d, "--task", "stsb", "--output_dir", cap, "--max_samples", "24",
                       "--dtype", "fp32"])
    from modcomp.activations import ActivationStore
    x, lengths = ActivationStore(cap).load_layer(0)
    assert x.shape == (int(lengths.sum()), 32)  # hidden size, not the embeddings' 16
    common = ["--activations_dir", cap, "--output_dir", mods, "--init", "data", "--epochs", "0",
              "--compression", "2", "--threads", "1"]
    mha_modular.main(common)
    ffn_modular.main(common)
    run_superglue.main(["--model_name_or_path", d, "--task", "stsb", "--output_dir", ft, "--compression", "2",
                        "--init", "data", "--modules_dir", mods, "--epochs", "1", "--max_train_samples", "16",
                        "--max_eval_samples", "8", "--max_length", "64", "--threads", "1", "--device", "cpu"])
    r = json.loads(open(os.path.join(ft, "results.json")).read())
    assert r["variant"] == "modular" and len(r["modules"]) == 4 and not r["modules_missing"]
    assert r["macs"]["achieved_compression"] >= 2


@pytest.mark.parametrize("arch", ["roberta", "electra"])
def test_compressed_export(tiny_arch_dirs, tmp_path, arch):
    """export.py on a compressed checkpoint: both attention blocks fused (ELECTRA's projected embeddings too), the
    fp32 ONNX gives PyTorch's logits."""
    pytest.importorskip("onnxruntime")
    from modcomp import export
    model, tokenizer, _ = build_model(tiny_arch_dirs[arch], T.get_task("stsb"), compression=2.0, init="svd")
    ckpt = str(tmp_path / "model")
    save_model(model.eval(), tokenizer, ckpt, T.get_task("stsb"))
    report = export.main([ckpt, str(tmp_path / "out"), "--data_dir", os.path.join(ROOT, "data"), "--max_rows",
                          "24", "--threads", "1", "--repeats", "2", "--seq_len", "16"])
    assert report["attention_layers"] == 2 == report["operators"]["fp32"]["Attention"]
    assert report["fp32_within_tolerance"] and report["fp32_max_abs_logit_difference"] <= 1e-4


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_a_fine_tuned_classifier_keeps_its_head_and_label_names(tmp_path, kind):
    """A user's already fine-tuned BERT / DistilBERT classifier as the teacher: its head (BERT: pooler + classifier;
    DistilBERT: pre_classifier + classifier) and label names come along, so ours gives its logits; asked for
    another number of outputs (another task), the head starts fresh instead."""
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification)
    torch.manual_seed(0)
    labels = {0: "entailment", 1: "contradiction", 2: "neutral"}
    theirs = (BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=64, vocab_size=200, id2label=labels))
              if kind == "bert" else
              DistilBertForSequenceClassification(DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                                   vocab_size=200, id2label=labels)))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    theirs.save_pretrained(str(tmp_path / "t"))
    theirs.eval()
    ours = M.ModDistilBertForSequenceClassification.from_teacher(str(tmp_path / "t"), num_labels=3).eval()
    ids = torch.randint(5, 200, (2, 9))
    with torch.no_grad():
        want, got = theirs(ids, attention_mask=torch.ones_like(ids)).logits, ours(ids, torch.ones_like(ids)).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert ours.config.id2label == labels
    other = M.ModDistilBertForSequenceClassification.from_teacher(str(tmp_path / "t"), num_labels=2)
    assert other.classifier.weight.shape == (2, 32) and other.config.num_labels == 2
