"""The stages on Snakemake: the plan of a pipeline (one task, one seed) or a sweep (every task, seed and setting),
and one job of it. workflow_cli.py (modular_pipeline.sh, rs_moded.sh) parses the flags, writes the plan, runs
Snakemake here (--cores) or on SLURM (snakemake-executor-plugin-slurm) and prints consolidate.py's table; the
Snakefile's rules run `python -m modcomp.workflow_cli stage PLAN OUTPUT --log LOG`, which is run_stage here.

The plan (OUT_DIR/.workflow/plan-HASH.json) lists every job by its output path, which holds its settings
(config.paths); the Snakefile's rules (baseline, capture, modules, finetune) look their job up by that path.
A stage is done when its record (done.json, or run_superglue.py's results.json) holds the same settings and
input fingerprints; its directory is locked while it runs, so concurrent runs that share a stage wait for it.
"""
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from modcomp import config
from modcomp.utils import UserError as Error  # a one-line error (exit 2)
from modcomp.utils import atomic_write_json as write_json
from modcomp.utils import file_sha256 as sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout (the stages run from it)
DATA_FILES = ("train.jsonl", "val.jsonl", "train.tsv", "dev.tsv")


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------ data and the plan
def data_dir_of(task, given):
    """The task's data dir: --data_dir when given (even "", the stages' default), else the repo's data/ when it
    has the task, else ../shared/data when it has it, else "" (the stages' default: the hub)."""
    if given is not None:
        return os.path.abspath(given) if given else ""
    for d in (os.path.join(ROOT, "data"), os.path.join(ROOT, "..", "shared", "data")):
        if os.path.isdir(os.path.join(d, task)):
            return "" if d == os.path.join(ROOT, "data") else os.path.realpath(d)
    return ""


def data_key(task, data_dir):
    """What identifies a task's data: the sha256 of its split files (or 'default' for the stages' default)."""
    d = os.path.join(data_dir or os.path.join(ROOT, "data"), task)
    files = {n: sha256(os.path.join(d, n)) for n in DATA_FILES if os.path.isfile(os.path.join(d, n))}
    return files or "default"


def task_data(o, task):
    """(the stages' data flags, the data key of the paths) of one task of options o."""
    user = o.get("user_task")
    if user:   # your own files: the stages read them; the data key is their hashes and how they are read
        data = ["--train_file", user["train_file"], "--validation_file", user["validation_file"], "--text_columns",
                ",".join(user["text_columns"]), "--label_column", user["label_column"], "--task_type",
                user["task_type"]]
        return data, [o["recipe_name"], {**user, "train_sha256": sha256(user["train_file"]),
                                         "validation_sha256": sha256(user["validation_file"])}]
    ddir = data_dir_of(task, o["data_dir"])
    return (["--data_dir", ddir] if ddir else []), [o["recipe_name"], data_key(task, ddir)]


def plan(o):
    """{output path: job} for every (task, setting, seed, variant) of options o (a dict from workflow_cli.parse),
    plus the targets (the runs' results, in job-table order: task, seed, setting, variant; a baseline shared by
    several settings is listed once). A setting is one combination of the recipe's swept fields
    (config.expand); the stages they do not change are one job, shared. A job: stage, task, seed, cmds (argv
    lists), needs ({rule: output} of the jobs it reads), recipe; fine-tunes also label, variant."""
    name, py, out = o["recipe_name"], o["python"], o["out_dir"]
    jobs, targets = {}, []
    for task in o["tasks"]:
        data, dkey = task_data(o, task)
        for seed in o["seeds"]:
            for f in o["settings"]:
                for variant in o["variants"]:
                    run = add_jobs(jobs, task, seed, variant, f, name, py, out, dkey, data,
                                   o["save_model"] or bool(o.get("export") and variant == "modular"))
                    if run not in targets:
                        targets.append(run)
                    if o.get("export") and variant == "modular":   # the last stage: the deployable directory
                        run = add_deploy(jobs, jobs[run], run, o, data)
                        targets.append(run)
    return jobs, targets


