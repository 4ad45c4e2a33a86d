"""Your model as the teacher (issue 28 item 2): an already fine-tuned sequence classifier, given as --teacher DIR,
is evaluated once (run_superglue.py --eval_only: the baseline row), captured, and is the compressed model's start
(its head kept) and distillation source; no baseline fine-tune. A head that does not fit the task is a one-line
error before any work."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FIXTURE_DATA, ROOT, TINY_BERT, save_with_tokenizer
from modcomp import config
from modcomp import runner as run_superglue
from modcomp import workflow
from modcomp import workflow_cli as W
from modcomp.utils import UserError, run_main


def classifier(d, num_labels=2, id2label=None, seed=0):
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    kw = {"id2label": id2label} if id2label else {"num_labels": num_labels}
    return save_with_tokenizer(BertForSequenceClassification(BertConfig(**TINY_BERT, **kw)), d)


@pytest.fixture(scope="module")
def rte_teacher(tmp_path_factory):
    return classifier(tmp_path_factory.mktemp("rte_teacher"))


def test_eval_only_scores_the_model_as_it_is(rte_teacher, tmp_path):
    argv = ["--model_name_or_path", rte_teacher, "--task", "rte", "--data_dir", FIXTURE_DATA, "--output_dir",
            str(tmp_path / "b"), "--eval_only", "--threads", "1"]
    run_superglue.main(argv)
    r = json.load(open(tmp_path / "b" / "results.json"))
    assert [e["epoch"] for e in r["epochs"]] == [0] and r["variant"] == "baseline" and r["compression"] is None
    assert r["last_score"] == r["best_score"] == r["epochs"][0]["score"]
    assert not os.path.exists(tmp_path / "b" / "model")          # the user's model stays where it is
    run_superglue.main([a if a != str(tmp_path / "b") else str(tmp_path / "c") for a in argv])
    assert json.load(open(tmp_path / "c" / "results.json"))["last_score"] == r["last_score"]   # its head, kept


@pytest.mark.parametrize("make,msg", [
    (lambda d: save_with_tokenizer(__import__("transformers").BertModel(__import__("transformers").BertConfig(
        **TINY_BERT)), d), "no sequence-classification head"),
    (lambda d: classifier(d, num_labels=3), "has 3 outputs, but rte needs 2 classes"),
    (lambda d: classifier(d, num_labels=1), "a regression head"),
    (lambda d: classifier(d, id2label={0: "not_entailment", 1: "entailment"}), "in this order"),
])
def test_a_head_that_does_not_fit_is_one_line_before_any_work(tmp_path, capsys, make, msg):
    d = make(tmp_path / "t")
    out = tmp_path / "out"
    capsys.readouterr()   # what saving the model printed
    with pytest.raises(SystemExit):
        run_main(lambda: run_superglue.main(["--model_name_or_path", d, "--task", "rte", "--data_dir", FIXTURE_DATA,
                                             "--output_dir", str(out), "--eval_only"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert not out.exists()


def test_the_plan_evaluates_the_given_teacher_and_starts_from_it(rte_teacher, tmp_path):
    o = W.parse("sweep", ["--tasks", "rte", "--seeds", "1", "--teacher", rte_teacher, "--out_dir", str(tmp_path),
                          "--data_dir", FIXTURE_DATA], {})
    jobs, targets = workflow.plan(o)
    base = jobs[targets[0]]
    assert base["stage"] == "baseline" and "--eval_only" in base["cmds"][0] and rte_teacher in base["cmds"][0]
    run = jobs[targets[1]]
    cmd = run["cmds"][0]
    assert run["label"] == "modular-data-alloc-given+kd"
    assert cmd[cmd.index("--model_name_or_path") + 1] == rte_teacher == cmd[cmd.index("--distill_from") + 1]
    cap = jobs[run["needs"]["modules"].replace("/modules/", "/capture/").rsplit("/", 2)[0] + "/done.json"]
    assert cap["teacher"] == rte_teacher and cap["needs"] == {"baseline": targets[0]}   # its check comes first
    with pytest.raises(W.Error, match="no such model directory"):
        W.parse("sweep", ["--teacher", str(tmp_path / "nowhere") + "/", "--out_dir", str(tmp_path)], {})
    assert config.given_teacher(dict(o["settings"][0])) == rte_teacher
    # more seeds share the teacher's capture and modules, and keep them waiting on the first seed's evaluation
    # only (the old plan made them wait on the last seed's: adding a seed redid the capture and the modules)
    o3 = W.parse("sweep", ["--tasks", "rte", "--seeds", "1 2 3", "--teacher", rte_teacher, "--out_dir",
                           str(tmp_path), "--data_dir", FIXTURE_DATA], {})
    jobs3, _ = workflow.plan(o3)
    assert [k for k, j in jobs3.items() if j["stage"] == "capture"] == [k for k, j in jobs.items()
                                                                       if j["stage"] == "capture"]
    assert [j["needs"] for j in jobs3.values() if j["stage"] == "capture"] == [{"baseline": targets[0]}]
    hub = W.parse("sweep", ["--teacher", "textattack/bert-base-uncased-RTE", "--out_dir", str(tmp_path)], {})
    assert hub["fields"]["teacher"] == "textattack/bert-base-uncased-RTE"     # a hub id: checked by its stage


@pytest.mark.slow
def test_the_pipeline_compresses_a_given_teacher(rte_teacher, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RS_"))}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    p = subprocess.run(["bash", "modular_pipeline.sh", "--task", "rte", "--data_dir", FIXTURE_DATA, "--teacher",
                        rte_teacher, "--capture_samples", "16", "--max_train_samples", "16", "--max_eval_samples",
                        "16", "--ft_epochs", "1", "--fit_tokens", "512", "--out_dir", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "] stage baseline:" in p.stdout and "--eval_only" in p.stdout and "[rte] evaluated as it is" in p.stdout
    assert "epoch 1/1" not in p.stdout.split("stage capture")[0]   # no training before the capture
    assert "modular-data-alloc-given+kd" in p.stdout and "retention" in p.stdout
