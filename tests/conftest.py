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
