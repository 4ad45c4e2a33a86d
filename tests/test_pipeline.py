"""The shell pipeline: modular_pipeline.sh (one task, one seed) and rs_moded.sh (the sweep).

Runs the real stages under plain bash (no SLURM needed) on a tiny random BERT teacher, COPA from the
repo's data/, 16 examples and 1 epoch everywhere. The SLURM submission logic is checked against fake
sbatch/squeue commands that only record their arguments.
"""
import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import ROOT

QUICK = ["--task", "copa", "--capture_samples", "16", "--max_train_samples", "16", "--max_eval_samples", "16",
         "--module_epochs", "1", "--ft_epochs", "1", "--augment", "1",
         "--teacher", "pretrained", "--init", "svd", "--distill", "0"]   # the original recipe (paper-like)
# the default recipe: fine-tuned teacher, closed-form start, no module training, distilled fine-tune
QUICK_DEFAULT = ["--task", "copa", "--capture_samples", "16", "--max_train_samples", "16", "--max_eval_samples",
                 "16", "--ft_epochs", "1"]
# settings the scripts read from the environment: the caller's must not leak into the tests
SETTINGS_ENV = ["TASK", "SEED", "MODEL", "COMPRESSION", "VARIANT", "INIT", "DATA_DIR", "OUT_DIR", "CAPTURE_SAMPLES",
                "AUGMENT", "MODULE_EPOCHS", "MODULE_SEED", "MIXUP", "FT_EPOCHS", "MAX_TRAIN_SAMPLES",
                "MAX_EVAL_SAMPLES", "SAVE_MODEL", "CAPTURE_ARGS", "MODULE_ARGS", "FT_ARGS", "STAGES", "TASKS",
                "TEACHER", "DISTILL", "FT_LR", "ALLOCATE",
                "SEEDS", "VARIANTS", "PIPELINE_ROOT"]


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


@pytest.fixture(scope="module")
def teacher(tiny_bert_dir):
    """The tiny random BERT teacher of conftest (2 layers, hidden 32, MiniLM tokenizer)."""
    return tiny_bert_dir


@pytest.fixture(scope="module")
def pipeline(teacher, tmp_path_factory):
    """One full modular_pipeline.sh run: (out_dir, completed process)."""
    out = str(tmp_path_factory.mktemp("pipeline"))
    p = run("modular_pipeline.sh", *QUICK, "--model", teacher, "--out_dir", out, "--seed", "1")
    return out, p


def stages_run(stdout):
    return {s for s in ("baseline", "capture", "mha", "ffn", "finetune", "table") if f"stage {s}:" in stdout}


def stages_skipped(stdout):
    return {s for s in ("capture", "mha", "ffn") if f"skip: {s}" in stdout}


# ------------------------------------------------------------------ modular_pipeline.sh
def test_help():
    p = run("modular_pipeline.sh", "--help")
    assert "Usage: modular_pipeline.sh" in p.stdout and "--stages" in p.stdout
    assert "--teacher" in p.stdout and "--distill" in p.stdout and "run_superglue.py --resume" in p.stdout
    assert "--teacher pretrained --init random --module_epochs 200 --ft_epochs 18 --distill 0" in p.stdout
    with open(os.path.join(ROOT, "modular_pipeline.sh")) as f:
        head = f.read(600)
    for directive in ("#SBATCH --job-name", "#SBATCH --nodes=1", "#SBATCH --cpus-per-task", "#SBATCH --time",
                      "#SBATCH --output=%x-%j.out"):
        assert directive in head


def test_pipeline_runs_every_stage(pipeline):
    out, p = pipeline
    assert stages_run(p.stdout) == {"capture", "mha", "ffn", "finetune", "table"}
    assert not stages_skipped(p.stdout)
    task = os.path.join(out, "copa")
    with open(os.path.join(task, "activations", "manifest.json")) as f:
        assert json.load(f)["status"] == "complete"
    assert os.path.exists(os.path.join(task, "modules", ".mha.done"))
    assert os.path.exists(os.path.join(task, "modules", ".ffn.done"))
    with open(os.path.join(task, "modular", "seed1", "results.json")) as f:
        r = json.load(f)
    assert r["variant"] == "modular" and r["seed"] == 1 and r["compression"] == 2
    assert sorted(r["modules"]) == ["layer00_ffn.safetensors", "layer00_mha.safetensors",
                                    "layer01_ffn.safetensors", "layer01_mha.safetensors"]
    # the table (consolidate.py) is printed last
    assert "== best epoch on validation" in p.stdout and "== last epoch ==" in p.stdout
    assert "modular c=2" in p.stdout.split("stage table:")[1]


