"""The command lines of modular_pipeline.sh and rs_moded.sh (both thin wrappers over `workflow.py MODE`): flags,
environment variables, checks before anything runs, then Snakemake and the table. See workflow.py."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import recipes
from workflow import ROOT, Error, plan, run_stage, usable_cores, write_json

FIELD_FLAGS = {f"--{k}": k for k in recipes.FIELDS}
STAGES = ("baseline", "capture", "modules", "mha", "ffn", "finetune", "table", "all")
PIPELINE_HELP = f"""Usage: modular_pipeline.sh [options]          (or: sbatch modular_pipeline.sh [options])

Runs the staged pipeline for ONE task and ONE seed on Snakemake (workflow.py, Snakefile), then the table:
  baseline  run_superglue.py -> OUT_DIR/TASK/baseline/seedSEED-HASH (model kept: teacher / distillation source)
  capture   capture_data.py  -> OUT_DIR/TASK/capture/TEACHER-HASH
  modules   mha_modular.py, ffn_modular.py -> OUT_DIR/TASK/modules/CAPTURE/cC-INIT[-alloc]-HASH
  finetune  run_superglue.py --resume -> OUT_DIR/TASK/LABEL/cC/seedSEED-HASH/results.json
  table     consolidate.py --results_dir OUT_DIR/TASK (always; median over seeds, retention)
Every path holds the settings that change its content (HASH: a short hash of them), so a run with other
settings (another --compression, --ft_lr, --init, ...) never shares, deletes or replaces another's files. A
stage is done when its record holds the same settings and input fingerprints; a killed run rerun with the same
command continues where it stopped (Snakemake --rerun-incomplete; run_superglue.py --resume).

Recipes (--recipe NAME, [RECIPE]; flags and variables override its fields):
  default  {' '.join(f'--{k} {v}' for k, v in recipes.RECIPES['default'].items() if v not in (None, ''))}
  paper    --teacher pretrained --init random --module_epochs 200 --augment 4 --ft_epochs 18 --ft_lr 2e-5
           --distill 0 --allocate 0 --fit_tokens all
Options (each also as an environment variable, in brackets; a flag wins over the variable):
  --recipe NAME         default | paper                                       [RECIPE]     (default)
  --task T              boolq cb copa rte wic wsc stsb mrpc                   [TASK]       (stsb)
  --seed S              fine-tuning seed                                      [SEED]       (1)
  --variant V           modular | svd | random (compressed) | baseline        [VARIANT]    (modular)
""" + "\n".join(f"  --{k:<20}{h}  [{k.upper()}]" for k, (_, _, h) in recipes.FIELDS.items() if k != "mixup") + """
  --mixup / --no_mixup  mixup in module training                              [MIXUP=1|0]
  --data_dir D          task files; default: the repo's data/ when it has the task, else ../shared/data when it
                        has it, else the stages' default ("" = the stages' default)          [DATA_DIR]
  --out_dir D           root of all outputs                                   [OUT_DIR]    (runs/modular)
  --save_model          keep the compressed fine-tuned models                 [SAVE_MODEL=1|0] (0)
  --stages LIST         comma list of baseline,capture,modules,finetune,table (mha, ffn = modules; all): the
                        targets; what they need and is missing runs too      [STAGES]     (all)
  -n, --dry_run         print the job graph and what would run; run nothing
  -h, --help            this text
Row label: VARIANT, then for modular -INIT (unless svd), -alloc, -ft (fine-tuned teacher); +kd when distilled
(recipes.row_label; the default recipe: modular-data-alloc-ft+kd). Python: $PYTHON, else .venv/bin/python.
Exit status: 0, 2 for a bad flag (before any stage runs), else non-zero when a stage failed (named on stderr).
"""
SWEEP_HELP = """Usage: rs_moded.sh [mode] [options]

