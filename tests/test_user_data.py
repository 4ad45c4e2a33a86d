"""Your data (issue 28 item 1): a training and a validation file (csv, tsv, json, jsonl), one text or a pair, a
label column; classification with the labels as found, or regression; the same code path as the eight tasks
(capture, modules, fine-tune, table). Every bad input is one line naming the file and line, before any work."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_BERT, save_with_tokenizer
from modcomp import report
from modcomp import runner as run_superglue
from modcomp import tasks as T
from modcomp import user_data
from modcomp import workflow
from modcomp import workflow_cli as W
from modcomp.utils import UserError

GREET = ["Hello", "Hi there", "Good morning", "Hey you", "Greetings, friend", "Good evening"]
ASK = ["How are you?", "What time is it?", "Where is it?", "Why not?", "Who are you?", "Can you help?"]


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def csv_rows(rows, header="text,label", nl="\n"):
    return header + nl + "".join(f'"{t}",{l}{nl}' for t, l in rows)


@pytest.fixture
def files(tmp_path):
    rows = [(t, "greeting") for t in GREET] + [(t, "question") for t in ASK]
    return (write(tmp_path / "train.csv", csv_rows(rows * 2)), write(tmp_path / "dev.csv", csv_rows(rows[::2])))


def test_every_format_reads_the_same_rows(tmp_path):
    rows = [("Hello, \"you\"", "greeting"), ("Why?", "question")]
    want = [{"text": t, "label": l} for t, l in rows]
    quoted = 'text,label\r\n"Hello, ""you""",greeting\r\n"Why?",question\r\n'
    formats = {"a.csv": "\ufeff" + quoted,                                 # BOM, CRLF, CSV quoting
               "b.tsv": "text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows),
               "c.jsonl": "".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows) + "\n",
               "d.json": json.dumps([{"text": t, "label": l} for t, l in rows])}
    for name, text in formats.items():
        got = [r for _, r in user_data.read_table(write(tmp_path / name, text))]
        assert got == want, name