def test_default_recipe_chains_baseline_teacher_and_distillation(teacher, tmp_path):
    """No recipe flags: this seed's baseline is fine-tuned (and kept), captured as the teacher, the blocks get
    the closed-form start without training, and the compressed fine-tune is distilled from the baseline; the
    table shows both rows and the retention."""
    out = str(tmp_path)
    p = run("modular_pipeline.sh", *QUICK_DEFAULT, "--model", teacher, "--out_dir", out, "--seed", "2")
    assert stages_run(p.stdout) == {"baseline", "capture", "mha", "ffn", "finetune", "table"}
    task = os.path.join(out, "copa")
    base = os.path.join(task, "baseline", "seed2")
    assert os.path.isfile(os.path.join(base, "model", "model.safetensors"))
    with open(os.path.join(task, "teacher_seed2", "activations", "manifest.json")) as f:
        assert json.load(f)["model"] == os.path.join(base, "model")
    with open(os.path.join(task, "teacher_seed2", "modules", "report.json")) as f:
        rep = json.load(f)
    assert all(e["history"] == [] and e["data_init_rel_error"] is not None for e in rep["layers"])
    assert "allocation" in rep
    with open(os.path.join(task, "modular-data-alloc-ft+kd", "seed2", "results.json")) as f:
        r = json.load(f)
    assert r["variant"] == "modular-data-alloc-ft+kd" and r["init"] == "data" and r["base_model"] == teacher
    assert r["model"] == os.path.join(base, "model") and r["distill"]["from"] == os.path.join(base, "model")
    table = p.stdout.split("stage table:")[1]
    assert "(baseline)" in table and "modular-data-alloc-ft+kd c=2" in table and "retention" in table
    # a rerun reuses everything: both fine-tunes find their finished run with the same settings and inputs
    p = run("modular_pipeline.sh", *QUICK_DEFAULT, "--model", teacher, "--out_dir", out, "--seed", "2")
    assert stages_skipped(p.stdout) == {"capture", "mha", "ffn"}
    assert p.stdout.count("finished with the same settings and inputs; nothing to do") == 2


def test_pipeline_resume_skips_finished_stages(pipeline, teacher):
    out, _ = pipeline
    args = [*QUICK, "--model", teacher, "--out_dir", out, "--seed", "1"]
    p = run("modular_pipeline.sh", *args)
    assert stages_skipped(p.stdout) == {"capture", "mha", "ffn"}
    assert "finished with the same settings and inputs; nothing to do" in p.stdout

    # a removed marker reruns that stage only (the trainer itself skips layers saved with these settings)
    mods = os.path.join(out, "copa", "modules")
    os.remove(os.path.join(mods, ".ffn.done"))
    mha_time = os.path.getmtime(os.path.join(mods, "layer00_mha.safetensors"))
    p = run("modular_pipeline.sh", *args, "--stages", "capture,modules,finetune")
    assert stages_run(p.stdout) == {"ffn", "finetune"}
    assert stages_skipped(p.stdout) == {"capture", "mha"}
    assert "holds these settings already, skipped" in p.stdout
    assert "nothing to do" in p.stdout
    assert os.path.exists(os.path.join(mods, ".ffn.done"))
    assert os.path.getmtime(os.path.join(mods, "layer00_mha.safetensors")) == mha_time

    # a marker written with other settings reruns the stage, and records the new settings
    p = run("modular_pipeline.sh", *args, "--stages", "mha", "--module_epochs", "2")
    assert stages_run(p.stdout) == {"mha"} and "mha: settings changed, retraining" in p.stdout
    with open(os.path.join(mods, ".mha.done")) as f:
        assert "epochs=2" in f.read().splitlines()
    with open(os.path.join(mods, "report.json")) as f:
        epochs = {e["block"]: len(e["history"]) for e in json.load(f)["layers"] if e["layer"] == 0}
    assert epochs == {"mha": 2, "ffn": 1}
    # the fine-tune made with the old modules is stale: rerun, not reused
    p = run("modular_pipeline.sh", *args, "--stages", "finetune", "--module_epochs", "2", check=False)
    assert p.returncode == 1 and "no ffn modules with these settings" in p.stderr
    p = run("modular_pipeline.sh", *args, "--stages", "ffn,finetune", "--module_epochs", "2")
    assert "holds a run with other settings or inputs: rerunning" in p.stdout
    with open(os.path.join(out, "copa", "modular", "seed1", "results.json")) as f:
        r = json.load(f)
    with open(os.path.join(mods, "layer00_mha.safetensors"), "rb") as f:
        import hashlib
        assert r["modules_sha256"]["layer00_mha.safetensors"] == hashlib.sha256(f.read()).hexdigest()


