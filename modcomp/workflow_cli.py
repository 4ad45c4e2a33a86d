"""The command lines of modular_pipeline.sh and rs_moded.sh (thin wrappers over `python -m modcomp.workflow_cli
MODE`): argparse over the recipe's fields (config.py), the environment variables of the same names, every check
before anything runs, then Snakemake (workflow.py plans the jobs; modcomp/Snakefile names the rules) and the
table. Signals (timeout, scancel, Ctrl-C) reach Snakemake and every stage it runs; nothing is left running."""
import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from modcomp import config
from modcomp.config import TASK_NAMES
from modcomp.workflow import ROOT, Error, plan, run_stage, usable_cores, write_json

STAGES = ("baseline", "capture", "modules", "mha", "ffn", "finetune", "deploy", "table", "all")
WORKER_FLAGS = ("run_index", "run_modules", "run_seed_modules")
PROG = {"pipeline": "modular_pipeline.sh", "sweep": "rs_moded.sh"}
DESCRIPTION = {
    "pipeline": """Runs the staged pipeline for ONE task and ONE seed on Snakemake, then the table:
  baseline  run_superglue.py --compression 1 -> OUT_DIR/TASK/baseline/seedSEED-HASH (model kept: the teacher)
  capture   capture_data.py  -> OUT_DIR/TASK/capture/TEACHER-HASH
  modules   mha_modular.py, ffn_modular.py -> OUT_DIR/TASK/modules/CAPTURE/cC-INIT[-alloc]-HASH
  finetune  run_superglue.py -> OUT_DIR/TASK/LABEL/cC/seedSEED-HASH/results.json
  table     consolidate.py --results_dir OUT_DIR/TASK (median over seeds, retention)
Every path holds the settings that change its content (HASH), so a run with other settings never shares,
deletes or replaces another's files; a killed run rerun with the same command continues where it stopped.""",
    "sweep": """The sweep: every (task, seed, setting, variant) run of a recipe on Snakemake, here or on SLURM, then
consolidate.py's table (OUT_DIR/table.txt). A setting is one combination of the recipe's fields that take several
values (`--compression "2 3 4 6" --currency "output layernorm"`: 8 settings); the stages a field does not change
(baselines, captures) are run once and shared. With no recipe flag it runs the default recipe, exactly as
modular_pipeline.sh does (same stages, same paths: a sweep reuses a pipeline's finished stages and back).""",
}
EPILOG = """Every recipe field is also an environment variable of its name in capitals (COMPRESSION, FT_LR, ...), as
are RECIPE, OUT_DIR, DATA_DIR, SAVE_MODEL{extra}; a flag wins over the variable, the variable over the recipe.
Recipes: configs/NAME.yaml ({recipes}); a field given several values (space-separated, or a YAML list) is swept.
Row label: VARIANT, then for modular -INIT (unless svd), -alloc, -ft (fine-tuned teacher); +kd when distilled.
Python: $PYTHON, else .venv/bin/python. Exit status: 0; 2 for a bad flag (before any stage runs); 1 when a stage
failed (named on stderr); 128+N when stopped by signal N."""


class Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit 2 (main prints it)
        raise Error(message)


