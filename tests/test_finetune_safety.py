"""run_superglue.py never loses, reuses or mixes a result by mistake (issue 17, items 5 and 6): a finished result
survives every failed rerun and is replaced only once the new one is written; --resume reuses a run only with
the same settings, recipe and data (else a one-line error naming what differs); bad numbers and paths are
one-line errors before any work; a damaged or foreign checkpoint is never continued; the random start and the
CUDA generators are reproducible. Everything runs on a tiny random BERT and a few synthetic RTE rows."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from modcomp import finetune  # noqa: E402
from modcomp import runner as run_superglue  # noqa: E402
from modcomp import tasks as T  # noqa: E402
from modcomp.utils import UserError, run_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "a man the dog sleeps runs quickly nobody park ball red blue eats apple cat sits".split()


def write_rte(d, n_train=16, n_val=8, flip=False):
    """A data dir with rte/train.jsonl and rte/val.jsonl of synthetic rows (flip: every label the other)."""
    os.makedirs(os.path.join(d, "rte"), exist_ok=True)
    labels = ("entailment", "not_entailment")
    for name, n in (("train.jsonl", n_train), ("val.jsonl", n_val)):
        with open(os.path.join(d, "rte", name), "w") as f:
            for i in range(n):
                words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(6 + i % 5)]
                row = {"idx": i, "premise": " ".join(words), "hypothesis": " ".join(words[::2]),
                       "label": labels[(i % 2) ^ (flip and name == "val.jsonl")]}
                f.write(json.dumps(row) + "\n")
    return str(d)


@pytest.fixture
def data(tmp_path):
    return write_rte(tmp_path / "data")


def argv(model, data_dir, out, *extra):
    return ["--model_name_or_path", model, "--task", "rte", "--data_dir", data_dir, "--output_dir", str(out),
            "--epochs", "1", "--batch_size", "8", "--max_length", "32", "--device", "cpu", "--threads", "1",
            "--init", "svd", *extra]


def run(model, data_dir, out, *extra):
    run_superglue.main(argv(model, data_dir, out, *extra))
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def fails(model, data_dir, out, *extra, capsys):
    """Run the command line; it must exit 2 with one 'error:' line and no traceback. Returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(lambda: run_superglue.main(argv(model, data_dir, out, *extra)))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


def snapshot(out):
    """results.json's bytes and model/'s file names and bytes."""
    files = {}
    for root, _, names in os.walk(out):
        for n in names:
            p = os.path.join(root, n)
            if "checkpoint" not in p:
                files[os.path.relpath(p, out)] = open(p, "rb").read()
    return files


# ------------------------------------------------------------------ a finished result is never lost
def test_a_failed_rerun_leaves_the_finished_result_and_its_model(tiny_bert_dir, data, tmp_path, capsys,
                                                                  monkeypatch):
    """The old code deleted results.json before loading the data or building the model: a bad label, a bad
    --compression or a crash mid-training left the old result gone and its model/ behind."""
    out = tmp_path / "run"
    run(tiny_bert_dir, data, out)
    before = snapshot(out)
    assert "results.json" in before and "model/model.safetensors" in before
    bad = write_rte(tmp_path / "bad")
    with open(os.path.join(bad, "rte", "val.jsonl"), "a") as f:
        f.write(json.dumps({"idx": 99, "premise": "x", "hypothesis": "y", "label": "maybe"}) + "\n")
    assert "unknown value 'maybe'" in fails(tiny_bert_dir, bad, out, "--overwrite", capsys=capsys)
    assert "compression" in fails(tiny_bert_dir, data, out, "--resume", "--overwrite", "--compression", "0.5",
                                  capsys=capsys)
    assert snapshot(out) == before

    def crash(*a, **k):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(finetune, "evaluate", crash)  # dies during its first epoch
    with pytest.raises(RuntimeError):
        run(tiny_bert_dir, data, out, "--overwrite", "--lr", "1e-3")
    assert snapshot(out) == before
    monkeypatch.undo()
    # --overwrite replaces both once the new run has finished; without a saved model, the old model goes too
    r = run(tiny_bert_dir, data, out, "--overwrite", "--lr", "1e-3", "--no_save_model")
    assert r["settings"]["lr"] == 1e-3 and not os.path.exists(out / "model")


