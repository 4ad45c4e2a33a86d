"""Portable checkpoints: a saved model loads with plain transformers (`trust_remote_code=True`) in a Python process
that has none of this repo: same logits as the in-repo load, label names in pipeline()'s answer. Covers a
classifier with label names, a regression head, multiple choice, a compressed model with per-layer sizes, one
with removed blocks, and a compressed RoBERTa (its own tokenizer, positions from the padding). The clean process is
`python -I -S` started from a temporary directory, with the installed packages but not the .pth files that would
put this checkout (the editable install of modcomp) on its path (one process for all models: each fresh
interpreter costs seconds of imports on the shared test machine)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

from modcomp import compression as C  # noqa: E402
import modeling_moddistilbert as M  # noqa: E402
from modcomp import tasks as T  # noqa: E402
from modcomp.finetune import save_model  # noqa: E402
from transformers import (AutoModel, AutoModelForMultipleChoice, AutoModelForSequenceClassification,  # noqa: E402
                          AutoTokenizer, pipeline)
from transformers.dynamic_module_utils import get_imports  # noqa: E402
from modcomp.utils import run_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a tiny random model", "says nothing useful", "but says it the same way twice"]
CODE = "modeling_moddistilbert.py"
AUTO_MAP = {"AutoConfig": "modeling_moddistilbert.ModDistilBertConfig",
            "AutoModel": "modeling_moddistilbert.ModDistilBertModel",
            "AutoModelForSequenceClassification": "modeling_moddistilbert.ModDistilBertForSequenceClassification",
            "AutoModelForMultipleChoice": "modeling_moddistilbert.ModDistilBertForMultipleChoice"}

# Runs in the clean process: loads every saved model through the Auto classes, writes logits, the base model's
# [CLS] state and the pipeline's answers.
CLEAN_SCRIPT = r'''
import importlib.util, json, sys
sys.path += sys.argv[3:]   # (-S) the installed packages, but not their .pth files: not our editable install
for name in ("modeling_moddistilbert", "modcomp", "utils", "finetune"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable: not a clean process"
import torch
from transformers import AutoModel, AutoModelForMultipleChoice, AutoModelForSequenceClassification, pipeline
torch.set_num_threads(1)
out = {}
for name, spec in json.load(open(sys.argv[1])).items():
    auto = AutoModelForMultipleChoice if spec["head"] == "mc" else AutoModelForSequenceClassification
    model = auto.from_pretrained(spec["dir"], trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(spec["dir"], trust_remote_code=True).eval()
    inputs = {k: torch.tensor(v) for k, v in spec["inputs"].items()}
    flat = {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}  # multiple choice: (B, C, T) -> (B*C, T)
    with torch.no_grad():
        out[name] = {"logits": model(**inputs).logits.tolist(),
                     "cls_state": base(**flat).last_hidden_state[:, 0].tolist(),
                     "classes": [type(m).__module__ for m in (model, base)]}
    if spec["texts"]:
        out[name]["pipeline"] = pipeline("text-classification", model=spec["dir"],
                                         trust_remote_code=True)(spec["texts"])
assert "modeling_moddistilbert" not in sys.modules
json.dump(out, open(sys.argv[2], "w"))
'''


@torch.no_grad()
def _perturb(model, seed):
    """Every weight away from its init (biases of removed blocks too), so a weight not loaded shows."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _set_block(model, layer, kind, inner):
    """Give `layer` a fresh `mha`/`ffn` block of size `inner` (0: removed) and record it in the config."""
    config = model.config
    setattr(model.base_model.layers[layer], "attention" if kind == "mha" else "ffn",
            M.make_block(config, layer, kind, inner))
    (config.attn_dims if kind == "mha" else config.ffn_dims)[layer] = inner


def _inputs(tokenizer, head):
    if head == "mc":  # 2 questions x 2 choices -> (B, C, T)
        enc = tokenizer([TEXTS[0]] * 2 + [TEXTS[1]] * 2, TEXTS[1:3] * 2, padding=True, return_tensors="pt")
        return {k: v.view(2, 2, -1) for k, v in enc.items()}
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_bert_dir, tiny_arch_dirs):
    """{name: (directory, head, inputs, logits of the in-memory model)}, every model saved by finetune.save_model."""
    root = tmp_path_factory.mktemp("portable")
    seq, mc = M.ModDistilBertForSequenceClassification, M.ModDistilBertForMultipleChoice
    models = {"labels": (seq, 3, "cb"), "regression": (seq, 1, "stsb"), "choice": (mc, 1, "copa"),
              "compressed": (seq, 2, "rte"), "removed": (seq, 2, "mrpc"), "roberta": (seq, 3, "cb")}
    out = {}
    for i, (name, (cls, num_labels, task)) in enumerate(models.items()):
        teacher = tiny_arch_dirs["roberta"] if name == "roberta" else tiny_bert_dir
        tokenizer = AutoTokenizer.from_pretrained(teacher)
        model = cls.from_teacher(teacher, num_labels=num_labels)
        if name in ("compressed", "roberta"):  # svd at c=2 (then, for one, per-layer sizes of their own)
            C.compress(model, 2.0, "svd")
        if name == "compressed":
            _set_block(model, 1, "mha", 8)
            _set_block(model, 1, "ffn", 5)
        if name == "removed":
            _set_block(model, 0, "mha", 0)
            _set_block(model, 1, "ffn", 0)
        _perturb(model, i)
        head = "mc" if cls is mc else "seq"
        inputs = _inputs(tokenizer, head)
        with torch.no_grad():
            logits = model(**inputs).logits
        d = str(root / name / "model")
        save_model(model, tokenizer, d, T.get_task(task))
        out[name] = (d, head, inputs, logits)
    return out