def add_jobs(jobs, task, seed, variant, f, name, py, out, dkey, data, save_model):
    """Add the jobs of one (task, seed, variant) run of the fields f; returns its target (results.json)."""
    p = config.paths(task, seed, variant, f, dkey)
    base_dir = os.path.join(out, os.path.dirname(p["baseline"])) if "baseline" in p else None
    given = config.given_teacher(f)
    if given is not None and os.path.isdir(given):
        given = os.path.abspath(given)
    # the fine-tuned teacher: this seed's baseline model, or the one the user gave (then the baseline evaluates it)
    tuned = given if given is not None else os.path.join(base_dir, "model") if base_dir else None

    def rec(fields):
        return ["--recipe", json.dumps({"name": name, "fields": fields}, sort_keys=True)]

    def ft(fields, compression, init):
        argv = config.stage_argv("finetune", dict(fields, compression=compression, init=init), skip=("model",))
        return ["--task", task, "--seed", str(seed), *argv, "--resume", *data]
    if base_dir and given is not None:   # the user's fine-tuned teacher, evaluated once: the baseline row
        jobs[p["baseline"]] = dict(
            stage="baseline", task=task, seed=seed, needs={},
            cmds=[[py, "run_superglue.py", "--model_name_or_path", given, "--variant", "baseline", "--eval_only",
                   "--output_dir", base_dir, *ft(f, 1.0, f["init"]),
                   *rec({k: f[k] for k in config.BASELINE_FIELDS + ("teacher",)})]])
    elif base_dir:   # the baseline keeps its model: the teacher or the distillation source of its seed
        jobs[p["baseline"]] = dict(
            stage="baseline", task=task, seed=seed, needs={},
            cmds=[[py, "run_superglue.py", "--model_name_or_path", f["model"], "--variant", "baseline",
                   "--output_dir", base_dir, *ft(f, 1.0, f["init"]),
                   *rec({k: f[k] for k in config.BASELINE_FIELDS})]])
    if variant == "baseline":
        return p["run"]
    run_dir = os.path.join(out, os.path.dirname(p["run"]))
    needs = {"baseline": p["baseline"]} if base_dir else {}
    cmd = [py, "run_superglue.py", "--variant", config.row_label(variant, f), "--output_dir", run_dir,
           *ft(f, f["compression"], f["init"] if variant == "modular" else variant)]
    model = f["model"]
    if variant == "modular":
        cap_dir = os.path.join(out, os.path.dirname(p["capture"]))
        mod_dir = os.path.join(out, os.path.dirname(p["modules"]))
        teacher = f["model"] if f["teacher"] == "pretrained" else tuned
        cap = [py, "capture_data.py", "--model_name_or_path", teacher, "--task", task, "--output_dir", cap_dir,
               *config.stage_argv("capture", f), *data]
        if config.capture_tokens(f) is not None:
            cap += ["--max_tokens", str(config.capture_tokens(f))]
        # one capture per teacher: a given teacher's is shared by every seed and keeps the first seed's evaluation
        # as its dependency (it checks the head before any work), so adding seeds redoes no capture or modules
        jobs.setdefault(p["capture"], dict(stage="capture", task=task, seed=seed, teacher=teacher,
                                           needs={"baseline": p["baseline"]} if f["teacher"] != "pretrained" else {},
                                           cmds=[cap]))
        mods = [[py, f"{kind}_modular.py", "--activations_dir", cap_dir, "--output_dir", mod_dir,
                 *config.stage_argv("modules", f)] for kind in ("mha", "ffn")]   # one joint allocation, both
        jobs.setdefault(p["modules"], dict(stage="modules", task=task, seed=seed, needs={"capture": p["capture"]},
                                           cmds=mods))
        if f["teacher"] != "pretrained":
            model = teacher   # keeps the fine-tuned teacher's head
        cmd += ["--model_name_or_path", model, "--modules_dir", mod_dir]
        needs["modules"] = p["modules"]
        fields = config.settings(f)
    else:
        cmd += ["--model_name_or_path", model]
        # no capture, no modules: their fields are no setting of this run
        unused = set(config.CAPTURE_FIELDS + config.MODULE_FIELDS) - {"compression", "max_length"} | {"teacher"}
        fields = {k: v for k, v in f.items() if k not in unused}
    if f["distill"]:
        cmd += ["--distill_from", tuned]
    if not save_model:
        cmd.append("--no_save_model")
    jobs[p["run"]] = dict(stage="finetune", task=task, seed=seed, variant=variant,
                          label=config.row_label(variant, f), needs=needs, cmds=[cmd + rec(fields)])
    return p["run"]


def add_deploy(jobs, ft, run, o, data):
    """The deploy job of a compressed fine-tune (modcomp/deploy.py: its model, ONNX export and the report against
    its teacher into --export OUT); returns its output (done.json)."""
    cmd = ft["cmds"][0]
    run_dir = cmd[cmd.index("--output_dir") + 1]
    teacher = cmd[cmd.index("--distill_from") + 1] if "--distill_from" in cmd else None
    if teacher is None:
        raise Error("--export compares the compressed model with its fine-tuned teacher: it needs --distill 1 or a "
                    "fine-tuned teacher (--teacher finetuned or DIR)")
    target = o["export"]
    if o.get("sweep"):   # one directory per run: OUT/TASK_LABEL_cC_seedS
        target = os.path.join(target, f"{ft['task']}_{ft['label']}_c{config.fmt_c(float(cmd[cmd.index('--compression') + 1]))}"
                                      f"_seed{ft['seed']}")
    path = f"{os.path.dirname(run).split('/', 1)[0]}/deploy/{config.short_hash([run, target])}/done.json"
    work = os.path.join(o["out_dir"], os.path.dirname(path))
    dd = data[data.index("--data_dir"):data.index("--data_dir") + 2] if "--data_dir" in data else []
    deploy = [o["python"], "-m", "modcomp.deploy", "--model", os.path.join(run_dir, "model"), "--teacher", teacher,
              "--out", target, "--work", work, "--task", ft["task"], *dd]   # your files: from the model's config
    jobs[path] = dict(stage="deploy", task=ft["task"], seed=ft["seed"], needs={"finetune": run}, cmds=[deploy])
    return path


