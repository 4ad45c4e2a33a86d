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

pytestmark = pytest.mark.slow  # every test here runs bash scripts (and python stages) as subprocesses

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
                "TEACHER", "DISTILL", "FT_LR", "ALLOCATE", "FIT_TOKENS",
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


def test_fit_tokens_bound_the_capture_and_the_fit(teacher, tmp_path):
    """--fit_tokens N (default 65536): the closed form is fitted on at most N training tokens per layer, and
    with no module training the capture stores a seeded subset of about N/0.9 tokens only; with module training
    the capture keeps every example. A bad value is refused."""
    out = str(tmp_path / "a")
    run("modular_pipeline.sh", *QUICK_DEFAULT, "--capture_samples", "40", "--model", teacher, "--out_dir", out,
        "--fit_tokens", "600", "--stages", "baseline,capture,modules")
    cap = os.path.join(out, "copa", "teacher_seed1", "activations")
    with open(os.path.join(cap, "manifest.json")) as f:
        m = json.load(f)
    assert m["settings"]["max_tokens"] == 667 and m["n_tokens"] <= 667 and m["n_examples"] < 40
    with open(os.path.join(out, "copa", "teacher_seed1", "modules", "report.json")) as f:
        rep = json.load(f)
    assert all(e["fit"]["fit_tokens"] <= 600 for e in rep["layers"])
    assert rep["settings"]["mha"]["fit_tokens"] == rep["settings"]["ffn"]["fit_tokens"] == 600
    out = str(tmp_path / "b")
    run("modular_pipeline.sh", *QUICK_DEFAULT, "--capture_samples", "40", "--model", teacher, "--out_dir", out,
        "--fit_tokens", "600", "--module_epochs", "1", "--stages", "baseline,capture")
    with open(os.path.join(out, "copa", "teacher_seed1", "activations", "manifest.json")) as f:
        m = json.load(f)
    assert m["settings"]["max_tokens"] is None and m["n_examples"] == 40
    p = run("modular_pipeline.sh", "--fit_tokens", "lots", check=False)
    assert p.returncode == 2 and "--fit_tokens must be a positive integer or 'all'" in p.stderr


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


# ------------------------------------------------------------------ rs_moded.sh: the chained recipe
def tiny_sweep_args(teacher, out):
    return ["--tasks", "copa", "--model", teacher, "--data_dir", os.path.join(ROOT, "data"), "--out_dir", out,
            "--capture_samples", "16", "--ft_epochs", "1", "--max_train_samples", "16", "--max_eval_samples", "16"]