@pytest.fixture(scope="module")
def clean_process(saved, tmp_path_factory):
    """Runs CLEAN_SCRIPT with `python -I -S` from a directory outside the repo; returns its JSON answer."""
    work = tmp_path_factory.mktemp("clean_cwd")
    (work / "load.py").write_text(CLEAN_SCRIPT)
    job = {name: {"dir": d, "head": head, "inputs": {k: v.tolist() for k, v in inputs.items()},
                  "texts": TEXTS if name in ("labels", "regression", "roberta") else None}
           for name, (d, head, inputs, _) in saved.items()}
    (work / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(work / "hf_home"), HF_MODULES_CACHE=str(work / "hf_modules"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    import sysconfig
    site_dirs = list(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    p = subprocess.run([sys.executable, "-I", "-S", "load.py", "job.json", "out.json", *site_dirs], cwd=work, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


def _in_repo(d, head):
    auto = AutoModelForMultipleChoice if head == "mc" else AutoModelForSequenceClassification
    return auto.from_pretrained(d).eval()


def test_saved_directory_holds_weights_code_config_and_tokenizer(saved):
    d = saved["labels"][0]
    files = set(os.listdir(d))
    assert {"model.safetensors", "config.json", CODE, "tokenizer_config.json"} <= files, files
    assert {"tokenizer.json", "vocab.txt"} & files, files
    with open(os.path.join(d, CODE)) as f, open(os.path.join(ROOT, CODE)) as g:
        assert f.read() == g.read()
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    assert config["auto_map"] == AUTO_MAP
    assert config["id2label"] == {"0": "entailment", "1": "contradiction", "2": "neutral"}
    for name, (d, *_) in saved.items():  # every model, compressed or not
        assert os.path.isfile(os.path.join(d, CODE)), name
        with open(os.path.join(d, "config.json")) as f:
            assert json.load(f)["auto_map"] == AUTO_MAP, name


def test_saved_code_imports_only_torch_and_transformers(saved):
    """transformers refuses remote code whose imports are not installed; ours needs nothing of the repo."""
    assert set(get_imports(os.path.join(saved["labels"][0], CODE))) == {"torch", "transformers"}


def test_in_repo_load_ignores_the_saved_copy(saved):
    """Inside the repo the registered classes load the directory (no trust_remote_code needed, no copy used)."""
    d, head, inputs, logits = saved["compressed"]
    model = _in_repo(d, head)
    assert type(model) is M.ModDistilBertForSequenceClassification
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, logits, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["labels", "regression", "choice", "compressed", "removed", "roberta"])
def test_clean_process_gives_the_in_repo_logits(saved, clean_process, name):
    d, head, inputs, logits = saved[name]
    model = _in_repo(d, head)
    base = AutoModel.from_pretrained(d).eval()
    flat = {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}
    with torch.no_grad():
        repo_logits = model(**inputs).logits
        repo_state = base(**flat).last_hidden_state[:, 0]
    got = clean_process[name]
    assert all(m.startswith("transformers_modules.") for m in got["classes"]), got["classes"]
    torch.testing.assert_close(repo_logits, logits, rtol=0, atol=1e-6)  # saved and reloaded in the repo
    torch.testing.assert_close(torch.tensor(got["logits"]), repo_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got["cls_state"]), repo_state, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["labels", "regression", "roberta"])
def test_clean_process_pipeline_answers_with_label_names(saved, clean_process, name):
    d = saved[name][0]
    expected = pipeline("text-classification", model=d)(TEXTS)
    got = clean_process[name]["pipeline"]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert all(abs(a["score"] - b["score"]) <= 1e-6 for a, b in zip(got, expected))
    cb = {"entailment", "contradiction", "neutral"}
    names = {"labels": cb, "regression": {"score"}, "roberta": cb}[name]
    assert {r["label"] for r in got} <= names


def test_model_error_is_a_one_line_error(capsys):
    """The model file has its own error class (it imports nothing of the repo); run_main prints it like UserError."""
    def main():
        raise M.ModelError("unsupported teacher architecture 't5'")
    with pytest.raises(SystemExit) as e:
        run_main(main)
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: unsupported teacher architecture 't5'\n"
    with pytest.raises(ZeroDivisionError):  # anything else still raises
        run_main(lambda: 1 / 0)