def test_resume_refuses_a_finished_run_of_other_settings_naming_them(tiny_bert_dir, data, tmp_path, capsys):
    """The old code deleted a finished result of other settings under --resume and reran over it."""
    out = tmp_path / "run"
    first = run(tiny_bert_dir, data, out, "--no_save_model")
    before = snapshot(out)
    line = fails(tiny_bert_dir, data, out, "--no_save_model", "--resume", "--lr", "3e-4", "--seed", "7",
                 capsys=capsys)
    assert "holds a finished run of other settings or inputs" in line
    assert "lr 0.0001 -> 0.0003" in line and "seed 1 -> 7" in line and "--overwrite" in line
    assert snapshot(out) == before
    assert run(tiny_bert_dir, data, out, "--no_save_model", "--resume") == first  # the same: nothing to do
    other = run(tiny_bert_dir, data, out, "--no_save_model", "--resume", "--overwrite", "--lr", "3e-4")
    assert other["settings"]["lr"] == 3e-4


def test_resume_does_not_reuse_a_run_whose_data_changed(tiny_bert_dir, data, tmp_path, capsys):
    """Flipping every validation label used to leave the old score in place under --resume."""
    out = tmp_path / "run"
    r = run(tiny_bert_dir, data, out, "--no_save_model")
    assert r["identity"]["inputs"]["validation_data"]["file"] == "val.jsonl"
    write_rte(data, flip=True)
    line = fails(tiny_bert_dir, data, out, "--no_save_model", "--resume", capsys=capsys)
    assert "validation_data changed" in line and "train_data" not in line
    flipped = run(tiny_bert_dir, data, out, "--no_save_model", "--resume", "--overwrite")
    assert flipped["identity"]["inputs"]["validation_data"] != r["identity"]["inputs"]["validation_data"]
    assert flipped["epochs"][0]["accuracy"] == pytest.approx(1 - r["epochs"][0]["accuracy"])


