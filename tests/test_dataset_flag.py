"""`--dataset NAME[:CONFIG]` (issue 28 item 1): a dataset through `datasets` (a hub id where the hub is reachable,
or a local folder) becomes your files once: its train split and its validation split (the first of validation,
validation_matched, dev, test) written as jsonl under OUT/datasets/<name>-<content hash>/, class labels as their
names, rows without a label dropped; then the same code path as --train_file/--validation_file. Offline here: a
local folder through the real `datasets.load_dataset`, and an in-memory DatasetDict for what the hub gives."""
import argparse
import json
import os

import pytest

datasets = pytest.importorskip("datasets")

from modcomp import tasks as T
from modcomp import user_data
from modcomp import workflow_cli as W
from modcomp.utils import UserError


def folder_dataset(root):
    d = root / "questions"
    d.mkdir()
    (d / "train.csv").write_text("text,label\n" + "".join(f"q{i} what,{'A' if i % 2 else 'B'}\n" for i in range(8)))
    (d / "validation.csv").write_text("text,label\nq8 what,A\nq9 who,B\n")
    return str(d)


def test_a_local_dataset_folder_becomes_files_once(tmp_path, capsys):
    src = folder_dataset(tmp_path)
    train, val = user_data.dataset_files(src, str(tmp_path / "out"))
    assert os.path.dirname(train) == os.path.dirname(val)
    assert os.path.basename(os.path.dirname(train)).startswith("questions-")
    rows = [json.loads(line) for line in open(train)]
    assert [r["text"] for r in rows] == [f"q{i} what" for i in range(8)] and rows[1]["label"] == "A"
    info = json.load(open(os.path.join(os.path.dirname(train), "source.json")))
    assert info["splits"]["validation"] == {"split": "validation", "rows": 2, "dropped_without_label": 0}
    assert "train 8 rows, validation = split 'validation' 2 rows" in capsys.readouterr().out
    before = os.stat(train).st_mtime_ns
    assert user_data.dataset_files(src, str(tmp_path / "out")) == (train, val)   # the same content: found again
    assert os.stat(train).st_mtime_ns == before
    t = user_data.make_task(train, val, "text", name=user_data.dataset_task_name(src), verbose=False)
    assert (t.name, t.label_names, t.kind) == ("questions", ("A", "B"), "classification")


def hub_like(monkeypatch, splits):
    feats = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
                               "tags": datasets.Sequence(datasets.Value("string"))})
    rows = {"premise": ["a man sleeps", "a dog runs", "no one agreed"], "hypothesis": ["a man rests", "a cat",
            "x"], "label": [0, 2, -1], "tags": [["t"], [], []]}
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(rows, features=feats) for s in splits})
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, cfg=None: seen.append((name, cfg)) or dd)
    return seen


def test_class_labels_become_their_names_and_unlabelled_rows_are_dropped(tmp_path, monkeypatch, capsys):
    seen = hub_like(monkeypatch, ["train", "validation_matched", "test"])
    train, val = user_data.dataset_files("org/nli:plain", str(tmp_path))
    assert seen == [("org/nli", "plain")]
    rows = [json.loads(line) for line in open(train)]
    assert [r["label"] for r in rows] == ["entailment", "contradiction"]   # -1 (no gold label) dropped
    assert "tags" not in rows[0]                                            # nested values are no column
    info = json.load(open(os.path.join(os.path.dirname(val), "source.json")))
    assert info["dataset"] == "org/nli" and info["config"] == "plain"
    assert info["splits"]["validation"]["split"] == "validation_matched"   # before test
    assert "(2 without a label dropped)" in capsys.readouterr().out
    assert user_data.dataset_task_name("org/nli:plain") == "nli_plain"
    assert user_data.dataset_task_name("cb") == "cb_files"                  # never one of the eight's names


def test_a_dataset_without_the_splits_or_unreachable_is_one_line(tmp_path, monkeypatch):
    hub_like(monkeypatch, ["train", "other"])
    with pytest.raises(UserError, match=r"needs a train split and one of validation.*\(it has: train, other\)"):
        user_data.dataset_files("org/nli", str(tmp_path))

    def unreachable(name, cfg=None):
        raise ConnectionError("Couldn't reach 'org/nli' on the Hub (LocalEntryNotFoundError)\nmore lines")
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(UserError) as e:
        user_data.dataset_files("org/nli", str(tmp_path))
    assert "\n" not in str(e.value) and "--dataset org/nli: could not load it" in str(e.value)
    assert "--train_file" in str(e.value)
    assert not os.path.exists(tmp_path / "datasets")                       # nothing written
    with pytest.raises(UserError, match="give NAME"):
        user_data.dataset_files(":cfg", str(tmp_path))


def test_the_workflow_and_a_stage_take_a_dataset_as_files(tmp_path):
    src = folder_dataset(tmp_path)
    out = str(tmp_path / "runs")
    o = W.parse("pipeline", ["--dataset", src, "--text_columns", "text", "--out_dir", out], {})
    assert o["task"] == "questions" and o["user_task"]["train_file"].startswith(os.path.join(out, "datasets"))
    with pytest.raises(W.Error, match="not both"):
        W.parse("pipeline", ["--dataset", src, "--train_file", "x.csv", "--out_dir", out], {})
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir")
    T.add_task_arguments(p)
    a = p.parse_args(["--dataset", src, "--text_columns", "text", "--output_dir", str(tmp_path / "stage")])
    task = T.task_from_args(a)
    assert task.name == "questions" and task.files[0].startswith(str(tmp_path / "stage" / "datasets"))
    # the same bytes as the workflow's files: the same content hash
    assert os.path.basename(os.path.dirname(task.files[0])) == \
        os.path.basename(os.path.dirname(o["user_task"]["train_file"]))
