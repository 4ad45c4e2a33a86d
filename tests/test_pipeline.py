"""modular_pipeline.sh (one task, one seed) and rs_moded.sh (the sweep), both on Snakemake (workflow.py).

Runs the real stages under plain bash (rs_moded.sh --local; no SLURM here: scripts/slurm_local.sh runs the sweep on real SLURM in CI)
on a tiny random BERT teacher, COPA from the repo's data/, 16 examples and 1 epoch everywhere.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # every test here runs bash scripts (and python stages) as subprocesses

TINY = ["--task", "copa", "--capture_samples", "16", "--max_train_samples", "16", "--max_eval_samples", "16",
        "--ft_epochs", "1", "--fit_tokens", "512"]
# settings the scripts read from the environment: the caller's must not leak into the tests
SETTINGS_ENV = ["RECIPE", "TASK", "SEED", "MODEL", "COMPRESSION", "VARIANT", "INIT", "DATA_DIR", "OUT_DIR",
                "CAPTURE_SAMPLES", "AUGMENT", "MODULE_EPOCHS", "MODULE_SEED", "MIXUP", "FT_EPOCHS",
                "MAX_TRAIN_SAMPLES", "MAX_EVAL_SAMPLES", "SAVE_MODEL", "CAPTURE_ARGS", "MODULE_ARGS", "FT_ARGS",
                "STAGES", "TASKS", "TEACHER", "DISTILL", "FT_LR", "ALLOCATE", "FIT_TOKENS", "SEEDS", "VARIANTS",
                "PIPELINE_ROOT"]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in SETTINGS_ENV and not k.startswith(("SLURM_", "RS_", "SBATCH_"))}
    env["PYTHON"] = sys.executable
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only add overhead on a shared CPU
    env.update(extra)
    return env


def run(script, *args, check=True, env=None):
    p = subprocess.run(["bash", script, *args], cwd=ROOT, capture_output=True, text=True,
                       env=env or clean_env(), timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {p.returncode}\n--- stdout\n{p.stdout[-3000:]}"
                             f"\n--- stderr\n{p.stderr[-3000:]}")
    return p


def results(out):
    """{path relative to out: results.json} of every finished run under out."""
    return {os.path.relpath(p, out): json.load(open(p)) for p in glob.glob(f"{out}/**/results.json", recursive=True)}


def stages_run(stdout):
    return {s for s in ("baseline", "capture", "mha", "ffn", "finetune") if f"] stage {s}:" in stdout}


@pytest.fixture(scope="module")
def pipeline(tiny_bert_dir, tmp_path_factory):
    """One default-recipe modular_pipeline.sh run: (out_dir, completed process)."""
    out = str(tmp_path_factory.mktemp("pipeline"))
    return out, run("modular_pipeline.sh", *TINY, "--model", tiny_bert_dir, "--out_dir", out)


# ------------------------------------------------------------------ the wrappers
def test_help_and_sbatch_headers_kept():
    for script, mode in (("modular_pipeline.sh", "pipeline"), ("rs_moded.sh", "sweep")):
        p = run(script, "--help")
        assert f"usage: {script}" in p.stdout and "--recipe" in p.stdout and "--ft_lr" in p.stdout
        text = open(os.path.join(ROOT, script)).read()
        assert text.startswith("#!/bin/bash\n#SBATCH --job-name=") and "#SBATCH --cpus-per-task=8" in text
        assert f'-m modcomp.workflow_cli {mode} "$@"' in text and len(text.splitlines()) < 60   # a thin wrapper
    assert "default, paper" in run("modular_pipeline.sh", "--help").stdout.replace("\n", " ")


def test_bad_flag_fails_before_any_stage(tmp_path):
    p = run("modular_pipeline.sh", "--compression", "0.5", "--out_dir", str(tmp_path / "o"), check=False)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--compression must be" in p.stderr
    assert not os.path.exists(tmp_path / "o")
    p = run("rs_moded.sh", "--seeds", "1 x", check=False)
    assert p.returncode == 2 and "--seed 'x'" in p.stderr


def test_dry_run_prints_the_job_graph(tmp_path, tiny_bert_dir):
    p = run("rs_moded.sh", "-n", "--local", "--tasks", "copa", "--seeds", "1 2", "--model", tiny_bert_dir,
            "--out_dir", str(tmp_path))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("  ")]
    assert sum(ln.split()[0] == "baseline" for ln in lines) == 2 and sum(ln.split()[0] == "finetune" for ln in lines) == 2
    assert any(ln.split()[0] == "capture" and "<- copa/baseline/seed1-" in ln for ln in lines)
    assert "dry-run" in p.stdout + p.stderr and not results(tmp_path)


def test_print_jobs_mapping_is_task_major():
    p = run("rs_moded.sh", "--print_jobs", "--tasks", "rte cb", "--seeds", "1 2", "--variants", "baseline modular")
    assert p.stdout.split("\n")[:3] == ["0 rte 1 baseline", "1 rte 1 modular", "2 rte 2 baseline"]


# ------------------------------------------------------------------ modular_pipeline.sh
def test_pipeline_runs_the_default_recipe_chain(pipeline):
    out, p = pipeline
    assert stages_run(p.stdout) == {"baseline", "capture", "mha", "ffn", "finetune"}
    rs = results(out)
    (run_path,) = [k for k in rs if "modular" in k]
    assert run_path.startswith("copa/modular-data-alloc-ft+kd/c2/seed1-")
    r = rs[run_path]
    assert r["recipe"]["name"] == "default" and r["recipe"]["fields"]["distill"] == 1 and r["distill"]
    assert "baseline/seed1-" in r["settings"]["model_name_or_path"]          # the fine-tuned teacher's head
    assert "== last epoch ==" in p.stdout and "retention" in p.stdout


def test_rerun_does_nothing(pipeline, tiny_bert_dir):
    out, _ = pipeline
    before = {k: os.path.getmtime(os.path.join(out, k)) for k in results(out)}
    p = run("modular_pipeline.sh", *TINY, "--model", tiny_bert_dir, "--out_dir", out)
    assert not stages_run(p.stdout)
    assert {k: os.path.getmtime(os.path.join(out, k)) for k in results(out)} == before


def test_other_compression_and_lr_keep_every_result(pipeline, tiny_bert_dir):
    """c=3 after c=2, then a second learning rate, in one out_dir: every finished result stays, each its own row,
    each compared with the baseline of its own learning rate."""
    out, _ = pipeline
    first = {k: json.dumps(v) for k, v in results(out).items()}
    p = run("modular_pipeline.sh", *TINY, "--model", tiny_bert_dir, "--out_dir", out, "--compression", "3")
    assert stages_run(p.stdout) == {"mha", "ffn", "finetune"}      # the baseline and capture are reused
    p = run("modular_pipeline.sh", *TINY, "--model", tiny_bert_dir, "--out_dir", out, "--ft_lr", "5e-5")
    assert stages_run(p.stdout) == {"baseline", "capture", "mha", "ffn", "finetune"}   # its own teacher
    now = results(out)
    assert all(json.dumps(now[k]) == v for k, v in first.items())
    assert len([k for k in now if "/baseline/" in k]) == 2 and len([k for k in now if "/c3/" in k]) == 1
    t = subprocess.run([sys.executable, "consolidate.py", "--results_dir", out, "--format", "json"], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    table = json.loads(t.stdout)
    assert len(table["last"]) == 5 and len(table["retention"]["last"]) == 3 and table["warnings"]


def test_concurrent_runs_with_other_inits_share_no_files(tmp_path, tiny_bert_dir):
    out = str(tmp_path)
    procs = [subprocess.Popen(["bash", "modular_pipeline.sh", *TINY, "--model", tiny_bert_dir, "--out_dir", out,
                               "--init", init], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for init in ("data", "svd")]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    rs = results(out)
    assert sorted(k.split("/")[1] for k in rs) == ["baseline", "modular-data-alloc-ft+kd", "modular-ft+kd"]
    mods = [r["modules_dir"] for r in rs.values() if r["modules_dir"]]
    assert len(set(mods)) == 2 and sum("stage baseline:" in log for log in logs) == 2   # one ran it, one waited
    assert sum("nothing to do" in log for log in logs) == 1


def test_killed_run_resumes_without_redoing_finished_stages(tmp_path, tiny_bert_dir):
    out = str(tmp_path)
    cmd = ["bash", "modular_pipeline.sh", *TINY, "--model", tiny_bert_dir, "--out_dir", out]
    p = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 600
    while not glob.glob(f"{out}/copa/capture/*/stage.json") and time.time() < deadline and p.poll() is None:
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)   # killed in the capture stage, after the baseline
    p.wait()
    (base,) = glob.glob(f"{out}/copa/baseline/*/results.json")
    mtime = os.path.getmtime(base)
    q = run(*cmd[1:])
    assert "stage baseline:" not in q.stdout and os.path.getmtime(base) == mtime
    assert len(results(out)) == 2


# ------------------------------------------------------------------ rs_moded.sh
def test_sweep_failure_cancels_only_what_depends_on_it(tmp_path, tiny_bert_dir):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(ROOT, "data", "copa"), data / "copa")
    (data / "wsc").mkdir()
    shutil.copy(os.path.join(ROOT, "data", "wsc", "val.jsonl"), data / "wsc")
    (data / "wsc" / "train.jsonl").write_text("not JSON\n")
    out = str(tmp_path / "out")
    p = run("rs_moded.sh", "--tasks", "copa wsc", "--seeds", "1", "--model", tiny_bert_dir, "--data_dir", str(data),
            "--out_dir", out, *TINY[2:], "--local", "--parallel", "2", check=False)
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    rs = results(out)
    assert sorted(k.split("/")[:2] for k in rs) == [["copa", "baseline"], ["copa", "modular-data-alloc-ft+kd"]]
    assert not os.path.exists(os.path.join(out, "wsc", "capture"))
    assert "modular-data-alloc-ft+kd" in open(os.path.join(out, "table.txt")).read()


def test_a_sweep_over_compression_is_one_graph_sharing_baselines_and_captures(tmp_path, tiny_bert_dir):
    """rs_moded.sh --compression "2 4" --seeds "1 2": one Snakemake graph; each seed's baseline and capture run
    once for both compressions. Run from a checkout path and into an --out_dir with a space and shell characters
    in them: every path reaches the stages as a path."""
    checkout = tmp_path / "check out"
    checkout.symlink_to(ROOT)
    out = tmp_path / "out dir;$(touch pwned)'x"
    p = subprocess.run(["bash", str(checkout / "rs_moded.sh"), "--local", "--tasks", "copa", "--seeds", "1 2",
                        "--compression", "2 4", "--model", tiny_bert_dir, "--out_dir", str(out), *TINY[2:]],
                       cwd=str(tmp_path), capture_output=True, text=True, env=clean_env(), timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    counts = {s: p.stdout.count(f"] stage {s}:") for s in ("baseline", "capture", "mha", "finetune")}
    assert counts == {"baseline": 2, "capture": 2, "mha": 4, "finetune": 4}, counts
    assert (p.stdout + p.stderr).count("Building DAG of jobs") == 1     # one graph
    rs = results(str(out))
    assert len(rs) == 6 and {k.split("/")[2] for k in rs if "modular" in k} == {"c2", "c4"}
    assert not glob.glob(str(tmp_path / "**" / "pwned"), recursive=True) and not os.path.exists("pwned")
    table = open(out / "table.txt").read()
    assert "c=2" in table and "c=4" in table


def test_sigterm_stops_snakemake_and_its_stages(tmp_path, tiny_bert_dir):
    """SIGTERM to rs_moded.sh (what timeout and scancel send) stops Snakemake and the stage it runs: nothing of
    the run is left running, and no stage starts afterwards."""
    slow = tmp_path / "slow-python"   # a python whose fine-tunes take long: the run is inside a stage
    slow.write_text(f'#!/bin/bash\nfor a in "$@"; do [ "$a" = run_superglue.py ] && sleep 90; done\n'
                    f'exec {sys.executable} "$@"\n')
    slow.chmod(0o755)
    out = tmp_path / "out"
    p = subprocess.Popen(["bash", "rs_moded.sh", "--local", "--tasks", "copa", "--seeds", "1", "--model",
                          tiny_bert_dir, "--out_dir", str(out), *TINY[2:]], cwd=ROOT, env=clean_env(PYTHON=str(slow)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not glob.glob(f"{out}/logs/copa/baseline/*.log") and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)   # the stage has started its run_superglue.py (asleep in the slow python)
    p.send_signal(signal.SIGTERM)
    log = p.communicate(timeout=60)[0]
    assert p.returncode == 128 + signal.SIGTERM, log[-3000:]
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not left, subprocess.run(["ps", "-o", "pid,args", "-p", ",".join(left)], capture_output=True,
                                    text=True).stdout
    time.sleep(45)   # the orphaned Snakemake started the next stage 40 s later
    assert not os.path.exists(out / "copa" / "capture") and not glob.glob(f"{out}/logs/copa/capture/*")