def test_failing_stage_stops_the_run(tmp_path, teacher):
    p = run("modular_pipeline.sh", *QUICK, "--model", teacher, "--out_dir", str(tmp_path), "--task", "nosuchtask",
            check=False)
    assert p.returncode != 0
    assert "stage 'capture' failed" in p.stderr
    assert "error: unknown task 'nosuchtask'" in p.stderr
    assert stages_run(p.stdout) == {"capture"}
    assert not glob.glob(str(tmp_path / "**" / "results.json"), recursive=True)


def test_failing_module_stage_names_it(pipeline, teacher, tmp_path):
    out, _ = pipeline
    shutil.copytree(os.path.join(out, "copa", "activations"), tmp_path / "copa" / "activations")
    p = run("modular_pipeline.sh", *QUICK, "--model", teacher, "--out_dir", str(tmp_path), "--compression", "0.5",
            check=False)
    assert p.returncode == 2
    assert "skip: capture" in p.stdout                      # the copied capture has the same settings
    assert "stage 'mha' failed" in p.stderr and "error: compression must be >= 1" in p.stderr
    assert stages_run(p.stdout) == {"mha"}                   # no ffn, fine-tune or table after it
    assert not os.path.exists(tmp_path / "copa" / "modules" / ".mha.done")
    assert not glob.glob(str(tmp_path / "**" / "results.json"), recursive=True)


def test_bad_flag_is_an_error():
    p = run("modular_pipeline.sh", "--no-such-flag", check=False)
    assert p.returncode == 2 and "unknown argument '--no-such-flag'" in p.stderr


# ------------------------------------------------------------------ rs_moded.sh
def test_print_jobs_mapping_is_task_major():
    p = run("rs_moded.sh", "--print-jobs", "--tasks", "rte cb", "--seeds", "1 2 3", "--variants",
            "baseline modular svd")
    lines = p.stdout.splitlines()
    assert len(lines) == 18
    assert lines[0] == "0 rte 1 baseline" and lines[17] == "17 cb 3 svd"
    assert lines[1] == "1 rte 1 modular" and lines[3] == "3 rte 2 baseline" and lines[9] == "9 cb 1 baseline"
    expected = [f"{i} {t} {s} {v}" for i, (t, s, v) in enumerate(
        (t, s, v) for t in ["rte", "cb"] for s in [1, 2, 3] for v in ["baseline", "modular", "svd"])]
    assert lines == expected
    # the same mapping from the environment
    p = run("rs_moded.sh", "--print-jobs", env=clean_env(TASKS="rte cb", SEEDS="1 2 3",
                                                          VARIANTS="baseline modular svd"))
    assert p.stdout.splitlines() == expected
    p = run("rs_moded.sh", "--print-jobs", "--variants", "baseline nope", check=False)
    assert p.returncode == 2 and "unknown variant 'nope'" in p.stderr


