"""The named recipes, their fields, the row labels and the result paths: defined once, used by workflow.py (and so
by modular_pipeline.sh and rs_moded.sh), the Snakefile and consolidate.py. Standard library only (no torch).

A recipe is a name plus fields; flags override fields. Every path holds what changes its content: readable
parts (task, label, compression, seed) plus a short hash of the rest, so runs of other settings never share
or replace each other's files.
"""
import hashlib
import json
import math

# field -> (type, the `default` recipe's value, help)
FIELDS = {
    "model": (str, "minilm", "pretrained model: 'minilm' (embedded MiniLM-L6), a dir or hub id"),
    "compression": (float, 2.0, "divide head_dim and FFN width by C (> 1)"),
    "teacher": (str, "finetuned", "pretrained (capture from MODEL: the paper) | finetuned (this seed's baseline)"),
    "init": (str, "data", "svd | data | random: start of the low-rank blocks"),
    "allocate": (int, 1, "--init data: allocate head dims and FFN widths per layer, same FLOPs (0|1)"),
    "currency": (str, "output", "--allocate: block errors compared by what reaches the encoder's output "
                                "(output), after their LayerNorm (layernorm) or relative to the residual stream "
                                "(residual: session 6's)"),
    "fit_tokens": (str, "65536", "--init data: fit the closed form on at most N training tokens per layer | all"),
    "module_epochs": (int, 0, "epochs of mha/ffn module training (the paper: 200)"),
    "module_seed": (int, 42, "seed of capture + module training"),
    "mixup": (int, 0, "mixup in module training (0|1)"),
    "augment": (int, 0, "N augmented copies of each captured example"),
    "capture_samples": (int, None, "first N training examples captured (before augmentation); empty: all"),
    "distill": (int, 1, "distil the compressed fine-tune from this seed's baseline (0|1)"),
    "ft_epochs": (int, 3, "fine-tuning epochs (the paper: 18)"),
    "ft_lr": (float, 1e-4, "fine-tuning learning rate (baseline and compressed)"),
    "max_train_samples": (int, None, "fine-tune on the first N training rows; empty: all"),
    "max_eval_samples": (int, None, "evaluate on the first N validation rows; empty: all"),
    "capture_args": (str, "", "extra arguments for capture_data.py"),
    "module_args": (str, "", "extra arguments for mha_modular.py and ffn_modular.py"),
    "ft_args": (str, "", "extra arguments for run_superglue.py (both fine-tunes)"),
}
DEFAULT = {k: v[1] for k, v in FIELDS.items()}
RECIPES = {
    # what measures best (results/RESULTS.md section 7): the seed's fine-tuned baseline as the teacher, the
    # closed-form start with allocated dims, no module training, a distilled fine-tune
    "default": dict(DEFAULT),
    # the paper's: pretrained teacher, random start, 200 module epochs, augmentation, 18 epochs at 2e-5
    "paper": dict(DEFAULT, teacher="pretrained", init="random", module_epochs=200, augment=4, ft_epochs=18,
                  ft_lr=2e-5, distill=0, allocate=0, fit_tokens="all"),
}
VARIANTS = ("baseline", "modular", "svd", "random")
CHOICES = {"teacher": ("pretrained", "finetuned"), "init": ("svd", "data", "random"), "allocate": (0, 1),
           "mixup": (0, 1), "distill": (0, 1), "currency": ("layernorm", "output", "residual")}


class RecipeError(ValueError):
    """A bad recipe name or field value (workflow.py prints it as one line)."""


