"""Every setting of the pipeline, declared once; the recipes (configs/*.yaml) give them values.

A recipe field has the same name everywhere: in configs/NAME.yaml, as a flag of the pipeline and the sweep
(`--ft_lr 5e-5`, `--compression "2 4"`), as an environment variable (FT_LR), and as the flag of the stage
that uses it (`run_superglue.py --ft_lr 5e-5`; the stages also accept their older short names, `--lr`). Each
stage builds its parser from this table with the recipe's values as defaults (`--config NAME|FILE`, default:
`default`), so a stage run by hand without flags runs the default recipe. Standard library + PyYAML (no torch):
the workflow and consolidate.py import it.

Every path of a run holds what changes its content: readable parts (task, label, compression, seed) plus a
short hash of the rest, so runs of other settings never share or replace each other's files.
"""
import argparse
import hashlib
import itertools
import json
import math
import os
import shlex
from dataclasses import dataclass

from modcomp.task_registry import TASK_NAMES  # noqa: F401
from modcomp.utils import UserError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
VARIANTS = ("baseline", "modular", "svd", "random")
CURRENCIES = ("output", "layernorm", "residual")


class RecipeError(UserError):
    """A bad recipe name, file or field value (printed as one line)."""


@dataclass(frozen=True)
class Field:
    kind: type                 # int, float or str (0/1 fields are int with choices (0, 1))
    help: str
    stages: tuple = ()         # the stages whose flag it is; () for the workflow's own fields
    dest: str = None           # the stage's attribute name when it is not the field's (older code reads it)
    aliases: tuple = ()        # older flag names the stages also accept
    choices: tuple = None
    optional: bool = False     # None allowed (empty string on the command line, null in YAML)
    baseline: bool = False     # a setting of the uncompressed fine-tune (the teacher) as well
    flag: bool = False         # 0/1 that the stage keeps as a bool; a bare `--NAME` means 1