def build_parser(mode, env):
    sweep = mode == "sweep"
    p = Parser(prog=PROG[mode], description=DESCRIPTION[mode], formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=EPILOG.format(recipes=", ".join(config.recipe_names()),
                                    extra=", TASKS, SEEDS, VARIANTS, RS_SBATCH_ARGS, RS_MODULE_SBATCH_ARGS, "
                                          "RS_MAX_RUNNING" if sweep else ", TASK, SEED, VARIANT, STAGES"))
    e = env.get
    g = p.add_argument_group("what runs")
    g.add_argument("--recipe", default=e("RECIPE") or "default", metavar="NAME|FILE",
                   help=f"{' | '.join(config.recipe_names())} or a YAML file (default %(default)s)")
    if sweep:
        g.add_argument("--tasks", default=e("TASKS") or SWEEP_TASKS, metavar='"T ..."')
        g.add_argument("--seeds", default=e("SEEDS") or "1 2 3 4 5", metavar='"S ..."')
        g.add_argument("--variants", default=e("VARIANTS") or "baseline modular", metavar='"V ..."',
                       help=f"of {' '.join(config.VARIANTS)} (default %(default)s)")
    else:
        g.add_argument("--task", default=e("TASK"), help=" ".join(TASK_NAMES) + " (default stsb); with --train_file: "
                                                         "your task's name (default: from the file's name)")
        g.add_argument("--seed", default=e("SEED") or "1", help="fine-tuning seed (default %(default)s)")
        g.add_argument("--variant", default=e("VARIANT") or "modular",
                       help="modular | svd | random (compressed) | baseline (default %(default)s)")
        g.add_argument("--stages", default=e("STAGES") or "all",
                       help="comma list of baseline,capture,modules,finetune,table (mha, ffn = modules; all): the "
                            "targets; what they need and is missing runs too (default %(default)s)")
    g.add_argument("--export", default=e("EXPORT"), metavar="OUT",
                   help="also make each compressed model deployable (modcomp/deploy.py): its Hugging Face model, ONNX "
                        "Runtime fp32/INT8 export with predict.py, and report.json/report.md against its teacher, "
                        + ("in OUT/TASK_LABEL_cC_seedS/ per run" if sweep else "in OUT"))
    g.add_argument("--data_dir", default=e("DATA_DIR"),
                   help="task files; default: the repo's data/ when it has the task, else ../shared/data when it "
                        "has it, else the stages' default (the hub)")
    g.add_argument("--out_dir", default=e("OUT_DIR") or "runs/modular", help="root of all outputs (default %(default)s)")
    g.add_argument("--save_model", nargs="?", const="1", default=e("SAVE_MODEL") or "0", choices=("0", "1"),
                   help="keep the compressed fine-tuned models (default %(default)s)")
    g.add_argument("-n", "--dry_run", action="store_true", help="print the job graph and what would run; run nothing")
    u = p.add_argument_group("your own task, from your files (instead of the eight; modcomp/user_data.py)")
    u.add_argument("--train_file", default=e("TRAIN_FILE"), help="csv, tsv, json or jsonl")
    u.add_argument("--validation_file", default=e("VALIDATION_FILE"))
    u.add_argument("--dataset", default=e("DATASET"), metavar="NAME[:CONFIG]",
                   help="instead of the two files: a dataset through `datasets` (a hub id or a local folder), its "
                        "train and validation splits written once as jsonl under OUT_DIR/datasets/")
    u.add_argument("--text_columns", default=e("TEXT_COLUMNS"), metavar="A[,B]", help="one text column or two (a pair)")
    u.add_argument("--label_column", default=e("LABEL_COLUMN") or "label")
    u.add_argument("--task_type", default=e("TASK_TYPE"), choices=("classification", "regression"),
                   help="default: regression when every label is a number and some is not an integer")
    r = p.add_argument_group("recipe fields (their defaults: configs/default.yaml; several values: a sweep)")
    try:
        defaults = config.read_recipe("default")[1]
    except config.RecipeError:
        defaults = {}
    for name, f in config.FIELDS.items():
        r.add_argument(f"--{name}", default=None, metavar="V" if not f.choices else "|".join(map(str, f.choices)),
                       nargs="?" if f.flag else None, const="1" if f.flag else None,
                       help=f"{f.help} (default {defaults.get(name, '')})".replace("%", "%%"))
    if sweep:
        w = p.add_argument_group("where it runs")
        w.add_argument("--local", action="store_true", help="run here even with sbatch on PATH")
        w.add_argument("--parallel", default="1", help="--local: N jobs at a time (threads: cores / N unless "
                                                       "OMP_NUM_THREADS is set)")
        w.add_argument("--wait", action="store_true", help="SLURM: stay until every job has ended, print the table")
        w.add_argument("--sbatch_args", default=e("RS_SBATCH_ARGS", ""),
                       help="sbatch options for every job (--cpus-per-task, --time, --mem, --partition, --gres, others "
                            "passed through; default --cpus-per-task=8 --time=24:00:00)")
        w.add_argument("--module_sbatch_args", default=e("RS_MODULE_SBATCH_ARGS", ""), help="for the module jobs only")
        w.add_argument("--max_running", default=e("RS_MAX_RUNNING", ""), help="SLURM: at most N jobs at once")
        m = p.add_argument_group("other modes")
        m.add_argument("--print_jobs", action="store_true", help="the fine-tunes, one line per index: "
                                                                 "`i task seed variant [setting]`")
        m.add_argument("--consolidate", action="store_true", help="the table only")
        m.add_argument("--run_index", metavar="I", help="run that fine-tune (and what it needs); I may be `array` "
                                                       "($SLURM_ARRAY_TASK_ID)")
        m.add_argument("--run_variant", nargs=2, metavar=("V", "P"), help="variant V of (task, seed) pair P")
        m.add_argument("--run_modules", metavar="T", help="the module stages of task T (a name or an index)")
        m.add_argument("--run_seed_modules", metavar="P", help="the module stage of (task, seed) pair P")
        m.add_argument("--local_job", nargs=2, metavar=("KIND", "ARG"),
                       help="ft I | modules T | seedmodules P: run that job here")
    return p