def test_recipe_is_recorded_and_part_of_the_identity(tiny_bert_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = {"name": "default", "fields": {"teacher": "finetuned", "module_epochs": 0, "distill": 1}}
    r = run(tiny_bert_dir, data, out, "--no_save_model", "--recipe", json.dumps(recipe))
    assert r["recipe"] == recipe and r["identity"]["settings"]["recipe"] == recipe
    paper = json.dumps({"name": "paper", "fields": {}})
    assert "recipe" in fails(tiny_bert_dir, data, out, "--no_save_model", "--resume", "--recipe", paper,
                             capsys=capsys)
    for bad in ('{"name": "x"}', "[1]", "not json"):
        assert "--recipe" in fails(tiny_bert_dir, data, tmp_path / "bad", "--recipe", bad, capsys=capsys)
    assert run(tiny_bert_dir, data, tmp_path / "none", "--no_save_model")["recipe"] is None


# ------------------------------------------------------------------ one-line errors before any work
BAD_NUMBERS = {
    "max_train_samples_0": (["--max_train_samples", "0"], "--max_train_samples must be at least 1"),
    "max_train_samples_negative": (["--max_train_samples", "-3"], "--max_train_samples must be at least 1"),
    "seed_negative": (["--seed", "-1"], "--seed must be in [0, 2^32)"),
    "lr_negative": (["--lr", "-1"], "--lr must be a number > 0"),
    "lr_nan": (["--lr", "nan"], "argument --ft_lr/--lr: must be a number"),
    "batch_size_0": (["--batch_size", "0"], "--batch_size and --eval_batch_size must be at least 1"),
    "compression_nan": (["--compression", "nan"], "--compression must be a number >= 1"),
    "compression_inf": (["--compression", "inf"], "--compression must be a number >= 1"),
    "compression_0": (["--compression", "0"], "--compression must be a number >= 1"),
    "compression_half": (["--compression", "0.5"], "--compression must be a number >= 1"),
    "compression_100": (["--compression", "100"], "compression 100 is too large for layer 0 (head dim 8, FFN width "
                                                  "64): a dimension would round to 0; it must be below 16"),
    "max_length_4": (["--max_length", "4"], "max_length 4 is too short for rte: at least 5"),
    "distill_from_missing": (["--distill_from", "no/such/dir"], "--distill_from no/such/dir: no such directory"),
    "two_at_once": (["--seed", "-1", "--lr", "0"], "--seed must be in [0, 2^32) (got -1); --lr must be a number"),
}


@pytest.mark.parametrize("case", BAD_NUMBERS)
def test_bad_numbers_and_paths_are_one_line_errors(tiny_bert_dir, data, tmp_path, capsys, case):
    extra, message = BAD_NUMBERS[case]
    out = tmp_path / "run"
    assert message in fails(tiny_bert_dir, data, out, *extra, capsys=capsys)
    assert not os.path.exists(out / "results.json") and not os.path.exists(out / "model")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_an_empty_split_file_is_a_one_line_error(tiny_bert_dir, data, tmp_path, capsys, split):
    """An empty validation file used to fail with a traceback after a whole epoch of training."""
    open(T.split_path("rte", split, data), "w").close()
    line = fails(tiny_bert_dir, data, tmp_path / "run", capsys=capsys)
    assert f"{T.split_path('rte', split, data)}: no rows" in line


def test_encode_refuses_a_max_length_that_drops_a_text():
    from transformers import AutoTokenizer
    from modeling_moddistilbert import resolve_model_path
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    rte = [{"idx": 0, "premise": "the cat sits on the mat", "hypothesis": "a cat sits", "label": 0}]
    for n in (2, 3, 4):  # 2: no truncation at all; 3 and 4: the premise dropped
        with pytest.raises(UserError, match="at least 5"):
            T.encode("rte", rte, tok, n)
    assert T.encode("rte", rte, tok, 5)["input_ids"][0] == tok("the", "a")["input_ids"]
    wsc = [{"idx": 0, "text": "the cat sat on it", "span1_index": 1, "span1_text": "cat", "span2_index": 4,
            "span2_text": "it", "label": 1}]
    assert len(T.encode("wsc", wsc, tok, 3)["input_ids"][0]) == 3  # one text: 2 special tokens + 1
    with pytest.raises(UserError, match="at least 3"):
        T.encode("wsc", wsc, tok, 2)


def test_distilling_from_a_model_never_fine_tuned_is_refused(tiny_bert_dir, data, tmp_path, capsys):
    """A pretrained model (or one of another head) would be distilled towards its random head."""
    from transformers import BertForSequenceClassification
    line = fails(tiny_bert_dir, data, tmp_path / "a", "--distill_from", tiny_bert_dir, capsys=capsys)
    assert "was never fine-tuned" in line
    three = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    three.config.finetuning_task = "rte"
    three.save_pretrained(tmp_path / "three")
    line = fails(tiny_bert_dir, data, tmp_path / "b", "--distill_from", str(tmp_path / "three"), capsys=capsys)
    assert "has 3 outputs, but rte needs 2 classes" in line


# ------------------------------------------------------------------ checkpoints
def _killed_after_epoch_1(model, data_dir, out, monkeypatch, *extra):
    real, calls = finetune.evaluate, []

    def evaluate(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("pre-empted")
        return real(*a, **kw)
    monkeypatch.setattr(finetune, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        run(model, data_dir, out, *extra)
    monkeypatch.setattr(finetune, "evaluate", real)
    assert os.path.isfile(out / "checkpoint" / "state.safetensors")


def test_a_truncated_checkpoint_is_started_over(tiny_bert_dir, data, tmp_path, monkeypatch, capsys):
    """A truncated checkpoint used to fail every --resume rerun with a traceback until deleted by hand."""
    args = ("--epochs", "2", "--lr", "1e-3", "--no_save_model")
    whole = run(tiny_bert_dir, data, tmp_path / "whole", *args)
    out = tmp_path / "cut"
    _killed_after_epoch_1(tiny_bert_dir, data, out, monkeypatch, *args)
    state = out / "checkpoint" / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    capsys.readouterr()
    again = run(tiny_bert_dir, data, out, *args, "--resume")
    err = capsys.readouterr().err
    assert "warning: checkpoint" in err and "cannot be read" in err and "starting this run over" in err
    assert [e["score"] for e in again["epochs"]] == [e["score"] for e in whole["epochs"]]
    assert [e["train_loss"] for e in again["epochs"]] == [e["train_loss"] for e in whole["epochs"]]


def test_a_checkpoint_of_other_data_is_not_continued(tiny_bert_dir, data, tmp_path, monkeypatch, capsys):
    args = ("--epochs", "2", "--lr", "1e-3", "--no_save_model")
    out = tmp_path / "cut"
    _killed_after_epoch_1(tiny_bert_dir, data, out, monkeypatch, *args)
    write_rte(data, flip=True)
    capsys.readouterr()
    run(tiny_bert_dir, data, out, *args, "--resume")
    captured = capsys.readouterr()
    assert "belongs to a run with other settings or inputs: starting this run over" in captured.err
    assert "resuming from" not in captured.out


def test_checkpoints_save_and_restore_the_cuda_generators(tmp_path, monkeypatch):
    """With CUDA, dropout draws from the CUDA generators: a resumed GPU run needs them back (faked here)."""
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append([s.clone() for s in new]))
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = str(tmp_path / "checkpoint")
    finetune.save_checkpoint(path, model, opt, sched, loader, [{"epoch": 1, "score": 50.0}], {"id": 1})
    from safetensors import safe_open
    with safe_open(os.path.join(path, "state.safetensors"), "pt") as f:
        assert [torch.equal(f.get_tensor(f"rng/cuda/{i}"), s) for i, s in enumerate(states)] == [True, True]
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda step: 1.0)
    epochs = finetune.resume(path, fresh, fresh_opt, fresh_sched, loader, {"id": 1})
    assert epochs == [{"epoch": 1, "score": 50.0}] and torch.equal(fresh.weight, model.weight)
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], states))