def test_rs_moded_local_chained_recipe(teacher, tmp_path):
    """--teacher finetuned --distill 1 (modular_pipeline.sh's default recipe): each seed's baseline runs first and
    keeps its model, the module stage of each (task, seed) captures from that seed's baseline, and the compressed
    fine-tune is distilled from it. A baseline finished earlier without its model (the default, independent
    recipe) is rerun to keep it."""
    out = str(tmp_path / "sweep")
    common = tiny_sweep_args(teacher, out)
    run("rs_moded.sh", "--local", *common, "--seeds", "1", "--variants", "baseline")
    base1 = os.path.join(out, "copa", "baseline", "seed1")
    assert os.path.isfile(os.path.join(base1, "results.json")) and not os.path.exists(os.path.join(base1, "model"))

    recipe = ["--teacher", "finetuned", "--distill", "1", "--init", "data", "--allocate", "1", "--module_epochs", "0",
              "--augment", "0"]
    p = run("rs_moded.sh", "--local", "--parallel", "2", *common, "--seeds", "1 2", "--variants", "baseline modular",
            *recipe)
    label = "modular-data-alloc-ft+kd"
    for seed in (1, 2):
        base = os.path.join(out, "copa", "baseline", f"seed{seed}")
        model = os.path.join(base, "model")
        assert os.path.isfile(os.path.join(model, "model.safetensors"))
        with open(os.path.join(base, "results.json")) as f:
            r = json.load(f)
        assert (r["variant"], r["seed"], r["compression"]) == ("baseline", seed, None)
        with open(os.path.join(out, "copa", label, f"seed{seed}", "results.json")) as f:
            r = json.load(f)
        assert (r["variant"], r["seed"], r["compression"], r["init"]) == (label, seed, 2, "data")
        assert r["model"] == model and r["distill"]["from"] == model
        assert r["modules_dir"] == os.path.join(out, "copa", f"teacher_seed{seed}", "modules")
        with open(os.path.join(out, "copa", f"teacher_seed{seed}", "activations", "manifest.json")) as f:
            assert json.load(f)["model"] == model
    assert not os.path.exists(os.path.join(out, "copa", "activations"))   # no per-task (pretrained) capture
    logs = {os.path.basename(q): open(q).read() for q in glob.glob(os.path.join(out, "logs", "*.log"))}
    assert sorted(logs) == sorted([f"{k}-seed{s}.log" for s in (1, 2)
                                   for k in ("modules-copa", "ft-copa-baseline", "ft-copa-modular")])
    assert "finished without keeping its model, which this recipe needs: rerunning it" in logs[
        "ft-copa-baseline-seed1.log"]
    for s in (1, 2):
        assert {"capture", "mha", "ffn"} <= stages_run(logs[f"modules-copa-seed{s}.log"])
        assert "stage baseline:" not in logs[f"modules-copa-seed{s}.log"]
        assert stages_run(logs[f"ft-copa-modular-seed{s}.log"]) == {"finetune"}
    # the phases: both baselines done before a module stage starts, both module stages before a modular fine-tune
    lines = p.stdout.splitlines()
    at = {(w, n): i for i, line in enumerate(lines) for w in ("start", "done ") if f"] {w} " in line
          for n in [line.split(f"] {w} ")[1].split()[0]]}
    assert max(at["done ", f"ft-copa-baseline-seed{s}"] for s in (1, 2)) < \
        min(at["start", f"modules-copa-seed{s}"] for s in (1, 2))
    assert max(at["done ", f"modules-copa-seed{s}"] for s in (1, 2)) < \
        min(at["start", f"ft-copa-modular-seed{s}"] for s in (1, 2))
    assert "all 4 fine-tunes have results" in p.stdout
    with open(os.path.join(out, "table.txt")) as f:
        table = f.read()
    assert "(baseline)" in table and f"{label} c=2" in table and "All (task, seed) cells present." in table


def test_rs_moded_local_chained_skips_jobs_after_a_failed_baseline(teacher, tmp_path):
    out = str(tmp_path / "sweep")
    args = [*tiny_sweep_args(teacher, out), "--tasks", "nosuchtask", "--seeds", "1", "--variants", "baseline modular",
            "--teacher", "finetuned", "--distill", "1"]
    p = run("rs_moded.sh", "--local", *args, check=False)
    assert p.returncode == 1
    assert "FAILED ft-nosuchtask-baseline-seed1" in p.stderr
    assert "SKIPPED modules-nosuchtask-seed1: ft-nosuchtask-baseline-seed1 failed" in p.stderr
    assert "SKIPPED ft-nosuchtask-modular-seed1: modules-nosuchtask-seed1 failed" in p.stderr
    assert "3 job(s) failed" in p.stderr
    assert sorted(os.listdir(os.path.join(out, "logs"))) == ["ft-nosuchtask-baseline-seed1.log"]


def fake_slurm_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", "#!/bin/bash\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    return clean_env(FAKE_DIR=str(tmp_path), PATH=f"{bin_dir}:{os.environ['PATH']}")


def sbatch_calls(tmp_path):
    """The fake sbatch's calls since the last one: [(id, {option: value}, command)]."""
    log = tmp_path / "sbatch.log"
    calls = []
    for line in log.read_text().splitlines():
        words = line.split()
        cut = next(i for i, w in enumerate(words) if w.endswith("/rs_moded.sh"))
        opts = dict(w.split("=", 1) if "=" in w else (w, True) for w in words[1:cut])
        calls.append((words[0], opts, " ".join(words[cut + 1:])))
    log.unlink()
    return calls