SWEEP_TASKS = "cb copa rte wsc stsb mrpc"   # the sweep's default --tasks


def parse(mode, argv, env):
    """Options (a dict) from the flags, the environment and the recipe; every check before anything runs."""
    sweep = mode == "sweep"
    a = build_parser(mode, env).parse_args(argv)
    o = dict(vars(a), action="run", local=getattr(a, "local", False), wait=getattr(a, "wait", False), sweep=sweep,
             parallel=getattr(a, "parallel", "1"))
    over = {k: env[k.upper()] for k in config.FIELDS if env.get(k.upper())}
    over.update({k: getattr(a, k) for k in config.FIELDS if getattr(a, k) is not None})
    try:
        o["recipe_name"], o["fields"] = config.resolve(a.recipe, over)
        o["settings"] = config.expand(o["fields"])
    except config.RecipeError as e:
        raise Error(str(e))
    o["save_model"] = o["save_model"] == "1"
    o["user_task"] = None
    dataset_name = None
    if a.dataset:   # through `datasets`: its splits written once as files, then your files like any other
        from modcomp import user_data
        if a.train_file or a.validation_file:
            raise Error("--dataset or --train_file/--validation_file, not both")
        a.train_file, a.validation_file = user_data.dataset_files(a.dataset, o["out_dir"], a.label_column)
        dataset_name = user_data.dataset_task_name(a.dataset)
    if a.train_file or a.validation_file:   # your own task: its files checked whole here, before any stage
        from modcomp import user_data
        if not (a.train_file and a.validation_file and a.text_columns):
            raise Error("your own task needs --train_file, --validation_file and --text_columns")
        # the task's name: --task (the pipeline), or one name given to the sweep's --tasks (its default, the
        # benchmark list, names no files task), else from --dataset or the training file's name
        named = a.tasks.split() if sweep and a.tasks.split() != SWEEP_TASKS.split() else []
        if len(named) > 1:
            raise Error(f"--tasks: your files are one task; give it one name, not {len(named)}")
        name = (a.task if not sweep else (named[0] if named else None)) or dataset_name
        t = user_data.make_task(a.train_file, a.validation_file, a.text_columns, a.label_column, a.task_type, name)
        o["user_task"] = user_data.spec(t)
        o["task"] = o["tasks"] = t.name
    elif not sweep:
        o["task"] = a.task or "stsb"
    if sweep:
        o["tasks"], o["seeds"], o["variants"] = (list(dict.fromkeys(o[k].split())) for k in ("tasks", "seeds", "variants"))
        for k in WORKER_FLAGS + ("run_variant", "local_job"):
            if o.get(k) is not None:
                o["action"], o["job_args"] = k, o[k]
        for k in ("print_jobs", "consolidate"):
            if o.get(k):
                o["action"] = k
    else:
        o["tasks"], o["seeds"], o["variants"] = [o["task"]], [a.seed], [a.variant]
        stages = a.stages.replace(",", " ").split()
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages:
            raise Error(f"--stages: unknown stage '{bad[0] if bad else ''}' ({', '.join(STAGES)})")
        o["stages"] = {"baseline", "capture", "modules", "finetune", "deploy", "table"} if "all" in stages else \
            {("modules" if s in ("mha", "ffn") else s) for s in stages}
    for what in ("tasks", "seeds", "variants"):
        if not o[what]:
            raise Error(f"--{what} is empty")
    for t in o["tasks"] if not o["user_task"] else ():
        if t not in TASK_NAMES:
            raise Error(f"--task '{t}' is not a task name ({' '.join(TASK_NAMES)})")
    for s in o["seeds"]:
        if not s.isdigit():
            raise Error(f"--seed '{s}' is not a non-negative integer")
    o["seeds"] = [int(s) for s in o["seeds"]]
    for v in o["variants"]:
        if v not in config.VARIANTS:
            raise Error(f"--variant '{v}' is not one of {', '.join(config.VARIANTS)}")
    for k in ("parallel", "max_running"):
        if o.get(k) and not (o[k].isdigit() and int(o[k]) > 0):
            raise Error(f"--{k} must be a positive integer, got '{o[k]}'")
    if not o["out_dir"]:
        raise Error("--out_dir is empty")
    o["out_dir"] = os.path.abspath(os.path.join(ROOT, o["out_dir"]))
    if o.get("export"):
        o["export"] = os.path.abspath(o["export"])
        if o["export"] == o["out_dir"] or o["out_dir"].startswith(o["export"] + os.sep) or \
                o["export"].startswith(ROOT + os.sep + "modcomp") or o["export"] == ROOT:
            raise Error(f"--export {o['export']}: not the out_dir, a folder above it, or the code")
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
    """The fine-tunes in the sweep's order, task, seed, setting, variant: [(task, seed, variant, setting)]."""
    return [(t, s, v, f) for t in o["tasks"] for s in o["seeds"] for f in o["settings"] for v in o["variants"]]


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
    if act in ("run_variant", "run_seed_modules", "local_job") and len(o["settings"]) > 1:
        raise Error(f"--{act} indexes (task, seed) pairs of one setting; this sweep has {len(o['settings'])} "
                    "(use --run_index)")

    def index(i):
        if not str(i).isdigit() or int(i) >= len(table):
            raise Error(f"job index '{i}' is not in [0, {len(table)})")
        t, s, v, f = table[int(i)]
        return [workflow_run(o, t, s, v, f)]

    def pair(pidx):
        if not str(pidx).isdigit() or int(pidx) >= len(o["tasks"]) * ns:
            raise Error(f"(task, seed) pair index '{pidx}' is not in [0, {len(o['tasks']) * ns})")
        return table[int(pidx) * nv][:2]

    def modules(task, seed=None):
        return [p for p, j in jobs.items() if j["stage"] == "modules" and j["task"] == task
                and seed in (None, j["seed"])] or []
    if act == "run_index":
        return index(array_arg(o["run_index"]))
    if act == "run_variant":
        v, pidx = o["job_args"][0], array_arg(o["job_args"][1])
        if v not in o["variants"]:
            raise Error(f"variant '{v}' is not in --variants ({' '.join(o['variants'])})")
        pair(pidx)   # checks the pair index
        return index(int(pidx) * nv + o["variants"].index(v))
    if act == "run_modules":
        t = array_arg(o["run_modules"])
        t = o["tasks"][int(t)] if t.isdigit() and int(t) < len(o["tasks"]) else t
        return modules(t)
    if act == "run_seed_modules":
        return modules(*pair(array_arg(o["run_seed_modules"])))
    if act == "local_job":
        kind, arg = o["job_args"]
        return index(arg) if kind == "ft" else modules(*pair(arg)) if kind == "seedmodules" else modules(arg)
    if not isinstance(o.get("stages"), set):
        return targets
    want = [p for p, j in jobs.items() if j["stage"] in o["stages"]]
    if "finetune" in o["stages"] and o["variants"] == ["baseline"]:
        want += targets
    return list(dict.fromkeys(want))


