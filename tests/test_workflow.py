"""The recipes, the settings-keyed paths, the plan and the flags of workflow.py (no stage runs here), and
consolidate.py's rows of other settings. The runs themselves: tests/test_pipeline.py (slow)."""
import json
import os

import pytest

from modcomp import report as C
from modcomp import config as recipes
from modcomp import workflow
from modcomp import workflow_cli as W

TINY = dict(max_train_samples=16, max_eval_samples=16, ft_epochs=1)


def opts(mode="pipeline", *argv, **env):
    env = {"OUT_DIR": "/tmp/wf-test", **env}
    return W.parse(mode, list(argv), env)


def test_default_recipe_is_the_pipeline_default_and_paper_is_the_papers():
    d = recipes.read_recipe("default")[1]
    assert (d["teacher"], d["init"], d["allocate"], d["fit_tokens"], d["module_epochs"], d["distill"],
            d["ft_epochs"], d["ft_lr"], d["augment"], d["mixup"], d["module_seed"]) == \
        ("finetuned", "data", 1, "65536", 0, 1, 3, 1e-4, 0, 0, 42)
    p = recipes.read_recipe("paper")[1]
    assert (p["teacher"], p["init"], p["module_epochs"], p["augment"], p["ft_epochs"], p["ft_lr"], p["distill"],
            p["allocate"], p["fit_tokens"]) == ("pretrained", "random", 200, 4, 18, 2e-5, 0, 0, "all")


def test_sweep_and_pipeline_run_the_same_default_recipe():
    a, b = opts("pipeline"), opts("sweep")
    assert a["recipe_name"] == b["recipe_name"] == "default" and a["fields"] == b["fields"]
    assert b["variants"] == ["baseline", "modular"]


def test_flags_override_the_recipe_and_win_over_the_environment():
    o = opts("pipeline", "--recipe", "paper", "--ft_epochs", "2", FT_EPOCHS="5", FT_LR="3e-5")
    assert o["fields"]["ft_epochs"] == 2 and o["fields"]["ft_lr"] == 3e-5 and o["fields"]["init"] == "random"
    assert opts("pipeline", "--mixup", "0", MIXUP="1")["fields"]["mixup"] == 0
    assert opts("pipeline", "--mixup")["fields"]["mixup"] == 1


