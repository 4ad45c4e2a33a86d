import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Task data for the tests. FIXTURE_DATA ships with the repo: the first 48 train and 24 validation rows of
# each task's official files, byte for byte (tests/fixtures/README.md), so a fresh clone runs every test
# that needs only some real rows. SHARED_DATA holds the project's full copies (optional, outside the repo);
# only tests of whole files need it (official row and label counts of cb/mrpc/rte, the INT8 accuracy check,
# marked needs_full_data); copa, wsc and stsb are whole in the repo's data/ (tasks.REPO_DATA_DIR).
FIXTURE_DATA = os.path.join(ROOT, "tests", "fixtures", "data")
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
needs_full_data = pytest.mark.skipif(not os.path.isdir(SHARED_DATA),
                                     reason="needs the full task files in ../shared/data (not in the repo)")

# A tiny random BERT teacher with the real bert-base-uncased vocabulary (the MiniLM tokenizer).
TINY_BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64)


def save_with_tokenizer(model, d):
    """save_pretrained(d) plus the MiniLM tokenizer, so the dir loads like a hub checkpoint."""
    from transformers import AutoTokenizer
    from modeling_moddistilbert import resolve_model_path
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(resolve_model_path("minilm")).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    return save_with_tokenizer(BertModel(BertConfig(**TINY_BERT)), tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on shared cores: one torch thread avoids oversubscription stalls (~40x here)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Tiny random teachers of the other architectures our model is built from (modeling_moddistilbert.
# TEACHER_ARCHITECTURES), as the transformers sequence classifiers a user fine-tuned: hidden 32, 2 layers, 4 heads,
# FFN 64. RoBERTa-style position tables hold max_length + 2 rows (pad_token_id 1 + 1 + 128 positions), as
# roberta-base's 514 do, one segment type and LayerNorm eps 1e-5 as theirs; ELECTRA's embeddings are half the
# hidden size (embeddings_project, as ELECTRA-small). XLM-RoBERTa's tanh-approximated GELU is not its real one:
# there so that hidden_act is seen to carry over.
ROBERTA_LIKE = dict(vocab_size=2048, max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5)
TINY_ARCHS = {
    "roberta": ROBERTA_LIKE,
    "xlm-roberta": dict(ROBERTA_LIKE, hidden_act="gelu_new"),
    "electra": dict(vocab_size=30522, embedding_size=16),
}


def tiny_tokenizer(model_type):
    """The tokenizer kind the architecture ships with, built offline: a byte-level BPE with no merges (RoBERTa),
    a unigram one over letters (XLM-RoBERTa's SentencePiece kind), both with pad 1, no token_type_ids; ELECTRA
    uses BERT's WordPiece (the MiniLM tokenizer)."""
    from transformers import AutoTokenizer, RobertaTokenizer, XLMRobertaTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    if model_type == "roberta":
        chars = sorted(set(bytes_to_unicode().values()))
        return RobertaTokenizer(vocab={t: i for i, t in enumerate(specials + chars + ["<mask>"])}, merges=[])
    if model_type == "xlm-roberta":
        pieces = list("abcdefghijklmnopqrstuvwxyz0123456789.,'!?-") + ["▁"]
        return XLMRobertaTokenizer(vocab=[(t, 0.0) for t in specials] + [(p, -1.0) for p in pieces]
                                   + [("<mask>", 0.0)])
    from modeling_moddistilbert import resolve_model_path
    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


@pytest.fixture(scope="session")
def tiny_arch_dirs(tmp_path_factory):
    """{model_type: directory}: a tiny random XForSequenceClassification (3 labels) of each of TINY_ARCHS, every
    weight moved off its init (so a swapped mapping shows), saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    root = tmp_path_factory.mktemp("tiny_archs")
    out = {}
    for i, (model_type, extra) in enumerate(TINY_ARCHS.items()):
        torch.manual_seed(i)
        config = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, num_labels=3, **extra)
        model = AutoModelForSequenceClassification.from_config(config)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        out[model_type] = str(root / model_type)
        model.save_pretrained(out[model_type])
        tiny_tokenizer(model_type).save_pretrained(out[model_type])
    return out