FT = ("finetune",)
FIELDS = {
    # the models
    "model": Field(str, "pretrained model: 'minilm' (embedded MiniLM-L6), a dir or hub id", FT,
                   dest="model_name_or_path", aliases=("--model_name_or_path",), baseline=True),
    "teacher": Field(str, "what the blocks imitate: pretrained (MODEL itself: the paper) | finetuned (this seed's "
                          "baseline) | DIR or hub id of an already fine-tuned sequence classifier (yours: it is the "
                          "teacher, the distillation source and the retention denominator, evaluated once; no "
                          "baseline fine-tune)"),
    "distill": Field(int, "distil the compressed fine-tune from this seed's baseline (0|1)", choices=(0, 1)),
    # capture_data.py
    "capture_samples": Field(int, "capture the first N training rows (before augmentation); empty: all",
                             ("capture",), dest="max_samples", aliases=("--max_samples",), optional=True),
    "augment": Field(int, "N augmented copies of each captured example", ("capture",)),
    "aug_p": Field(float, "augmentation: probability of substituting a word", ("capture",)),
    "glove": Field(str, "augmentation: GloVe text file (empty: the teacher's embeddings)", ("capture",),
                   optional=True),
    "capture_dtype": Field(str, "storage dtype of the captured activations", ("capture",), dest="dtype",
                           aliases=("--dtype",), choices=("fp16", "fp32")),
    "capture_batch_size": Field(int, "sequences per capture batch", ("capture",), dest="batch_size",
                                aliases=("--batch_size",)),
    "max_length": Field(int, "tokens per sequence (capture and fine-tunes)", ("capture", "finetune"), baseline=True),
    "module_seed": Field(int, "seed of the capture's subset and of the module stage", ("capture", "modules"),
                         dest="seed", aliases=("--seed",)),
    # mha_modular.py, ffn_modular.py
    "compression": Field(float, "divide the encoder's multiply-adds (head dims, FFN widths) by C (> 1)",
                         ("modules", "finetune")),
    "init": Field(str, "start of the low-rank blocks: data (closed form on the capture) | svd | random",
                  ("modules", "finetune"), choices=("data", "svd", "random")),
    "allocate": Field(int, "--init data: allocate head dims and FFN widths per layer under one budget (0|1)",
                      ("modules",), choices=(0, 1), flag=True),
    "currency": Field(str, "--allocate: block errors compared by what reaches the encoder's output (output), after "
                           "their LayerNorm (layernorm) or relative to the residual stream (residual)",
                      ("modules",), choices=CURRENCIES),
    "budget": Field(str, "--allocate: what --compression divides: the encoder's multiply-adds (macs) or its latency "
                         "measured on this CPU in LATENCY_RUNTIME (latency: heads per layer too; modcomp/latency.py)",
                    ("modules",), choices=("macs", "latency")),
    "latency_runtime": Field(str, "--budget latency: the runtime its latency table is measured in (ort-int8: the "
                                  "ONNX Runtime INT8 export; openvino: its default precision)", ("modules",),
                             choices=("ort-int8", "openvino")),
    "budget_length": Field(int, "--allocate: the sequence length the budget is counted (or measured) at",
                           ("modules",)),
    "context_rounds": Field(int, "--allocate --currency output: choose again N times with every block's "
                                 "sensitivity measured inside the last choice; keep the choice of the smallest "
                                 "measured output error (0: the blocks' sensitivities alone)", ("modules",)),
    "fit_tokens": Field(str, "--init data: fit the closed form on at most N training tokens per layer | all",
                        ("modules",)),
    "module_epochs": Field(int, "epochs of module training (the paper: 200; 0: the start as it is)", ("modules",),
                           dest="epochs", aliases=("--epochs",)),
    "module_batch_size": Field(int, "sequences per module-training batch", ("modules",), dest="batch_size",
                               aliases=("--batch_size",)),
    "module_lr": Field(float, "module-training learning rate", ("modules",), dest="lr", aliases=("--lr",)),
    "mixup": Field(int, "mixup in module training (0|1)", ("modules",), choices=(0, 1), flag=True),
    "holdout": Field(float, "fraction of captured examples held out (module errors)", ("modules",)),
    # run_superglue.py
    "ft_epochs": Field(int, "fine-tuning epochs (the paper: 18)", FT, dest="epochs", aliases=("--epochs",),
                       baseline=True),
    "ft_lr": Field(float, "fine-tuning learning rate (baseline and compressed)", FT, dest="lr", aliases=("--lr",),
                   baseline=True),
    "batch_size": Field(int, "fine-tuning batch size", FT, baseline=True),
    "eval_batch_size": Field(int, "evaluation batch size", FT, baseline=True),
    "weight_decay": Field(float, "AdamW weight decay", FT, baseline=True),
    "warmup_ratio": Field(float, "share of the steps with a linear warm-up", FT, baseline=True),
    "max_grad_norm": Field(float, "gradient clipping norm", FT, baseline=True),
    "max_train_samples": Field(int, "fine-tune on the first N training rows; empty: all", FT, optional=True,
                               baseline=True),
    "max_eval_samples": Field(int, "evaluate on the first N validation rows; empty: all", FT, optional=True,
                              baseline=True),
    "distill_alpha": Field(float, "--distill 1: weight of the task loss (the rest: the soft loss)", FT),
    "distill_temperature": Field(float, "--distill 1: softening of the logits", FT),
    "distill_beta": Field(float, "--distill 1: weight of the hidden-state MSE (0: off)", FT),
}
BASELINE_FIELDS = tuple(k for k, f in FIELDS.items() if f.baseline)
CAPTURE_FIELDS = tuple(k for k, f in FIELDS.items() if "capture" in f.stages)
MODULE_FIELDS = tuple(k for k, f in FIELDS.items() if "modules" in f.stages)
NOT_SWEPT_BY_SPACES = ("model", "glove", "teacher")   # paths: a value may hold spaces (sweep them as a YAML list)