# ------------------------------------------------------------------ the random start
def test_random_start_of_a_block_depends_on_its_seed_only(tiny_bert_dir):
    """--init random drew every block from the global RNG in turn: a --layers subset (or a resumed module
    stage that skips finished layers) got other blocks than a whole run. Now one generator per layer and block."""
    from modcomp.compression import compress
    from modeling_moddistilbert import ModDistilBertForSequenceClassification
    base = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2)
    blocks = {}
    for name, layers in (("all", None), ("layer 1", [1])):
        model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2)
        model.load_state_dict(base.state_dict())
        torch.manual_seed(0)
        compress(model, 2.0, "random", layers=layers)
        blocks[name] = model.base_model.layers[1]
    for a, b in zip(blocks["all"].parameters(), blocks["layer 1"].parameters()):
        assert torch.equal(a, b)
    model = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2)
    compress(model, 2.0, "random", seed=0)  # an explicit seed: the global RNG's state does not matter
    for a, b in zip(blocks["all"].parameters(), model.base_model.layers[1].parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(model.base_model.layers[0].attention.q_lin.weight,
                           model.base_model.layers[1].attention.q_lin.weight)
    # init_block with one block's generator: the same start whatever was drawn before
    from modcomp.compression import block_generator, init_block
    t, s1, s2 = base.base_model.layers[0].ffn, blocks["all"].ffn, blocks["layer 1"].ffn
    init_block(t, s1, "random", 0.02, generator=block_generator(3, 0, "ffn"))
    torch.rand(1000)
    init_block(t, s2, "random", 0.02, generator=block_generator(3, 0, "ffn"))
    assert torch.equal(s1.lin1.weight, s2.lin1.weight) and torch.all(s1.lin1.bias == 0)