@pytest.mark.parametrize("train,dev,kw,msg", [
    ("text,label\nHi,a\nHo,b\n", "txt,label\nHi,a\n", {}, "dev.csv, line 2: no column 'text'"),
    ("", "text,label\nHi,a\n", {}, "train.csv: empty file"),
    ("text,label\n", "text,label\nHi,a\n", {}, "train.csv: no rows"),
    ("text,text,label\nHi,Ho,a\n", "text,label\nHi,a\n", {}, "train.csv, line 1: duplicate column"),
    (b"text,label\nHi,a\nH\xe9,b\n", "text,label\nHi,a\n", {}, "train.csv, line 3: not UTF-8"),
    ("text,label\nHi,a\nHo,b\n", "text,label\nHi,c\n", {}, "dev.csv, line 2: label 'c' is not among"),
    ("text,label\nHi,0.5\nHo,nan\n", "text,label\nHi,1.5\n", {"task_type": "regression"},
     "train.csv, line 3: label is 'nan'"),
    ("text,label\nHi,0.5\nHo,high\n", "text,label\nHi,1.5\n", {"task_type": "regression"},
     "train.csv, line 3: label 'high' is not a number"),
    ("text,label\nHi,a\nHo,a\n", "text,label\nHi,a\n", {}, "classification needs two labels"),
    ("text,label\nHi,a\n,b\n", "text,label\nHi,a\n", {}, "train.csv, line 3: text is empty"),
    ("text,label\nHi,a\nHo,b,c\n", "text,label\nHi,a\n", {}, "train.csv, line 3: 3 fields"),
])
def test_a_bad_input_is_one_line_naming_file_and_line(tmp_path, train, dev, kw, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(")) as e:
        user_data.make_task(write(tmp_path / "train.csv", train), write(tmp_path / "dev.csv", dev), "text",
                            verbose=False, **kw)
    assert "\n" not in str(e.value)


def test_the_task_type_and_labels_come_from_the_training_file(tmp_path):
    d = write(tmp_path / "dev.csv", "a,b,score\nx,y,1\n")
    reg = user_data.make_task(write(tmp_path / "t1.csv", "a,b,score\nx,y,0.5\nz,w,3\n"), d, "a,b", "score",
                              verbose=False)
    assert (reg.kind, reg.num_labels, reg.metrics, reg.text_fields) == ("regression", 1, ("pearson", "spearman"),
                                                                        ("a", "b"))
    ints = user_data.make_task(write(tmp_path / "t2.csv", "a,b,score\nx,y,10\nz,w,9\nq,r,1\n"), d, "a,b",
                               "score", verbose=False)
    assert ints.kind == "classification" and ints.label_names == ("1", "9", "10")   # integers in their order
    rows = T.load_rows(ints, "validation")
    assert rows == [{"idx": 0, "label": 0, "text_a": "x", "text_b": "y"}]
    assert T.format_example(ints, rows[0]) == ("x", "y")
    with pytest.raises(UserError, match="one text column or two"):
        user_data.make_task(str(tmp_path / "t2.csv"), d, "a,b,score", "x", verbose=False)


def test_metrics_of_your_classification_task_by_hand(tmp_path):
    t = user_data.make_task(write(tmp_path / "t.csv", "text,label\na,x\nb,y\nc,z\n"),
                            write(tmp_path / "d.csv", "text,label\na,x\n"), "text", verbose=False)
    labels, preds = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    m = T.compute_metrics(t, preds, labels)
    # per class F1: x 2/3 (precision 1, recall 1/2), y 1/2 (precision 1/3, recall 1), z 0: macro (2/3 + 1/2 + 0) / 3
    assert m["accuracy"] == pytest.approx(0.5) and m["f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # Matthews (multi-class): (c s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)), with c = 2 correct of
    # s = 4, predicted counts p = (1, 3, 0), true counts t = (2, 1, 1): (8 - 5) / sqrt(6 * 10)
    assert m["matthews"] == pytest.approx(3 / 60 ** 0.5, abs=1e-12)
    assert T.task_score(t, m) == pytest.approx(100 * (0.5 + m["f1"]) / 2)


def test_a_fine_tune_on_your_files_records_its_task_and_the_table_reads_it(tmp_path, files):
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    model = save_with_tokenizer(BertModel(BertConfig(**TINY_BERT)), tmp_path / "m")
    out = tmp_path / "run"
    run_superglue.main(["--model_name_or_path", model, "--train_file", files[0], "--validation_file", files[1],
                        "--text_columns", "text", "--task", "greet", "--output_dir", str(out), "--ft_epochs", "1",
                        "--threads", "1"])
    r = json.load(open(out / "results.json"))
    assert r["task"] == "greet" and r["task_metrics"] == ["accuracy", "f1"] and r["task_spec"]["text_columns"] == ["text"]
    assert {"accuracy", "f1", "matthews"} <= set(r["epochs"][0])
    cfg = json.load(open(out / "model" / "config.json"))
    assert cfg["id2label"] == {"0": "greeting", "1": "question"}                   # the names, as found
    results = report.load_results(str(out))
    _, tables, _ = report.build(results)
    assert tables["last"][0]["tasks"]["greet"]["score"] == pytest.approx(r["last_score"])


def test_the_workflow_checks_your_files_before_any_stage_and_passes_them_on(tmp_path, files):
    bad = write(tmp_path / "bad.csv", "txt,label\nHi,greeting\n")
    with pytest.raises(W.Error, match="bad.csv, line 2: no column 'text'"):
        W.parse("pipeline", ["--train_file", files[0], "--validation_file", bad, "--text_columns", "text",
                             "--out_dir", str(tmp_path / "o")], {})
    o = W.parse("pipeline", ["--train_file", files[0], "--validation_file", files[1], "--text_columns", "text",
                             "--task", "greet", "--out_dir", str(tmp_path / "o")], {})
    assert o["tasks"] == ["greet"] and not os.path.exists(tmp_path / "o")
    jobs, targets = workflow.plan(o)
    for job in jobs.values():
        if job["stage"] in ("baseline", "capture", "finetune"):
            cmd = job["cmds"][0]
            assert cmd[cmd.index("--train_file") + 1] == os.path.abspath(files[0]) and "--data_dir" not in cmd
    assert targets[-1].startswith("greet/modular-data-alloc-ft+kd/c2/")
    # the sweep names your task by its one --tasks name (it was dropped: the task took the file's name)
    common = ["--train_file", files[0], "--validation_file", files[1], "--text_columns", "text", "--out_dir",
              str(tmp_path / "o")]
    assert W.parse("sweep", [*common, "--tasks", "greet"], {})["tasks"] == ["greet"]
    assert W.parse("sweep", common, {})["tasks"] == [user_data.task_name(files[0])]
    with pytest.raises(W.Error, match="one task; give it one name"):
        W.parse("sweep", [*common, "--tasks", "a b"], {})


@pytest.mark.slow
def test_the_pipeline_on_your_files(tmp_path, files, tiny_bert_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RS_"))}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    p = subprocess.run(["bash", "modular_pipeline.sh", "--train_file", files[0], "--validation_file", files[1],
                        "--text_columns", "text", "--model", tiny_bert_dir, "--ft_epochs", "1", "--fit_tokens",
                        "512", "--out_dir", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for stage in ("baseline", "capture", "mha", "ffn", "finetune"):
        assert f"] stage {stage}:" in p.stdout
    assert "retention" in p.stdout and "| " in p.stdout


def test_a_model_of_your_files_exports_and_predicts_single_texts(tmp_path, files):
    """export.py rebuilds your task from the spec saved in the model's config (its files, columns, labels), checks
    it on the validation file, and predict.py answers single texts with your label names."""
    pytest.importorskip("onnxruntime")
    import torch
    from transformers import BertConfig, BertModel
    from modcomp import export
    torch.manual_seed(0)
    model = save_with_tokenizer(BertModel(BertConfig(**TINY_BERT)), tmp_path / "m")
    run_superglue.main(["--model_name_or_path", model, "--train_file", files[0], "--validation_file", files[1],
                        "--text_columns", "text", "--task", "greet2", "--output_dir", str(tmp_path / "run"),
                        "--ft_epochs", "1", "--threads", "1"])
    T.TASKS.pop("greet2")   # as in a fresh process: the task comes back from the saved config
    export.main([str(tmp_path / "run" / "model"), str(tmp_path / "out"), "--threads", "1", "--repeats", "2"])
    rep = json.load(open(tmp_path / "out" / "export.json"))
    assert rep["texts_per_example"] == 1
    p = subprocess.run([sys.executable, str(tmp_path / "out" / "predict.py"), "How are you?"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[0])["label"] in ("greeting", "question")


def test_a_worker_flag_finds_the_planned_run_of_your_files(tmp_path, files):
    """--run_index computes the run's path with the same data key as the plan (your files' hashes), so it names a
    planned job (it used the data dir's key: no such job)."""
    o = W.parse("sweep", ["--train_file", files[0], "--validation_file", files[1], "--text_columns", "text",
                          "--seeds", "1", "--out_dir", str(tmp_path / "o"), "--run_index", "1"], {})
    jobs, targets = workflow.plan(o)
    (chosen,) = W.select(o, jobs, targets)
    assert chosen in jobs and jobs[chosen]["stage"] == "finetune"