@pytest.mark.parametrize("argv,msg", [
    (["--compression", "0"], "--compression must be a number > 1"),
    (["--compression", "nan"], "--compression must be a number"),
    (["--fit_tokens", "0"], "--fit_tokens"),
    (["--recipe", "nope"], "unknown recipe"),
    (["--init", "pca"], "--init must be"),
    (["--seed", "-1"], "--seed '-1'"),
    (["--task", "../x"], "is not a task name"),
    (["--stages", "fit"], "--stages: unknown stage 'fit'"),
    (["--max_train_samples", "0"], "--max_train_samples must be >= 1"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--compression", "2 x"], "--compression must be a number"),
    (["--currency", "output nope"], "--currency must be"),
])
def test_bad_flags_are_one_line_errors_before_anything_runs(argv, msg):
    with pytest.raises(W.Error, match=msg.replace("[", r"\[")):
        opts("pipeline", *argv)


def test_labels_come_from_one_function():
    f = recipes.read_recipe("default")[1]
    assert recipes.row_label("modular", f) == "modular-data-alloc-ft+kd"
    assert recipes.row_label("svd", f) == "svd+kd" and recipes.row_label("baseline", f) == "baseline"
    assert recipes.row_label("modular", recipes.read_recipe("paper")[1]) == "modular-random"


def test_every_setting_that_changes_a_result_changes_its_path():
    _, f = recipes.resolve("default", TINY)
    base = recipes.paths("copa", 1, "modular", f, "data")
    for field, value in [("compression", 3.0), ("ft_lr", 5e-5), ("init", "svd"), ("fit_tokens", "512"),
                         ("max_train_samples", 8), ("module_epochs", 1), ("distill", 0), ("teacher", "pretrained")]:
        _, g = recipes.resolve("default", dict(TINY, **{field: value}))
        other = recipes.paths("copa", 1, "modular", g, "data")
        assert other["run"] != base["run"], field
    _, g = recipes.resolve("default", dict(TINY, compression=3))   # c=3: other modules, same capture
    other = recipes.paths("copa", 1, "modular", g, "data")
    assert other["modules"] != base["modules"] and other["capture"] == base["capture"]
    assert other["baseline"] == base["baseline"] and "/c3/" in other["run"]
    _, g = recipes.resolve("default", dict(TINY, ft_lr=5e-5))   # another lr: other baseline, capture, modules
    other = recipes.paths("copa", 1, "modular", g, "data")
    assert all(other[k] != base[k] for k in ("baseline", "capture", "modules", "run"))
    assert recipes.paths("copa", 1, "modular", f, "other data")["baseline"] != base["baseline"]
    assert base["run"].startswith("copa/modular-data-alloc-ft+kd/c2/seed1-")


def test_plan_chains_baseline_capture_modules_finetune(tmp_path):
    o = opts("sweep", "--tasks", "copa", "--seeds", "1 2", "--out_dir", str(tmp_path), "--max_train_samples", "16")
    jobs, targets = workflow.plan(o)
    assert [jobs[t]["stage"] for t in targets] == ["baseline", "finetune", "baseline", "finetune"]
    run = jobs[targets[1]]
    mod = jobs[run["needs"]["modules"]]
    cap = jobs[mod["needs"]["capture"]]
    assert mod["stage"] == "modules" and cap["stage"] == "capture" and cap["needs"] == {"baseline": targets[0]}
    assert all(c[c.index("--allocate") + 1] == "1" and c[c.index("--currency") + 1] == "output"
               for c in mod["cmds"])                            # both stages: one joint allocation
    cmd = run["cmds"][0]
    assert cmd[cmd.index("--distill_from") + 1].startswith(os.path.join(str(tmp_path), "copa/baseline/seed1-"))
    assert json.loads(cmd[cmd.index("--recipe") + 1])["name"] == "default"
    assert json.loads(cmd[cmd.index("--recipe") + 1])["fields"]["currency"] == "output"
    # without an allocation the currency is no setting: neither recorded nor in the modules' path
    o = opts("sweep", "--tasks", "copa", "--seeds", "1", "--out_dir", str(tmp_path), "--recipe", "paper")
    jobs, targets = workflow.plan(o)
    cmd = jobs[targets[-1]]["cmds"][0]
    assert "currency" not in json.loads(cmd[cmd.index("--recipe") + 1])["fields"]
    _, f = recipes.resolve("paper", {})
    assert recipes.paths("copa", 1, "modular", f, "d") == \
        recipes.paths("copa", 1, "modular", dict(f, currency="residual"), "d")


def test_worker_flags_select_one_job(tmp_path):
    o = opts("sweep", "--tasks", "copa cb", "--seeds", "1 2", "--out_dir", str(tmp_path), "--run_index", "3")
    jobs, targets = workflow.plan(o)
    assert W.select(o, jobs, targets) == [targets[3]] and jobs[targets[3]]["task"] == "copa"
    o = opts("sweep", "--tasks", "copa cb", "--seeds", "1 2", "--out_dir", str(tmp_path), "--run_seed_modules", "2")
    (mod,) = W.select(o, jobs, targets)
    assert jobs[mod]["stage"] == "modules" and (jobs[mod]["task"], jobs[mod]["seed"]) == ("cb", 1)
    o = opts("sweep", "--tasks", "copa", "--out_dir", str(tmp_path), "--run_index", "99")
    with pytest.raises(W.Error, match="not in"):
        W.select(o, *workflow.plan(o))


def test_sbatch_args_become_snakemake_resources():
    assert W.slurm_resources("--cpus-per-task=4 --time=1-02:30:00 --mem 8G -p gpu --gres=gpu:1 --exclusive", "") == [
        "cpus_per_task=4", "runtime=1590", "mem_mb=8192", "slurm_partition='gpu'", "gres='gpu:1'",
        "slurm_extra='--exclusive'"]
    assert W.slurm_resources("--time=60", "modules:") == ["modules:runtime=60"]


def test_a_stage_runs_with_the_planned_threads_not_snakemakes_one(tmp_path, monkeypatch, capfd):
    """Snakemake sets OMP_NUM_THREADS (and MKL_, OPENBLAS_, ...) to the rule's `threads`, 1, for every job: since
    the move to Snakemake every stage ran on one core. A stage now runs with the threads of its plan."""
    o = opts("pipeline", "--out_dir", str(tmp_path))
    assert W.stage_threads(o, False, {"OMP_NUM_THREADS": "3"}) == 3             # the caller's setting
    assert W.stage_threads(o, False, {"SLURM_CPUS_PER_TASK": "8"}) == 8          # sbatch modular_pipeline.sh
    o_par = opts("sweep", "--out_dir", str(tmp_path), "--local", "--parallel", "2")
    assert W.stage_threads(o_par, False, {"SLURM_CPUS_PER_TASK": "8"}) == 4      # 2 jobs at a time share them
    assert W.stage_threads(o_par, True, {"OMP_NUM_THREADS": "1"}) is None        # SLURM jobs: their own cores
    assert W.stage_threads(o, False, {"OMP_NUM_THREADS": "4,2"}) == 4             # OpenMP's nested list form
    probe = "import os; print('threads', *(os.environ[v] for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')))"
    job = {"stage": "finetune", "task": "stsb", "seed": 1, "needs": {}, "cmds": [["python", "-c", probe]]}
    job["cmds"][0][0] = __import__("sys").executable
    for planned, slurm_cpus, seen in ((3, None, "3 3"), (None, "5", "5 5")):
        plan = tmp_path / f"plan{seen[0]}.json"
        plan.write_text(json.dumps({"jobs": {"stsb/x/results.json": job}, "out_dir": str(tmp_path),
                                    "threads": planned}))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")                                 # as Snakemake's shell sets it
        monkeypatch.setenv("MKL_NUM_THREADS", "1")
        if slurm_cpus:
            monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm_cpus)
        assert workflow.run_stage(str(plan), "stsb/x/results.json") == 0
        assert f"threads {seen}" in capfd.readouterr().out