# ------------------------------------------------------------------ one job (the Snakefile's rules run this)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def usable_cores():
    """The cores this process may run on (its CPU affinity: taskset, cgroups), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def input_fingerprints(job, out_dir):
    """The sha256 of what a capture or module stage reads: the teacher's weights, the capture's manifest."""
    fp = {}
    if job["stage"] == "capture" and os.path.isdir(job["teacher"]):
        fp["teacher"] = {n: sha256(os.path.join(job["teacher"], n)) for n in sorted(os.listdir(job["teacher"]))
                         if n.endswith(".safetensors")}
    for need in job["needs"].values():
        path = os.path.join(out_dir, need)
        fp[need] = sha256(path) if os.path.isfile(path) else None
    return fp


def run_stage(plan_path, output, log_path=None):
    """Run the job whose output is `output`, under an exclusive lock of its directory; a capture or module
    stage whose done.json holds the same settings and input fingerprints is skipped (and rewritten as done)."""
    with open(plan_path) as f:
        p = json.load(f)
    job, out_dir = p["jobs"][output], p["out_dir"]
    path = os.path.join(out_dir, output)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log = open(log_path, "a") if log_path else None
    say = lambda msg: [print(msg, file=s, flush=True) for s in ((sys.stdout, log) if log else (sys.stdout,))]
    with open(os.path.join(os.path.dirname(path), ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # a concurrent run of the same stage: wait, then find it done
        record = {"stage": job["stage"], "cmds": [c[1:] for c in job["cmds"]],
                  "inputs": input_fingerprints(job, out_dir)}
        state = os.path.join(os.path.dirname(path), "stage.json")   # kept when Snakemake removes done.json
        if job["stage"] in ("capture", "modules", "deploy"):
            old = read_json(state)
            if old == dict(record, status="done"):
                write_json(path, record)
                say(f"[{time.strftime('%H:%M:%S')}] skip: {job['stage']} ({path}: same settings and inputs)")
                return 0
            if old is not None and dict(old, status=None) != dict(record, status=None) and job["stage"] == "capture":
                job["cmds"][0].append("--overwrite")   # made from other inputs: capture anew
            write_json(state, dict(record, status="started"))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Snakemake sets OMP_NUM_THREADS and its kin to the rule's `threads` (1) for every job, which ran every
        # stage on one core; a stage gets the threads its run was planned with (plan "threads":
        # workflow_cli.stage_threads), else (a SLURM job's stage) the cores SLURM gave its job, else every core
        threads = str(p.get("threads") or env.get("SLURM_CPUS_PER_TASK") or usable_cores())
        env.update({v: threads for v in THREAD_VARS})
        child = []

        def stop(signum, _frame):   # timeout, scancel, Ctrl-C: end the stage's process too, then this one
            for c in child:
                if c.poll() is None:
                    c.terminate()
                    try:
                        c.wait(10)
                    except subprocess.TimeoutExpired:
                        c.kill()
            say(f"workflow: stage '{job['stage']}' stopped by signal {signum} [task {job['task']}, seed {job['seed']}]")
            os._exit(128 + signum)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, stop)
        for cmd in job["cmds"]:
            name = job["stage"] if job["stage"] != "modules" else os.path.basename(cmd[1]).split("_")[0]
            t0 = time.time()
            say(f"[{time.strftime('%H:%M:%S')}] stage {name}: {shlex.join(cmd)}")
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            child[:] = [proc]
            for line in proc.stdout:
                sys.stdout.write(line)
                if log:
                    log.write(line)
            rc = proc.wait()
            if rc:
                say(f"workflow: stage '{name}' failed (exit {rc}) [task {job['task']}, seed {job['seed']}]; "
                    f"what depends on it is not run")
                return rc
            say(f"[{time.strftime('%H:%M:%S')}] stage {name} done in {time.time() - t0:.0f}s")
        if job["stage"] in ("capture", "modules", "deploy"):
            write_json(state, dict(record, status="done"))
            write_json(path, record)
    return 0