# ------------------------------------------------------------------ values
def parse_field(name, value):
    """A field's value from a flag, an environment string or YAML; '' (or None) is None for optional fields."""
    f = FIELDS[name]
    if value is None or (isinstance(value, str) and value == ""):
        if f.optional:
            return None
        raise RecipeError(f"--{name} needs a value")
    try:
        if f.kind is int:
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, float) or (isinstance(value, str) and not value.strip().lstrip("-").isdigit()):
                raise ValueError
            v = int(value)
        elif f.kind is float:
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
            if not math.isfinite(v):
                raise ValueError
        else:
            v = str(value)
    except ValueError:
        raise RecipeError(f"--{name} must be {'an integer' if f.kind is int else 'a number'}, got {value!r}") \
            from None
    if f.choices and v not in f.choices:
        raise RecipeError(f"--{name} must be {' or '.join(map(str, f.choices))}, got {value!r}")
    return v


def check(fields):
    """Raise RecipeError unless the fields make sense together (checked before any stage runs)."""
    f = fields
    if not f["compression"] > 1:
        raise RecipeError(f"--compression must be a number > 1, got {f['compression']:g}")
    if f.get("budget") == "latency" and not (f["allocate"] and f["init"] == "data"):
        raise RecipeError("--budget latency is spent by the allocation: it needs --allocate 1 and --init data")
    if f.get("context_rounds") and not (f["allocate"] and f["init"] == "data" and f["currency"] == "output"):
        raise RecipeError("--context_rounds re-measures the allocation's output-currency sensitivities: it needs "
                          "--allocate 1, --init data and --currency output")
    if f["fit_tokens"] != "all" and not (f["fit_tokens"].isdigit() and int(f["fit_tokens"]) > 0):
        raise RecipeError(f"--fit_tokens must be a positive integer or 'all', got {f['fit_tokens']!r}")
    at_least = {"ft_epochs": 1, "batch_size": 1, "eval_batch_size": 1, "module_batch_size": 1,
                "capture_batch_size": 1, "max_length": 2, "budget_length": 1, "context_rounds": 0, "module_epochs": 0, "augment": 0,
                "module_seed": 0, "capture_samples": 1, "max_train_samples": 1, "max_eval_samples": 1}
    for k, lo in at_least.items():
        if f[k] is not None and f[k] < lo:
            raise RecipeError(f"--{k} must be >= {lo}{' (or empty: all)' if FIELDS[k].optional else ''}, got {f[k]}")
    for k in ("ft_lr", "module_lr", "max_grad_norm", "distill_temperature"):
        if not f[k] > 0:
            raise RecipeError(f"--{k} must be > 0, got {f[k]:g}")
    for k in ("aug_p", "holdout", "warmup_ratio", "distill_alpha"):
        if not 0 <= f[k] <= 1:
            raise RecipeError(f"--{k} must be in [0, 1], got {f[k]:g}")
    for k in ("weight_decay", "distill_beta"):
        if not f[k] >= 0:
            raise RecipeError(f"--{k} must be >= 0, got {f[k]:g}")
    if not f["model"]:
        raise RecipeError("--model is empty")
    if not f["teacher"]:
        raise RecipeError("--teacher is empty (pretrained, finetuned, or a fine-tuned classifier's DIR or hub id)")
    t = given_teacher(f)
    looks_local = t is not None and (os.path.isdir(t) or t.startswith((os.sep, ".", "~")) or t.count("/") > 1)
    if looks_local and not os.path.isfile(os.path.join(os.path.expanduser(t), "config.json")):
        raise RecipeError(f"--teacher {t}: no such model directory (no config.json): pretrained, finetuned, or a "
                          "fine-tuned sequence classifier's directory or hub id")   # (a hub id: ORG/NAME)


def normalize(fields):
    """Fields that only matter with --init data follow it: allocate 0 and fit_tokens all otherwise."""
    if fields["init"] != "data":
        fields["allocate"], fields["fit_tokens"] = 0, "all"
    return fields