def parse_field(name, value):
    """A field's value from a flag or environment string (or a value already typed); '' is None for the
    optional counts."""
    kind, default, _ = FIELDS[name]
    if value is None or (isinstance(value, str) and value == "" and default is None):
        return None
    try:
        if kind is int:
            if isinstance(value, float) or (isinstance(value, str) and not value.strip().lstrip("-").isdigit()):
                raise ValueError
            v = int(value)
        elif kind is float:
            v = float(value)
            if not math.isfinite(v):
                raise ValueError
        else:
            v = str(value)
    except ValueError:
        raise RecipeError(f"--{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if name in CHOICES and v not in CHOICES[name]:
        raise RecipeError(f"--{name} must be {' or '.join(map(str, CHOICES[name]))}, got {value!r}")
    return v


def check(fields):
    """Raise RecipeError unless the fields make sense together (checked before any stage runs)."""
    f = fields
    if not f["compression"] > 1:
        raise RecipeError(f"--compression must be a number > 1, got {f['compression']:g}")
    if f["fit_tokens"] != "all" and not (f["fit_tokens"].isdigit() and int(f["fit_tokens"]) > 0):
        raise RecipeError(f"--fit_tokens must be a positive integer or 'all', got {f['fit_tokens']!r}")
    for k in ("module_epochs", "augment", "ft_epochs", "module_seed"):
        if f[k] < (1 if k == "ft_epochs" else 0):
            raise RecipeError(f"--{k} must be {'>= 1' if k == 'ft_epochs' else '>= 0'}, got {f[k]}")
    for k in ("capture_samples", "max_train_samples", "max_eval_samples"):
        if f[k] is not None and f[k] < 1:
            raise RecipeError(f"--{k} must be a positive integer (or empty: all), got {f[k]}")
    if not f["ft_lr"] > 0:
        raise RecipeError(f"--ft_lr must be > 0, got {f['ft_lr']:g}")
    if not f["model"]:
        raise RecipeError("--model is empty")


def resolve(name, overrides):
    """(name, fields): the recipe's fields with the overrides (field -> value or string) applied and checked.
    Fields that only matter with --init data follow it: allocate 0 and fit_tokens all otherwise."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    fields = dict(RECIPES[name])
    for k, v in overrides.items():
        if k not in FIELDS:
            raise RecipeError(f"unknown recipe field {k!r}")
        fields[k] = parse_field(k, v)
    if fields["init"] != "data":   # the allocation and the token subset come from the closed-form start
        fields["allocate"], fields["fit_tokens"] = 0, "all"
    check(fields)
    return name, fields


def settings(fields):
    """The fields that are settings of a run: all, less the currency where nothing is allocated (so the paths and
    records of runs without --allocate are what they were before the field existed)."""
    return {k: v for k, v in fields.items() if k != "currency" or fields["allocate"]}


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
        if fields["teacher"] == "finetuned":
            label += "-ft"
    if variant != "baseline" and fields["distill"]:
        label += "+kd"
    return label


def short_hash(obj, n=8):
    """A short, stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def fmt_c(c):
    return f"{c:g}"


# ------------------------------------------------------------------ which fields each stage depends on
BASELINE_FIELDS = ("model", "ft_epochs", "ft_lr", "max_train_samples", "max_eval_samples", "ft_args")
CAPTURE_FIELDS = ("capture_samples", "augment", "module_seed", "capture_args")
MODULE_FIELDS = ("compression", "init", "allocate", "currency", "fit_tokens", "module_epochs", "mixup",
                 "module_seed", "module_args")


def capture_tokens(fields):
    """With no module training the capture need only hold the closed form's tokens plus the held-out tenth."""
    if fields["fit_tokens"] == "all" or fields["module_epochs"] != 0:
        return None
    return (int(fields["fit_tokens"]) * 10 + 8) // 9


def paths(task, seed, variant, fields, data_key):
    """{stage: path relative to OUT_DIR} of every stage this (task, seed, variant) run needs, keyed by its
    settings; data_key identifies the task's data files (their hashes). Stages: baseline (its results.json),
    capture and modules (their done.json), run (the results.json of this variant; the baseline's for
    'baseline'), teacher_model (the model the capture reads: a dir under the baseline, or MODEL)."""
    f = fields
    base = {k: f[k] for k in BASELINE_FIELDS}
    base_dir = f"{task}/baseline/seed{seed}-{short_hash([base, data_key])}"
    out = {}
    needs_baseline = variant == "baseline" or f["distill"] or (variant == "modular" and f["teacher"] == "finetuned")
    if needs_baseline:
        out["baseline"] = f"{base_dir}/results.json"
    if variant == "baseline":
        out["run"] = out["baseline"]
        return out
    if variant == "modular":
        teacher = (f"ft-seed{seed}-{short_hash([base, data_key])}" if f["teacher"] == "finetuned"
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
    run = {k: f[k] for k in BASELINE_FIELDS + ("compression",)}
    if variant == "modular":
        run["modules"] = out["modules"]
        run["teacher"] = f["teacher"]
    run["distill"] = f["distill"]
    out["run"] = f"{task}/{label}/c{fmt_c(f['compression'])}/seed{seed}-{short_hash([run, data_key])}/results.json"
    return out