def test_rs_moded_local_sweep(teacher, tmp_path):
    out = str(tmp_path / "sweep")
    common = ["--tasks", "copa", "--seeds", "1 2", "--variants", "baseline modular svd", "--model", teacher,
              "--data_dir", os.path.join(ROOT, "data"), "--out_dir", out, "--capture_samples", "16",
              "--module_epochs", "1", "--ft_epochs", "1", "--max_train_samples", "16", "--max_eval_samples", "16"]
    p = run("rs_moded.sh", "--local", "--parallel", "2", *common)
    for seed in (1, 2):
        for variant in ("baseline", "modular", "svd"):
            with open(os.path.join(out, "copa", variant, f"seed{seed}", "results.json")) as f:
                r = json.load(f)
            assert (r["variant"], r["seed"]) == (variant, seed)
            assert (r["compression"] is None) == (variant == "baseline")
            assert bool(r["modules"]) == (variant == "modular")
    # the module stage ran once for the task, before the fine-tunes, which did not touch it
    logs = {os.path.basename(p): open(p).read() for p in glob.glob(os.path.join(out, "logs", "*.log"))}
    assert sorted(logs) == sorted(["modules-copa.log"] + [f"ft-copa-{v}-seed{s}.log" for s in (1, 2)
                                                          for v in ("baseline", "modular", "svd")])
    assert sum(log.count("stage capture:") for log in logs.values()) == 1
    assert sum(log.count("stage mha:") for log in logs.values()) == 1
    assert sum(log.count("stage ffn:") for log in logs.values()) == 1
    assert all(log.count("stage finetune:") + log.count("stage baseline:") == 1
               for name, log in logs.items() if name.startswith("ft-"))
    assert all("stage baseline:" in log for name, log in logs.items() if "-baseline-" in name)
    # consolidate's table, printed and in OUT_DIR/table.txt, has the three variants
    with open(os.path.join(out, "table.txt")) as f:
        table = f.read()
    assert table in p.stdout
    for label in ("(baseline)", "modular c=2", "svd c=2"):
        assert label in table
    assert "All (task, seed) cells present." in table

    # a rerun does nothing but the table; a worker finds its job from SLURM_ARRAY_TASK_ID
    p = run("rs_moded.sh", "--local", *common)
    assert p.stdout.count("skipped: finished with the same settings") == 6
    assert "skip: capture" in open(os.path.join(out, "logs", "modules-copa.log")).read()
    p = run("rs_moded.sh", "--run-index", "array", *common, env=clean_env(SLURM_ARRAY_TASK_ID="4"))
    assert "job 4 = task copa, seed 2, variant modular" in p.stdout and "nothing to do" in p.stdout


FAKE_SBATCH = """#!/bin/bash
n=$(( $(cat "$FAKE_DIR/n" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_DIR/n"
echo "$n $*" >> "$FAKE_DIR/sbatch.log"
echo "$n;cluster"
"""


def test_rs_moded_submits_slurm_arrays_with_dependencies(tmp_path):
    """Without --local and with sbatch on PATH: a module array, per-task fine-tune arrays (the modular
    elements after their task's module element) and a consolidate job after all (fake sbatch)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", "#!/bin/bash\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = clean_env(FAKE_DIR=str(tmp_path), PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = str(tmp_path / "out")
    p = run("rs_moded.sh", "--tasks", "rte cb", "--seeds", "1 2", "--variants", "baseline modular svd",
            "--out_dir", out, "--sbatch_args", "--partition=debug", env=env)
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert len(calls) == 6  # modules, rte x2, cb x2, consolidate
    ids = [c.split()[0] for c in calls]
    mod = calls[0]
    assert "--array=0-1" in mod and "--run-modules array" in mod and "--export=ALL" in mod
    assert "--partition=debug" in mod
    rte_other, rte_mod, cb_other, cb_mod, table = calls[1:]
    assert "--array=0,2,3,5 " in rte_other and "--dependency" not in rte_other
    assert f"--array=1,4 " in rte_mod and f"--dependency=afterok:{ids[0]}_0" in rte_mod
    assert "--array=6,8,9,11 " in cb_other and "--dependency" not in cb_other
    assert f"--array=7,10 " in cb_mod and f"--dependency=afterok:{ids[0]}_1" in cb_mod
    for c in calls[1:5]:
        assert c.endswith("--run-index array") and "--export=ALL" in c
    assert f"--dependency=afterany:{':'.join(ids[:5])}" in table and table.endswith("--consolidate")
    for i in ids:
        assert i in p.stdout