# ------------------------------------------------------------------ the recipe files
def recipe_path(name, beside=None):
    """configs/NAME.yaml for a recipe name (NAME.yaml beside the file `beside` first, for `extends`), or the file
    itself for a path."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return name
    if beside and os.path.isfile(os.path.join(os.path.dirname(beside), f"{name}.yaml")):
        return os.path.join(os.path.dirname(beside), f"{name}.yaml")
    return os.path.join(CONFIG_DIR, f"{name}.yaml")


def recipe_names():
    return sorted(n[:-5] for n in os.listdir(CONFIG_DIR) if n.endswith(".yaml")) if os.path.isdir(CONFIG_DIR) else []


def read_recipe(name, _seen=(), _beside=None):
    """(name, {field: value or [values]}) of a recipe file: every field, from the file and the recipe it
    `extends` (default: `default`, which must name them all). A list value is a sweep over its values."""
    import yaml
    path = recipe_path(name, _beside)
    if not os.path.isfile(path):
        raise RecipeError(f"unknown recipe {name!r} (no {path}; known: {', '.join(recipe_names())})")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: cannot read it as YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of field: value")
    parent = data.pop("extends", None if os.path.basename(path) == "default.yaml" else "default")
    fields = {}
    if parent is not None:
        if os.path.realpath(recipe_path(parent, path)) in _seen + (os.path.realpath(path),):
            raise RecipeError(f"{path}: 'extends: {parent}' makes a circle")
        fields = dict(read_recipe(parent, _seen + (os.path.realpath(path),), path)[1])
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise RecipeError(f"{path}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    for k, v in data.items():
        fields[k] = [parse_field(k, x) for x in v] if isinstance(v, list) else parse_field(k, v)
    missing = [k for k in FIELDS if k not in fields]
    if missing:
        raise RecipeError(f"{path}: no value for {', '.join(missing)}")
    label = os.path.splitext(os.path.basename(path))[0]
    return label, fields


def split_values(name, value):
    """A flag or environment string as a list of values (a sweep) or one value: space-separated for every
    field but the path-like ones."""
    if isinstance(value, list):
        return [parse_field(name, v) for v in value]
    if isinstance(value, str) and name not in NOT_SWEPT_BY_SPACES and len(value.split()) > 1:
        return [parse_field(name, v) for v in value.split()]
    return parse_field(name, value.strip() if isinstance(value, str) and name not in NOT_SWEPT_BY_SPACES else value)


def expand(fields):
    """Every combination of a recipe whose fields may be lists: [fields], checked and normalized, duplicates
    (after normalize) dropped, in the order the lists give."""
    keys = [k for k, v in fields.items() if isinstance(v, list)]
    for k in keys:
        if not fields[k]:
            raise RecipeError(f"--{k} is empty")
    out, seen = [], set()
    for combo in itertools.product(*(dict.fromkeys(map(json.dumps, fields[k])) for k in keys)):
        f = dict(fields, **{k: json.loads(v) for k, v in zip(keys, combo)})
        f = normalize(f)
        check(f)
        sig = json.dumps(settings(f), sort_keys=True)   # the currency is no setting without an allocation
        if sig not in seen:
            seen.add(sig)
            out.append(f)
    return out


def resolve(name, overrides):
    """(name, fields): the recipe's fields with the overrides (field -> value, string or list) applied; a field
    may be a list (a sweep: expand()). Raises RecipeError on any bad value before anything runs."""
    label, fields = read_recipe(name)
    for k, v in overrides.items():
        if k not in FIELDS:
            raise RecipeError(f"unknown recipe field {k!r}")
        fields[k] = split_values(k, v)
    expand(fields)   # checks every combination
    return label, fields


def swept(fields):
    """The fields that take more than one value."""
    return [k for k, v in fields.items() if isinstance(v, list) and len(v) > 1]


# ------------------------------------------------------------------ the stages' parsers
def _stage_type(name):
    f = FIELDS[name]

    def convert(text):
        try:
            v = parse_field(name, text)
        except RecipeError as e:
            raise argparse.ArgumentTypeError(str(e).split(", got")[0].replace(f"--{name} ", "")) from None
        return stage_value(name, v)
    convert.__name__ = f.kind.__name__
    return convert


def stage_value(name, v):
    """A recipe value as the stage holds it: a bool for the 0/1 switches, None for fit_tokens 'all'."""
    if FIELDS[name].flag:
        return bool(v)
    if name == "fit_tokens":
        return None if v == "all" else int(v)
    return v


def add_stage_arguments(parser, stage, argv=None, skip=()):
    """Add the recipe fields of `stage` to an argparse parser, their defaults the recipe's that `--config NAME|FILE`
    in argv names (default: `default`; also added here). Returns the recipe's fields."""
    def one_line(message):   # a bad flag of a stage: one line and exit 2 (utils.run_main), as every other error
        raise UserError(message)
    parser.error = one_line
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="default")
    known, _ = pre.parse_known_args(argv)
    try:
        _, recipe = read_recipe(known.config)
    except RecipeError as e:
        parser.error(str(e))
    parser.add_argument("--config", default="default", metavar="NAME|FILE",
                        help=f"the recipe whose values are the defaults: {' | '.join(recipe_names())} or a YAML file")
    for name, f in FIELDS.items():
        if stage not in f.stages or name in skip:
            continue
        value = recipe[name]
        if isinstance(value, list):
            parser.error(f"--config {known.config}: {name} is a sweep ({value}); a stage runs one value")
        default = stage_value(name, value)
        if name in INIT_DATA_ONLY:   # follows --init: off unless init is data (resolved after parsing)
            default = _FollowsInit(default)
        kw = dict(dest=f.dest or name, type=_stage_type(name), default=default,
                  help=f"{f.help} (recipe field {name}; default %(default)s)")
        if f.flag:
            kw.update(nargs="?", const=True)
        if f.choices and not f.flag:
            kw["metavar"] = "|".join(map(str, f.choices))
        parser.add_argument(f"--{name}", *f.aliases, **kw)
    parse = parser.parse_args

    def parse_args(args=None, namespace=None):
        ns = parse(args, namespace)
        for name in INIT_DATA_ONLY:   # as normalize(): the recipe's allocation and token subset need --init data
            dest = FIELDS[name].dest or name
            v = getattr(ns, dest, None)
            if isinstance(v, _FollowsInit):
                off = stage_value(name, {"allocate": 0, "fit_tokens": "all"}[name])
                setattr(ns, dest, v.value if getattr(ns, "init", "data") == "data" else off)
        return ns
    parser.parse_args = parse_args
    return recipe