def workflow_run(o, task, seed, variant, fields):
    """The results.json (relative to OUT_DIR) of one run of the table."""
    from modcomp.workflow import task_data
    return config.paths(task, seed, variant, fields, task_data(o, task)[1])["run"]


def print_graph(jobs, targets):
    print(f"job graph ({len(jobs)} jobs; output <- what it needs):")
    for path, j in jobs.items():
        print(f"  {j['stage']:<9} {path}" + (f"  <- {', '.join(j['needs'].values())}" if j["needs"] else ""))


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


def run_forwarding_signals(cmd, grace=30, **kw):
    """subprocess.call that takes timeout's, scancel's and Ctrl-C's signals with it: the child (Snakemake) runs in
    a session of its own, and SIGTERM, SIGINT or SIGHUP here goes to its whole process group (Snakemake and the
    stages it runs, which stop their own children: workflow.run_stage). Snakemake gets `grace` seconds to stop,
    then its group gets SIGKILL; once it has ended, what is left of its group too; then this process exits
    128 + N."""
    import threading
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    stopped = []

    def kill_group(sig):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def forward(signum, _frame):
        if not stopped:
            threading.Timer(grace, kill_group, (signal.SIGKILL,)).start()
        stopped.append(signum)
        kill_group(signum)
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if not stopped:
        return rc
    deadline = time.time() + grace   # the stages Snakemake started may outlive it: they end with their group
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    kill_group(signal.SIGKILL)
    print(f"workflow: stopped by signal {stopped[0]}; Snakemake and its jobs were stopped", file=sys.stderr)
    os._exit(128 + stopped[0])


