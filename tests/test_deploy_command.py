"""One command to a deployable model (issue 28 item 4): modular_pipeline.sh --export OUT writes the compressed
model, its ONNX Runtime export with predict.py, and report.json/report.md against its teacher (modcomp/deploy.py);
OUT is never a directory of other files, a model directory or a folder above one."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FIXTURE_DATA, ROOT
from modcomp import deploy
from modcomp.utils import UserError


def test_out_is_refused_before_any_work_unless_new_empty_or_an_earlier_one(tmp_path):
    model, teacher, work = tmp_path / "m", tmp_path / "t", tmp_path / "w"
    for d in (model, teacher):
        d.mkdir()
    inputs = [("the compressed model", str(model)), ("the teacher", str(teacher)), ("the work directory", str(work))]
    deploy.check_out(str(tmp_path / "new"), inputs, False)
    (tmp_path / "empty").mkdir()
    deploy.check_out(str(tmp_path / "empty"), inputs, False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="no earlier export"):
        deploy.check_out(str(mine), inputs, False)
    deploy.check_out(str(mine), inputs, True)                        # --overwrite
    for bad in (model, tmp_path, teacher):                            # a model dir, a folder above one
        with pytest.raises(UserError, match="inside it or above it"):
            deploy.check_out(str(bad), inputs, True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        deploy.check_out(str(tmp_path / "file"), inputs, True)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "report.json").write_text(json.dumps({"format": deploy.FORMAT}))
    deploy.check_out(str(earlier), inputs, False)


@pytest.mark.slow
def test_the_pipeline_exports_a_deployable_model_with_its_report(tmp_path, tiny_bert_dir):
    pytest.importorskip("onnxruntime")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RS_"))}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    out = tmp_path / "deploy"
    p = subprocess.run(["bash", "modular_pipeline.sh", "--task", "rte", "--data_dir", FIXTURE_DATA, "--model",
                        tiny_bert_dir, "--capture_samples", "16", "--max_train_samples", "16", "--max_eval_samples",
                        "16", "--ft_epochs", "1", "--fit_tokens", "512", "--out_dir", str(tmp_path / "runs"),
                        "--export", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["model", "onnx", "report.json", "report.md"]
    r = json.load(open(out / "report.json"))
    assert r["format"] == deploy.FORMAT and r["task"] == "rte"
    assert os.path.isdir(r["teacher_path"]) and r["model_path"].endswith("model")
    for name in ("teacher", "compressed"):
        assert set(r[name]["validation"]) == set(r["runtimes"]) == set(r[name]["latency_ms"])
    assert set(deploy.RUNTIMES) < set(r["runtimes"]) == set(deploy.RUNTIMES) | {"openvino default", "openvino int8"}
    assert set(r["int8_points_lost"]) == {"onnx int8", "openvino int8"}
    assert r["compressed"]["attn_dims"] != r["teacher"]["attn_dims"]   # the compressed one is smaller
    q = subprocess.run([sys.executable, str(out / "onnx" / "predict.py"), "A man plays.", "A man is playing."],
                       capture_output=True, text=True, timeout=120)
    assert q.returncode == 0 and json.loads(q.stdout.splitlines()[0])["label"] in ("entailment", "not_entailment")
    assert "retention" in (out / "report.md").read_text().lower()


def test_a_sweep_exports_every_compressed_run_into_its_own_directory(tmp_path):
    from modcomp import workflow
    from modcomp import workflow_cli as W
    o = W.parse("sweep", ["--tasks", "rte", "--seeds", "1 2", "--compression", "2 4", "--data_dir", FIXTURE_DATA,
                          "--out_dir", str(tmp_path / "runs"), "--export", str(tmp_path / "deploy")], {})
    jobs, targets = workflow.plan(o)
    outs = sorted(j["cmds"][0][j["cmds"][0].index("--out") + 1] for j in jobs.values() if j["stage"] == "deploy")
    assert [os.path.basename(p) for p in outs] == [f"rte_modular-data-alloc-ft+kd_c{c}_seed{s}"
                                                   for c in (2, 4) for s in (1, 2)]
    assert all(os.path.dirname(p) == str(tmp_path / "deploy") for p in outs)
    ft = [j for j in jobs.values() if j["stage"] == "finetune"]
    assert ft and all("--no_save_model" not in j["cmds"][0] for j in ft)   # the models a deploy reads are kept