The sweep: every (task, seed, variant) run of a recipe on Snakemake (workflow.py), here or on SLURM, then
consolidate.py's table (OUT_DIR/table.txt). With no recipe flag it runs the default recipe, exactly as
modular_pipeline.sh does (same stages, same paths: a sweep reuses a pipeline's finished stages and back).
Per (task, seed): baseline -> capture -> modules -> compressed fine-tunes; a failed job cancels only what
depends on it. Options: every modular_pipeline.sh option (`modular_pipeline.sh --help`: --recipe default|paper
[RECIPE], the recipe's fields, --data_dir, --out_dir, --save_model) but --task/--seed/--variant/--stages, plus:
  --tasks "T ..."        [TASKS]     default: cb copa rte wsc stsb mrpc
  --seeds "S ..."        [SEEDS]     default: 1 2 3 4 5
  --variants "V ..."     [VARIANTS]  default: baseline modular
Modes:
  (none)              with sbatch on PATH (and not inside a job): SLURM (Snakemake's slurm executor, one job
                      per stage, job arrays); the controller runs in the background (log OUT_DIR/logs/
                      controller-*.log) unless --wait; else here (--local)
  --local             run here, --parallel N jobs at a time (OMP_NUM_THREADS = cores / N unless set)
  --wait              SLURM: stay until all jobs have ended, print the table; exit 1 if any failed
  -n, --dry_run       print the job graph and what would run
  --print-jobs        the fine-tunes, one line per index: `i task seed variant` (task-major)
  --run-index I | --run-variant V P | --run-modules T | --run-seed-modules P | --local-job KIND ARG
                      run that job here (and whatever it needs that is missing); I/P/T may be `array`
                      ($SLURM_ARRAY_TASK_ID)
  --consolidate       the table only
  --sbatch_args "..."    [RS_SBATCH_ARGS]  sbatch options for every job (--cpus-per-task, --time, --mem,
                         --partition, --gres, others passed through)   default: --cpus-per-task=8 --time=24:00:00
  --module_sbatch_args   [RS_MODULE_SBATCH_ARGS]  for the module stage jobs only
  --max_running N        [RS_MAX_RUNNING]  at most N jobs at once (SLURM)
"""
SWEEP_ONLY = {"--tasks": "tasks", "--seeds": "seeds", "--variants": "variants", "--parallel": "parallel",
              "--sbatch_args": "sbatch_args", "--module_sbatch_args": "module_sbatch_args",
              "--max_running": "max_running", "--run-index": "run_index", "--run-modules": "run_modules",
              "--run-seed-modules": "run_seed_modules"}
PIPELINE_ONLY = {"--task": "task", "--seed": "seed", "--variant": "variant", "--stages": "stages"}
COMMON = {"--recipe": "recipe", "--data_dir": "data_dir", "--out_dir": "out_dir"}


def parse(mode, argv, env):
    """Options from the environment, then the flags (a flag wins); every check before anything runs."""
    sweep = mode == "sweep"
    o = dict(recipe=env.get("RECIPE") or "default", out_dir=env.get("OUT_DIR") or "runs/modular",
             data_dir=env.get("DATA_DIR"), save_model=env.get("SAVE_MODEL") or "0", dry_run=False,
             task=env.get("TASK") or "stsb", seed=env.get("SEED") or "1", variant=env.get("VARIANT") or "modular",
             stages=env.get("STAGES") or "all", tasks=env.get("TASKS") or "cb copa rte wsc stsb mrpc",
             seeds=env.get("SEEDS") or "1 2 3 4 5", variants=env.get("VARIANTS") or "baseline modular",
             sbatch_args=env.get("RS_SBATCH_ARGS", ""), module_sbatch_args=env.get("RS_MODULE_SBATCH_ARGS", ""),
             max_running=env.get("RS_MAX_RUNNING", ""), parallel="1", local=False, wait=False, action="run")
    over = {k: env[k.upper()] for k in recipes.FIELDS if env.get(k.upper())}
    names = dict(COMMON, **(SWEEP_ONLY if sweep else PIPELINE_ONLY))
    args = list(argv)
    while args:
        a = args.pop(0)
        if a.startswith("--") and "=" in a:
            a, v = a.split("=", 1)
            args.insert(0, v)
        if a in ("-h", "--help"):
            o["action"] = "help"
            return o
        if a in ("-n", "--dry_run", "--dry-run"):
            o["dry_run"] = True
        elif a in ("--mixup", "--no_mixup"):
            over["mixup"] = "1" if a == "--mixup" else "0"
        elif a == "--save_model":
            o["save_model"] = "1"
        elif sweep and a in ("--local", "--wait"):
            o[a[2:]] = True
        elif sweep and a in ("--print-jobs", "--consolidate"):
            o["action"] = a[2:]
        elif sweep and a in ("--run-variant", "--local-job"):
            if len(args) < 2:
                raise Error(f"{a} needs two values")
            o["action"], o["job_args"] = a[2:], (args.pop(0), args.pop(0))
        elif a in FIELD_FLAGS or a in names:
            if not args:
                raise Error(f"{a} needs a value")
            v = args.pop(0)
            if a in FIELD_FLAGS:
                over[FIELD_FLAGS[a]] = v
            else:
                o[names[a]] = v
                if a.startswith("--run-"):
                    o["action"] = a[2:]
        else:
            raise Error(f"unknown argument '{a}' (see --help)")
    try:
        o["recipe_name"], o["fields"] = recipes.resolve(o["recipe"], over)
    except recipes.RecipeError as e:
        raise Error(str(e))
    if o["save_model"] not in ("0", "1"):
        raise Error(f"SAVE_MODEL must be 0 or 1, got '{o['save_model']}'")
    o["save_model"] = o["save_model"] == "1"
    if sweep:
        o["tasks"], o["seeds"], o["variants"] = (list(dict.fromkeys(o[k].split())) for k in ("tasks", "seeds", "variants"))
    else:
        o["tasks"], o["seeds"], o["variants"] = [o["task"]], [o["seed"]], [o["variant"]]
        stages = o["stages"].replace(",", " ").split()
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages:
            raise Error(f"--stages: unknown stage '{bad[0] if bad else ''}' ({', '.join(STAGES)})")
        o["stages"] = {"baseline", "capture", "modules", "finetune", "table"} if "all" in stages else \
            {("modules" if s in ("mha", "ffn") else s) for s in stages}
    for what in ("tasks", "seeds", "variants"):
        if not o[what]:
            raise Error(f"--{what} is empty")
    from_tasks = ("boolq", "cb", "copa", "rte", "wic", "wsc", "stsb", "mrpc")
    for t in o["tasks"]:
        if t not in from_tasks:
            raise Error(f"--task '{t}' is not a task name ({' '.join(from_tasks)})")
    for s in o["seeds"]:
        if not s.isdigit():
            raise Error(f"--seed '{s}' is not a non-negative integer")
    o["seeds"] = [int(s) for s in o["seeds"]]
    for v in o["variants"]:
        if v not in recipes.VARIANTS:
            raise Error(f"--variant '{v}' is not one of {', '.join(recipes.VARIANTS)}")
    for k in ("parallel", "max_running"):
        if o[k] and not (o[k].isdigit() and int(o[k]) > 0):
            raise Error(f"--{k} must be a positive integer, got '{o[k]}'")
    if not o["out_dir"]:
        raise Error("--out_dir is empty")
    o["out_dir"] = os.path.abspath(os.path.join(ROOT, o["out_dir"]))
    o["python"] = env.get("PYTHON") or (os.path.join(ROOT, ".venv/bin/python")
                                        if os.path.exists(os.path.join(ROOT, ".venv/bin/python")) else sys.executable)
    return o


def slurm_minutes(t):
    """SLURM's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes."""
    days, _, rest = t.rpartition("-")
    p = [int(x) for x in rest.split(":")]
    if days:
        h, m = p[0], (p[1] if len(p) > 1 else 0)
    else:
        h, m = (p[0], p[1]) if len(p) == 3 else (0, p[0])
    return int(days or 0) * 1440 + h * 60 + m


def slurm_resources(args, where):
    """sbatch options -> Snakemake resources (the slurm executor sets cpus, time, memory, partition itself)."""
    res, extra, toks = {}, [], shlex.split(args)
    names = {"--cpus-per-task": "cpus_per_task", "-c": "cpus_per_task", "--time": "runtime", "-t": "runtime",
             "--mem": "mem_mb", "--partition": "slurm_partition", "-p": "slurm_partition", "--gres": "gres",
             "--constraint": "constraint", "-C": "constraint", "--qos": "qos"}
    while toks:
        t = toks.pop(0)
        k, v = (t.split("=", 1) + [None])[:2] if t.startswith("--") else (t, None)
        if k in names:
            v = v if v is not None else (toks.pop(0) if toks else "")
            if names[k] == "runtime":   # minutes (Snakemake's unit)
                v = str(slurm_minutes(v))
            if names[k] == "mem_mb" and not v.isdigit():
                v = str(int(float(v[:-1]) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}[v[-1].upper()]))
            res[names[k]] = v
        else:
            extra.append(t)
    if extra:
        res["slurm_extra"] = shlex.join(extra)
    return [f"{where}{k}={v if k in ('cpus_per_task', 'runtime', 'mem_mb') else repr(v)}"   # strings: literals
            for k, v in res.items()]


def job_table(o):
    """The fine-tunes in rs_moded.sh's task-major order: [(task, seed, variant)]."""
    return [(t, s, v) for t in o["tasks"] for s in o["seeds"] for v in o["variants"]]


def array_arg(v):
    if v == "array":
        if not os.environ.get("SLURM_ARRAY_TASK_ID"):
            raise Error("'array' needs SLURM_ARRAY_TASK_ID (run inside a job array)")
        return os.environ["SLURM_ARRAY_TASK_ID"]
    return v


def select(o, jobs, targets):
    """The targets of this invocation: every run, or the one job a worker flag names, or the --stages ones."""
    table = job_table(o)
    nv, ns = len(o["variants"]), len(o["seeds"])
    act = o["action"]

    def index(i):
        if not str(i).isdigit() or int(i) >= len(table):
            raise Error(f"job index '{i}' is not in [0, {len(table)})")
        return [targets[int(i)]]

    def pair(pidx):
        if not str(pidx).isdigit() or int(pidx) >= len(o["tasks"]) * ns:
            raise Error(f"(task, seed) pair index '{pidx}' is not in [0, {len(o['tasks']) * ns})")
        return table[int(pidx) * nv][:2]

    def modules(task, seed=None):
        return [p for p, j in jobs.items() if j["stage"] == "modules" and j["task"] == task
                and seed in (None, j["seed"])] or []
    if act == "run-index":
        return index(array_arg(o["run_index"]))
    if act == "run-variant":
        v, pidx = o["job_args"][0], array_arg(o["job_args"][1])
        if v not in o["variants"]:
            raise Error(f"variant '{v}' is not in --variants ({' '.join(o['variants'])})")
        pair(pidx)   # checks the pair index
        return index(int(pidx) * nv + o["variants"].index(v))
    if act == "run-modules":
        t = array_arg(o["run_modules"])
        t = o["tasks"][int(t)] if t.isdigit() and int(t) < len(o["tasks"]) else t
        return modules(t)
    if act == "run-seed-modules":
        return modules(*pair(array_arg(o["run_seed_modules"])))
    if act == "local-job":
        kind, arg = o["job_args"]
        return index(arg) if kind == "ft" else modules(*pair(arg)) if kind == "seedmodules" else modules(arg)
    if "stages" not in o or not isinstance(o["stages"], set):
        return targets
    stage_of = {"baseline": "baseline", "capture": "capture", "modules": "modules", "finetune": "finetune"}
    want = [p for p, j in jobs.items() if stage_of.get(j["stage"]) in o["stages"]]
    if "finetune" in o["stages"] and o["variants"] == ["baseline"]:
        want += targets
    return list(dict.fromkeys(want))


def print_graph(jobs, targets):
    print(f"job graph ({len(jobs)} jobs; output <- what it needs):")
    for path, j in jobs.items():
        print(f"  {j['stage']:<9} {path}" + (f"  <- {', '.join(j['needs'])}" if j["needs"] else ""))


def stage_threads(o, slurm, env=os.environ):
    """Torch threads of each stage: the caller's OMP_NUM_THREADS when set, else the cores (a SLURM job's, or this
    machine's) shared by the --parallel jobs; None under the SLURM executor (each job's stage takes the cores
    of its own job, workflow.run_stage)."""
    if slurm:
        return None
    if env.get("OMP_NUM_THREADS", "").split(",")[0].strip().isdigit():   # OpenMP also takes a list: "4,2"
        return max(1, int(env["OMP_NUM_THREADS"].split(",")[0]))
    cores = int(env.get("SLURM_CPUS_PER_TASK") or usable_cores())
    return max(1, cores // int(o["parallel"] or 1))


def engine(o, jobs, targets, chosen, slurm):
    """Run Snakemake on the plan; its exit status."""
    out = o["out_dir"]
    body = {"jobs": jobs, "targets": chosen, "out_dir": out, "python": o["python"],
            "threads": stage_threads(o, slurm)}
    path = os.path.join(out, ".workflow", f"plan-{recipes.short_hash(body, 12)}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, dict(body, plan_path=path))
    cmd = [o["python"], "-m", "snakemake", *chosen, "--snakefile", os.path.join(ROOT, "Snakefile"), "--directory", out,
           "--configfile", path, "--rerun-incomplete", "--nolock", "--rerun-triggers", "input", "--keep-going"]
    if o["dry_run"]:
        cmd.append("--dry-run")
    if slurm:
        res = slurm_resources(o["sbatch_args"] or "--cpus-per-task=8 --time=24:00:00", "")
        mod = slurm_resources(o["module_sbatch_args"], "modules:") if o["module_sbatch_args"] else []
        cmd += ["--executor", "slurm", "--jobs", o["max_running"] or "100", "--slurm-status-command", "squeue",
                "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5",
                "--latency-wait", "10", "--default-resources", *res] + (["--set-resources", *mod] if mod else [])
    else:
        cmd += ["--cores", o["parallel"]]
    return subprocess.call(cmd, cwd=ROOT)


def consolidate(o, task_dir=None):
    cmd = [o["python"], os.path.join(ROOT, "consolidate.py")]
    if task_dir:
        cmd += ["--results_dir", task_dir]
    else:
        cmd += ["--results_dir", o["out_dir"], "--tasks", *o["tasks"], "--seeds", *map(str, o["seeds"]),
                "--output", os.path.join(o["out_dir"], "table.txt")]
    return subprocess.call(cmd, cwd=ROOT)


def main(argv):
    try:
        if argv[:1] == ["stage"]:
            if len(argv) != 5 or argv[3] != "--log":
                raise Error("usage: workflow.py stage PLAN OUTPUT --log LOG")
            return run_stage(argv[1], argv[2], argv[4])
        if argv[:1] not in (["pipeline"], ["sweep"]):
            raise Error("usage: workflow.py pipeline|sweep [flags] (see --help)")
        mode = argv[0]
        o = parse(mode, argv[1:], os.environ)
        if o["action"] == "help":
            print(PIPELINE_HELP if mode == "pipeline" else SWEEP_HELP)
            return 0
        if o["action"] == "print-jobs":
            for i, (t, s, v) in enumerate(job_table(o)):
                print(i, t, s, v)
            return 0
        if o["action"] == "consolidate":
            return consolidate(o)
        jobs, targets = plan(o)
        chosen = select(o, jobs, targets)
    except Error as e:
        print(f"{'modular_pipeline.sh' if argv[:1] == ['pipeline'] else 'rs_moded.sh'}: error: {e}", file=sys.stderr)
        return 2
    name = "modular_pipeline.sh" if mode == "pipeline" else "rs_moded.sh"
    if o["dry_run"]:
        print_graph(jobs, targets)
    f = o["fields"]
    print(f"{name}: recipe {o['recipe_name']} ({', '.join(f'{k}={v}' for k, v in f.items() if v not in (None, ''))}); "
          f"tasks {' '.join(o['tasks'])}, seeds {' '.join(map(str, o['seeds']))}, variants "
          f"{' '.join(o['variants'])}; out {o['out_dir']}", flush=True)
    slurm = (mode == "sweep" and not o["local"] and o["action"] == "run" and shutil.which("sbatch")
             and not os.environ.get("SLURM_JOB_ID"))
    if slurm and not o["wait"] and not o["dry_run"]:
        log = os.path.join(o["out_dir"], "logs", f"controller-{int(__import__('time').time())}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        argv_wait = [sys.executable, os.path.abspath(__file__.replace("workflow_cli", "workflow")), *argv, "--wait"]
        proc = subprocess.Popen(argv_wait, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        print(f"{name}: Snakemake controls the SLURM jobs from process {proc.pid} (log {log}); the table will "
              f"be in {o['out_dir']}/table.txt")
        return 0
    rc = engine(o, jobs, targets, chosen, slurm)
    if o["dry_run"]:
        return rc
    if mode == "pipeline":
        if "table" in o["stages"]:
            consolidate(o, os.path.join(o["out_dir"], o["tasks"][0]))
    elif o["action"] == "run":
        consolidate(o)
    if rc:
        print(f"{name}: some jobs failed (exit {rc}); logs in {o['out_dir']}/logs", file=sys.stderr)
    return 1 if rc else 0