class _FollowsInit:
    """A stage default that holds only with --init data (a flag given on the command line always holds)."""
    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"{self.value} (with --init data)"


INIT_DATA_ONLY = ("allocate", "fit_tokens")


def stage_argv(stage, fields, skip=()):
    """The flags that give a stage every one of its recipe fields' values (explicit: a stage's command line is
    its whole recipe)."""
    out = []
    for name, f in FIELDS.items():
        if stage in f.stages and name not in skip:
            v = fields[name]
            out += [f"--{name}", "" if v is None else repr(v) if isinstance(v, float) else str(v)]
    return out


def given_teacher(fields):
    """The teacher a user gave (a directory or hub id), or None for pretrained / finetuned."""
    return None if fields["teacher"] in ("pretrained", "finetuned") else fields["teacher"]


def capture_tokens(fields):
    """With no module training the capture need only hold the closed form's tokens plus the held-out tenth."""
    if fields["fit_tokens"] == "all" or fields["module_epochs"] != 0:
        return None
    return (int(fields["fit_tokens"]) * 10 + 8) // 9


# ------------------------------------------------------------------ labels and paths
def settings(fields):
    """The fields that are settings of a run: all, less the currency where nothing is allocated, and the budget's
    kind and runtime unless it is a latency budget and the context rounds unless there are some (so that earlier
    runs keep the paths they had)."""
    latency = fields.get("allocate") and fields.get("budget") == "latency"
    return {k: v for k, v in fields.items() if (k != "currency" or fields["allocate"])
            and (k not in ("budget", "latency_runtime") or latency)
            and (k != "context_rounds" or (fields["allocate"] and v))}