def test_rs_moded_submits_the_chained_recipe(tmp_path):
    """--teacher finetuned --distill 1 on SLURM (fake sbatch): arrays indexed by (task, seed) pair, chained with
    aftercorr: baseline element P -> module element P -> the compressed fine-tunes' element P; consolidate
    afterany on all. Each worker element runs the same pair (checked against a fake modular_pipeline.sh)."""
    env = fake_slurm_env(tmp_path)
    out = str(tmp_path / "out")
    sweep = ["--tasks", "rte cb", "--seeds", "1 2", "--variants", "baseline modular svd", "--out_dir", out]
    p = run("rs_moded.sh", *sweep, "--teacher", "finetuned", "--distill", "1", "--module_sbatch_args", "--mem=1G",
            env=env)
    (base, bo, bc), (mod, mo, mc), (ftm, fo, fc), (fts, so, sc), (tab, to, tc) = sbatch_calls(tmp_path)
    assert (bo["--job-name"], bo["--array"], bc) == ("rsm-baseline", "0-3", "--run-variant baseline array")
    assert "--dependency" not in bo and "--mem" not in bo
    assert (mo["--job-name"], mo["--array"], mc) == ("rsm-modules", "0-3", "--run-seed-modules array")
    assert mo["--dependency"] == f"aftercorr:{base}" and mo["--mem"] == "1G"
    assert (fo["--job-name"], fo["--array"], fc) == ("rsm-ft-modular", "0-3", "--run-variant modular array")
    assert sorted(fo["--dependency"].split(",")) == sorted([f"aftercorr:{mod}", f"aftercorr:{base}"])
    assert (so["--job-name"], so["--array"], sc) == ("rsm-ft-svd", "0-3", "--run-variant svd array")
    assert so["--dependency"] == f"aftercorr:{base}"
    for o in (mo, fo, so):
        assert o["--kill-on-invalid-dep"] == "yes" and o["--export"] == "ALL"
    assert to["--dependency"] == f"afterany:{base}:{mod}:{ftm}:{fts}" and tc == "--consolidate"
    for i in (base, mod, ftm, fts, tab):
        assert i in p.stdout

    # aftercorr pairs equal element numbers: element P of every array is (task, seed) pair P, and the fine-tune
    # element P of variant V is the job --print-jobs lists at P*nV + (position of V)
    jobs = run("rs_moded.sh", "--print-jobs", *sweep, "--teacher", "finetuned", "--distill", "1").stdout.splitlines()
    assert jobs[0] == "0 rte 1 baseline" and jobs[11] == "11 cb 2 svd"
    root = tmp_path / "root"   # this rs_moded.sh, with a modular_pipeline.sh that prints what it was asked
    root.mkdir()
    shutil.copy(os.path.join(ROOT, "rs_moded.sh"), root)
    (root / "modular_pipeline.sh").write_text('#!/bin/bash\necho "PIPELINE $* teacher=$TEACHER distill=$DISTILL"\n')
    for pair in range(4):
        _, task, seed, _ = jobs[pair * 3].split()
        for k, worker in enumerate((["--run-variant", "baseline"], ["--run-variant", "modular"],
                                    ["--run-variant", "svd"])):
            q = run(str(root / "rs_moded.sh"), *worker, "array", *sweep, "--teacher", "finetuned", "--distill", "1",
                    env=clean_env(SLURM_ARRAY_TASK_ID=str(pair)))
            _, t, s, v = jobs[pair * 3 + k].split()
            assert f"job {pair * 3 + k} = task {t}, seed {s}, variant {v}" in q.stdout
            assert (t, s) == (task, seed)
            assert (f"PIPELINE --stages finetune --task {task} --seed {seed} --variant {v} --out_dir {out} "
                    "teacher=finetuned distill=1") in q.stdout
        q = run(str(root / "rs_moded.sh"), "--run-seed-modules", "array", *sweep, "--teacher", "finetuned",
                env=clean_env(SLURM_ARRAY_TASK_ID=str(pair)))
        assert (f"PIPELINE --stages capture,modules --task {task} --seed {seed} --variant modular --out_dir {out} "
                "teacher=finetuned distill=0") in q.stdout

    # pretrained teacher with distillation: the module stage stays per task (no dependency); the modular
    # fine-tunes, one array per task, wait for their task's module element and their seed's baseline element
    run("rs_moded.sh", *sweep, "--distill", "1", "--max_running", "2", env=env)
    (base, bo, _), (mod, mo, mc), (_, ro, rc), (_, co, cc), (_, so, _), (_, to, _) = sbatch_calls(tmp_path)
    assert bo["--array"] == "0-3%2" and "--dependency" not in bo
    assert mo["--array"] == "0-1%2" and "--dependency" not in mo and mc == "--run-modules array"
    assert ro["--array"] == "0-1%2" and ro["--dependency"] == f"afterok:{mod}_0,aftercorr:{base}"
    assert co["--array"] == "2-3%2" and co["--dependency"] == f"afterok:{mod}_1,aftercorr:{base}"
    assert rc == cc == "--run-variant modular array"
    assert so["--array"] == "0-3%2" and so["--dependency"] == f"aftercorr:{base}"
    assert len(to["--dependency"].split(":")) == 6

    # finetuned teacher without distillation: svd needs nothing, modular only its module element
    run("rs_moded.sh", *sweep, "--teacher", "finetuned", env=env)
    (base, _, _), (mod, mo, _), (_, fo, _), (_, so, _), _ = sbatch_calls(tmp_path)
    assert mo["--dependency"] == f"aftercorr:{base}" and fo["--dependency"] == f"aftercorr:{mod}"
    assert "--dependency" not in so and "--kill-on-invalid-dep" not in so