def engine(o, jobs, targets, chosen, slurm):
    """Run Snakemake on the plan; its exit status."""
    out = o["out_dir"]
    body = {"jobs": jobs, "targets": chosen, "out_dir": out, "python": o["python"], "root": ROOT,
            "threads": stage_threads(o, slurm)}
    path = os.path.join(out, ".workflow", f"plan-{config.short_hash(body, 12)}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, dict(body, plan_path=path))
    cmd = [o["python"], "-m", "snakemake", *chosen, "--snakefile", os.path.join(ROOT, "modcomp", "Snakefile"),
           "--directory", out, "--configfile", path, "--rerun-incomplete", "--nolock", "--rerun-triggers", "input",
           "--keep-going"]
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
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    return run_forwarding_signals(cmd, cwd=ROOT, env=env)


def consolidate(o, task_dir=None):
    cmd = [o["python"], os.path.join(ROOT, "consolidate.py")]
    if task_dir:
        cmd += ["--results_dir", task_dir]
    else:
        cmd += ["--results_dir", o["out_dir"], "--tasks", *o["tasks"], "--seeds", *map(str, o["seeds"]),
                "--output", os.path.join(o["out_dir"], "table.txt")]
    return subprocess.call(cmd, cwd=ROOT)


def main(argv):
    if argv[:1] == ["stage"]:
        if len(argv) != 5 or argv[3] != "--log":
            print("usage: python -m modcomp.workflow_cli stage PLAN OUTPUT --log LOG", file=sys.stderr)
            return 2
        return run_stage(argv[1], argv[2], argv[4])
    if argv[:1] not in (["pipeline"], ["sweep"]):
        print("usage: python -m modcomp.workflow_cli pipeline|sweep [flags] (see --help)", file=sys.stderr)
        return 2
    mode, name = argv[0], PROG[argv[0]]
    try:
        o = parse(mode, argv[1:], os.environ)
        if o["action"] == "print_jobs":
            for i, (t, s, v, f) in enumerate(job_table(o)):
                tag = ", ".join(f"{k}={f[k]}" for k in config.swept(o["fields"]))
                print(i, t, s, v, *([tag] if tag else []))
            return 0
        if o["action"] == "consolidate":
            return consolidate(o)
        jobs, targets = plan(o)
        chosen = select(o, jobs, targets)
    except Error as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    if o["dry_run"]:
        print_graph(jobs, targets)
    sweep = config.swept(o["fields"])
    print(f"{name}: recipe {o['recipe_name']} ({config.describe(o['fields'])}); tasks {' '.join(o['tasks'])}, "
          f"seeds {' '.join(map(str, o['seeds']))}, variants {' '.join(o['variants'])}"
          + (f"; {len(o['settings'])} settings ({', '.join(sweep)})" if sweep else "") + f"; out {o['out_dir']}",
          flush=True)
    slurm = (mode == "sweep" and not o["local"] and o["action"] == "run" and shutil.which("sbatch")
             and not os.environ.get("SLURM_JOB_ID"))
    if slurm and not o["wait"] and not o["dry_run"]:
        log = os.path.join(o["out_dir"], "logs", f"controller-{int(time.time())}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        argv_wait = [sys.executable, "-m", "modcomp.workflow_cli", *argv, "--wait"]
        proc = subprocess.Popen(argv_wait, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        print(f"{name}: Snakemake controls the SLURM jobs from process {proc.pid} (log {log}); the table will "
              f"be in {o['out_dir']}/table.txt")
        return 0
    t0 = time.time()
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
    print(f"{name}: done in {time.time() - t0:.0f} s ({time.strftime('%H:%M:%S')})")
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