def row_label(variant, fields):
    """The row label of a variant under these fields, the one place labels are made: VARIANT, then for
    modular -INIT (unless svd), -alloc, -ft (fine-tuned teacher); +kd when distilled.
    e.g. modular-data-alloc-ft+kd (the default recipe), modular-random (the paper's)."""
    label = variant
    if variant == "modular":
        if fields["init"] != "svd":
            label += f"-{fields['init']}"
        if fields["init"] == "data" and fields["allocate"]:
            label += "-alloc"
            if fields.get("budget") == "latency":
                label += "-lat"
        if fields["teacher"] == "finetuned":
            label += "-ft"
        elif fields["teacher"] != "pretrained":   # a fine-tuned teacher of the user's
            label += "-given"
    if variant != "baseline" and fields["distill"]:
        label += "+kd"
    return label


def short_hash(obj, n=8):
    """A short, stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def fmt_c(c):
    return f"{c:g}"


def paths(task, seed, variant, fields, data_key):
    """{stage: path relative to OUT_DIR} of every stage this (task, seed, variant) run needs, keyed by its
    settings; data_key identifies the task's data files (their hashes). Stages: baseline (its results.json),
    capture and modules (their done.json), run (the results.json of this variant; the baseline's for
    'baseline')."""
    f = fields
    given = given_teacher(f)
    base = {k: f[k] for k in BASELINE_FIELDS}
    if given is not None:   # the baseline is the given teacher, evaluated: its path and the evaluation's fields
        base = {"teacher": os.path.abspath(given) if os.path.isdir(given) else given,
                **{k: f[k] for k in ("max_length", "eval_batch_size", "max_eval_samples")}}
    base_dir = f"{task}/baseline/{'given-' if given else ''}seed{seed}-{short_hash([base, data_key])}"
    out = {}
    needs_baseline = variant == "baseline" or f["distill"] or (variant == "modular" and f["teacher"] != "pretrained")
    if needs_baseline:
        out["baseline"] = f"{base_dir}/results.json"
    if variant == "baseline":
        out["run"] = out["baseline"]
        return out
    if variant == "modular":
        teacher = (f"ft-seed{seed}-{short_hash([base, data_key])}" if f["teacher"] == "finetuned"
                   else f"given-{short_hash(base['teacher'])}" if given
                   else f"pretrained-{short_hash(f['model'])}")
        cap = {k: f[k] for k in CAPTURE_FIELDS}
        cap["max_tokens"] = capture_tokens(f)
        cap_name = f"{teacher}-{short_hash([cap, data_key, f['model']])}"
        mod = {k: v for k, v in settings(f).items() if k in MODULE_FIELDS}
        mod_name = (f"c{fmt_c(f['compression'])}-{f['init']}{'-alloc' if f['allocate'] else ''}-"
                    f"{short_hash([cap_name, mod])}")
        out["capture"] = f"{task}/capture/{cap_name}/done.json"
        out["modules"] = f"{task}/modules/{cap_name}/{mod_name}/done.json"
    label = row_label(variant, f)
    run = {k: f[k] for k in FIELDS if "finetune" in FIELDS[k].stages}
    if variant == "modular":
        run["modules"] = out["modules"]
        run["teacher"] = f["teacher"]
    else:
        run["init"] = variant
    run["distill"] = f["distill"]
    out["run"] = f"{task}/{label}/c{fmt_c(f['compression'])}/seed{seed}-{short_hash([run, data_key])}/results.json"
    return out


def describe(fields):
    """One line of a recipe's fields (a sweep's lists as a|b)."""
    def fmt(v):
        return "|".join(map(str, v)) if isinstance(v, list) else str(v)
    return ", ".join(f"{k}={fmt(v)}" for k, v in fields.items() if v not in (None, ""))


def shell_flags(fields):
    """The fields as pipeline flags (a sweep's lists quoted): for the help and the docs."""
    return " ".join(f"--{k} {shlex.quote(' '.join(map(str, v)) if isinstance(v, list) else str(v))}"
                    for k, v in fields.items() if v is not None)