def test_rs_moded_recipe_checks():
    """The sweep runs either recipe; the chained one needs the baseline among the variants."""
    p = run("rs_moded.sh", "--print-jobs", "--tasks", "rte", "--seeds", "1", "--variants", "modular svd",
            "--teacher", "finetuned", check=False)
    assert p.returncode == 2
    assert "has no 'baseline', but each seed's fine-tuned baseline model is needed" in p.stderr
    assert "--teacher finetuned captures" in p.stderr and "add baseline to --variants" in p.stderr
    p = run("rs_moded.sh", "--print-jobs", "--variants", "svd", check=False, env=clean_env(DISTILL="1"))
    assert p.returncode == 2 and "--distill 1 distils the compressed fine-tunes from it" in p.stderr
    for bad, msg in ((["--teacher", "teacherless"], "--teacher must be pretrained or finetuned"),
                     (["--distill", "2"], "--distill must be 0 or 1"),
                     (["--allocate", "yes"], "--allocate must be 0 or 1"),
                     (["--init", "zeros"], "--init must be svd, data or random")):
        p = run("rs_moded.sh", "--print-jobs", *bad, check=False)
        assert p.returncode == 2 and msg in p.stderr
    # no longer refused: the old messages are gone
    for recipe in (["--teacher", "finetuned"], ["--distill", "1"], ["--teacher", "finetuned", "--distill", "1"]):
        p = run("rs_moded.sh", "--print-jobs", "--tasks", "rte", "--seeds", "1 2", "--variants", "baseline modular",
                *recipe)
        assert p.stdout.splitlines() == ["0 rte 1 baseline", "1 rte 1 modular", "2 rte 2 baseline", "3 rte 2 modular"]
    # nothing needs a baseline model: no baseline needed either
    run("rs_moded.sh", "--print-jobs", "--variants", "svd", "--teacher", "finetuned")
    # the workers of one recipe refuse the other's module stage
    p = run("rs_moded.sh", "--run-modules", "0", "--teacher", "finetuned", "--variants", "baseline modular",
            check=False)
    assert p.returncode == 2 and "--run-seed-modules" in p.stderr
    p = run("rs_moded.sh", "--run-seed-modules", "0", check=False)
    assert p.returncode == 2 and "the module stage is per task" in p.stderr
    h = run("rs_moded.sh", "--help").stdout
    for flag in ("--teacher", "--distill", "--allocate", "--ft_lr", "--run-variant", "--run-seed-modules",
                 "aftercorr", "--teacher finetuned --distill 1 --init data --allocate 1 --module_epochs 0"):
        assert flag in h