# ------------------------------------------------------------------ consolidate.py: runs of other settings
def result(root, sub, seed, score, variant="modular-data-alloc-ft+kd", compression=2.0, lr=1e-4, epochs=3,
           recipe="default", task="stsb"):
    fields = dict(recipes.read_recipe(recipe)[1], ft_lr=lr, ft_epochs=epochs)
    if variant == "baseline":
        fields = {k: fields[k] for k in recipes.BASELINE_FIELDS}
    r = {"task": task, "model": "minilm", "variant": variant, "compression": None if variant == "baseline"
         else compression, "seed": seed, "params": 1, "recipe": {"name": recipe, "fields": fields},
         "settings": {"task": task, "seed": seed, "lr": lr, "epochs": epochs, "output_dir": sub},
         "epochs": [{"score": score, "pearson": score / 100, "spearman": score / 100, "accuracy": score / 100,
                     "f1": score / 100}]}
    path = os.path.join(root, sub, f"seed{seed}", "results.json")
    os.makedirs(os.path.dirname(path))
    json.dump(r, open(path, "w"))


def test_runs_of_other_settings_are_other_rows_with_their_own_baseline(tmp_path):
    for s in (1, 2, 3):
        result(tmp_path, "b1", s, 80.0, variant="baseline")
        result(tmp_path, "m1", s, 80.0)
        result(tmp_path, "b2", s, 60.0, variant="baseline", lr=5e-5)
        result(tmp_path, "m2", s, 66.0, lr=5e-5)
    warnings = []
    _, tables, _ = C.build(C.load_results(str(tmp_path)), warnings=warnings)
    rows = tables["last"]
    assert len(rows) == 4 and any("ft_lr=5e-05" in C.row_label(r) for r in rows)
    assert len(warnings) == 2 and "separate rows" in warnings[0]
    ret = C.retention(rows)
    assert sorted(ret.values()) == pytest.approx([1.0, 1.1])   # each against the baseline of its own lr


def test_the_tasks_of_a_row_are_its_columns_not_other_settings(tmp_path):
    for task in ("stsb", "mrpc"):
        result(tmp_path, f"b-{task}", 1, 80.0, variant="baseline", task=task)
        result(tmp_path, f"m-{task}", 1, 80.0, task=task)
    warnings = []
    _, tables, _ = C.build(C.load_results(str(tmp_path)), warnings=warnings)
    assert len(tables["last"]) == 2 and not warnings
    assert all(set(r["tasks"]) == {"stsb", "mrpc"} for r in tables["last"])


def test_seeds_of_other_epochs_are_never_one_median(tmp_path):
    result(tmp_path, "a", 1, 70.0, epochs=3)
    result(tmp_path, "a", 2, 90.0, epochs=18)
    warnings = []
    _, tables, _ = C.build(C.load_results(str(tmp_path)), warnings=warnings)
    assert sorted(r["tasks"]["stsb"]["score"] for r in tables["last"]) == [70.0, 90.0] and warnings
