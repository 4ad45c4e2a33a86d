"""Consolidate run_superglue.py results into the paper's table: median over seeds per cell.

Reads every results.json under --results_dir (one task, one seed each), groups them into rows
(model, variant, compression), and prints two tables: the best epoch on validation (the paper's
selection) and the last epoch. Missing (task, seed) cells are listed below the tables.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from tabulate import tabulate

from modcomp import config as recipes
from modcomp.task_registry import TASKS
from modcomp.utils import UserError, atomic_write_bytes, atomic_write_json, best_epoch, run_main

# task -> metric keys of an epoch dict (score = 100 * mean of these), from the tasks' declarations (task_registry.py,
# the stages' too). Column order of the table.
TASK_METRICS = {name: list(t.metrics) for name, t in TASKS.items()}
TASK_ORDER = list(TASK_METRICS)
SELECTIONS = [("best", "best epoch on validation (the paper's selection)"), ("last", "last epoch")]
REQUIRED = ["task", "model", "variant", "compression", "seed", "params", "epochs"]


def _number(path, where, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: {where} must be a number, got {value!r}")
    return float(value)


def _metric(path, where, value):
    """A metric or score: a number, or None where it is undefined (null, or NaN in files of older versions)."""
    if value is None:
        return None
    value = _number(path, where, value)
    return value if math.isfinite(value) else None


def load_results(results_dir):
    """Every results.json under results_dir, validated, each with its path under '_path'."""
    if not os.path.isdir(results_dir):
        raise UserError(f"results_dir is not a directory: {results_dir}")
    results = []
    for root, dirs, files in os.walk(results_dir):
        dirs.sort()
        if "results.json" not in files:
            continue
        path = os.path.join(root, "results.json")
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read JSON ({e})")
        if not isinstance(r, dict):
            raise UserError(f"{path}: expected a JSON object")
        for key in REQUIRED:
            if key not in r:
                raise UserError(f"{path}: missing key '{key}'")
        if r["task"] not in TASK_METRICS and isinstance(r.get("task_metrics"), list) and r["task_metrics"]:
            TASK_METRICS[r["task"]] = list(r["task_metrics"])   # a task of your own files: its record names them
            TASK_ORDER.append(r["task"])
        if r["task"] not in TASK_METRICS:
            raise UserError(f"{path}: unknown task {r['task']!r} (known: {', '.join(TASK_ORDER)})")
        if isinstance(r["seed"], bool) or not isinstance(r["seed"], int):
            raise UserError(f"{path}: 'seed' must be an integer, got {r['seed']!r}")
        if r["compression"] is not None:
            r["compression"] = _number(path, "'compression'", r["compression"])
        _number(path, "'params'", r["params"])
        if not isinstance(r["epochs"], list) or not r["epochs"]:
            raise UserError(f"{path}: 'epochs' must be a non-empty list")
        for i, ep in enumerate(r["epochs"]):
            if not isinstance(ep, dict):
                raise UserError(f"{path}: epochs[{i}] must be an object")
            for key in ["score"] + TASK_METRICS[r["task"]]:
                if key not in ep:
                    raise UserError(f"{path}: epochs[{i}] missing key '{key}'")
                ep[key] = _metric(path, f"epochs[{i}].{key}", ep[key])
        r["_path"] = path
        results.append(r)
    if not results:
        raise UserError(f"no results.json found under {results_dir}")
    return results


# run_superglue.py settings that are no setting of a row: per seed, per run or a path that holds the seed
NOT_ROW_SETTINGS = {"seed", "config", "output_dir", "modules_dir", "distill_from", "model_name_or_path", "overwrite", "resume",
                    "threads", "device", "no_save_model", "eval_batch_size", "recipe", "variant", "data_dir",
                    "task"}  # a row's tasks are its columns
# the fine-tune settings a compressed row shares with the baseline it is compared with
FINETUNE_SETTINGS = ("epochs", "lr", "batch_size", "weight_decay", "warmup_ratio", "max_grad_norm", "max_length",
                     "no_group_by_length", "max_train_samples", "max_eval_samples", "hf_model")


def row_settings(r):
    """What a result shares with every seed of its row: its recipe (name, fields) and run settings."""
    settings = {k: v for k, v in (r.get("settings") or {}).items() if k not in NOT_ROW_SETTINGS}
    return {"recipe": r.get("recipe"), "settings": settings}


def baseline_settings(r):
    """The settings of the baseline a result is compared with: the fine-tune settings and the recipe's baseline
    fields (a compressed run's teacher and distillation source is the baseline of these settings)."""
    s = r.get("settings") or {}
    rec = r.get("recipe") or {}
    fields = {k: v for k, v in (rec.get("fields") or {}).items() if k in recipes.BASELINE_FIELDS}
    if (rec.get("fields") or {}).get("teacher") not in (None, "pretrained", "finetuned"):
        fields["teacher"] = rec["fields"]["teacher"]   # a teacher of the user's: its evaluation is the baseline
    return json.dumps({"recipe": [rec.get("name"), fields] if rec else None,
                       "settings": {k: s.get(k) for k in FINETUNE_SETTINGS}}, sort_keys=True, default=str)


def label_of(r):
    """The row label (recipes.row_label, the one place labels are made) for a result with a recipe record;
    the recorded variant otherwise."""
    rec = r.get("recipe")
    kind = r["variant"].split("-")[0].split("+")[0]
    if rec and kind in recipes.VARIANTS and set(recipes.FIELDS) <= set(rec.get("fields", {})):
        return recipes.row_label(kind, rec["fields"])
    return r["variant"]


def row_name(key):
    model, variant, compression = key[:3]
    name = f"{model}/{variant}" + ("" if compression is None else f" c={compression:g}")
    return name + (f" [{key[3]}]" if len(key) > 3 and key[3] else "")


def _differences(sigs):
    """{signature: 'k=v, ...'}: what tells apart rows that share model, variant and compression."""
    flat = {sig: {**{f"recipe.{k}": v for k, v in ((json.loads(sig)["recipe"] or {}).get("fields") or {}).items()},
                  "recipe": (json.loads(sig)["recipe"] or {}).get("name"), **json.loads(sig)["settings"]}
            for sig in sigs}
    keys = sorted({k for d in flat.values() for k in d if len({json.dumps(x.get(k)) for x in flat.values()}) > 1})
    return {sig: ", ".join(f"{k.replace('recipe.', '')}={d.get(k)}" for k in keys if not
                           (k.startswith("recipe.") and k[7:] in d and d[k[7:]] == d.get(k))) for sig, d in flat.items()}


def group(results, tasks=None, seeds=None, warnings=None):
    """{(model, variant, compression, settings): {task: {seed: result}}}; duplicates are a UserError.

    Runs of other settings (recipe, epochs, learning rate, row limits, ...) are other rows, never one median:
    `settings` is empty when a (model, variant, compression) has runs of one setting only, else what tells its
    rows apart (and a line saying so is added to `warnings`). Results for tasks outside `tasks` or seeds outside
    `seeds` (when given) are left out."""
    by_sig = {}
    for r in results:
        if (tasks is not None and r["task"] not in tasks) or (seeds is not None and r["seed"] not in seeds):
            continue
        key = (r.get("base_model") or r["model"], label_of(r), r["compression"])  # per-seed teachers: one row
        sig = json.dumps(row_settings(r), sort_keys=True, default=str)
        by_sig.setdefault(key, {}).setdefault(sig, []).append(r)
    groups = {}
    for key, sigs in by_sig.items():
        names = _differences(sigs) if len(sigs) > 1 else {sig: "" for sig in sigs}
        if len(sigs) > 1 and warnings is not None:
            warnings.append(f"warning: {row_name(key)} has runs of {len(sigs)} settings, shown as separate rows "
                            f"(never one median): {'; '.join(names.values())}")
        for sig, rs in sigs.items():
            for r in rs:
                r["_baseline_settings"] = baseline_settings(r)
                cell = groups.setdefault(key + (names[sig],), {}).setdefault(r["task"], {})
                if r["seed"] in cell:
                    raise UserError(f"duplicate results for {row_name(key)} {r['task']} seed {r['seed']}: "
                                    f"{cell[r['seed']]['_path']} and {r['_path']}")
                cell[r["seed"]] = r
    return groups


def select_epoch(result, which):
    """'best': utils.best_epoch (the rule finetune.summarize records as best_epoch); when no epoch has a score,
    an epoch of nulls with "epoch": None, as results.json's best_epoch is then null; 'last': epochs[-1]."""
    epochs = result["epochs"]
    if which == "best":
        return best_epoch(epochs) or {**{k: None for k in epochs[0]}, "epoch": None}
    if which == "last":
        return epochs[-1]
    raise ValueError(which)


def row_sort_key(key):  # baseline first, then by compression, variant, model, settings
    return (key[1] != "baseline", key[2] or 0.0, key[1], key[0], key[3] if len(key) > 3 else "")


def row_seeds(by_task, seeds=None):
    return sorted(seeds) if seeds is not None else sorted({s for cell in by_task.values() for s in cell})


def find_missing(groups, tasks, seeds=None):
    """[{model, variant, compression, task, seeds}] for every (row, task) lacking some seed."""
    missing = []
    for key in sorted(groups, key=row_sort_key):
        want = row_seeds(groups[key], seeds)
        for task in tasks:
            absent = [s for s in want if s not in groups[key].get(task, {})]
            if absent:
                missing.append(dict(zip(["model", "variant", "compression"], key), task=task, seeds=absent,
                                    **({"settings": key[3]} if len(key) > 3 and key[3] else {})))
    return missing


def _median(values):
    """Median of the values that are not None (undefined metrics); None if there are none."""
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def median_cells(groups, which, tasks, seeds=None):
    """One dict per row: medians over seeds per metric and of the task score at the selected epoch.
    Seeds whose selected epoch has no score (null) are left out of the medians and listed as 'na_seeds'."""
    rows = []
    for key in sorted(groups, key=row_sort_key):
        by_task, want = groups[key], row_seeds(groups[key], seeds)
        cells, complete = {}, True
        for task in tasks:
            cell = by_task.get(task, {})
            if len(cell) < len(want):
                complete = False
            if not cell:
                cells[task] = None
                continue
            eps = {s: select_epoch(cell[s], which) for s in sorted(cell)}
            na = [s for s, ep in eps.items() if ep["score"] is None]
            eps = [ep for s, ep in eps.items() if s not in na]
            complete = complete and not na
            cells[task] = {
                "metrics": {m: _median([ep[m] for ep in eps]) for m in TASK_METRICS[task]},
                "score": _median([ep["score"] for ep in eps]),
                "seeds": sorted(cell), "na_seeds": na,
            }
        scores = [c["score"] for c in cells.values() if c is not None and c["score"] is not None]
        params = [r["params"] for cell in by_task.values() for r in cell.values()]
        bases = sorted({r["_baseline_settings"] for cell in by_task.values() for r in cell.values()})
        rows.append({
            "model": key[0], "variant": key[1], "compression": key[2], "settings": key[3],
            "baseline_settings": bases[0] if len(bases) == 1 else None,
            "params": int(np.median(params)) if params else None,
            "n_seeds": len(want), "tasks": cells,
            "average": float(np.mean(scores)) if scores else None,
            "average_complete": complete,
        })
    return rows


def row_label(row):
    extra = f" [{row['settings']}]" if row.get("settings") else ""
    if row["variant"] == "baseline":
        return f"{row['model']} (baseline){extra}"
    c = "" if row["compression"] is None else f" c={row['compression']:g}"
    return f"{row['model']} {row['variant']}{c}{extra}"


def format_cell(cell, task):
    if cell is None:
        return "-"
    values = [cell["metrics"][m] for m in TASK_METRICS[task]]
    return "/".join("n/a" if v is None else f"{100 * v:.1f}" for v in values)


def render_table(rows, tasks, fmt):
    headers = ["Model", "Params", "Compression"] + tasks + ["Average Score"]
    body = []
    for row in rows:
        avg = "-" if row["average"] is None else f"{row['average']:.1f}"
        body.append([row_label(row),
                     "-" if row["params"] is None else f"{row['params'] / 1e6:.1f}M",
                     "-" if row["compression"] is None else f"{row['compression']:g}x"]
                    + [format_cell(row["tasks"][t], t) for t in tasks]
                    + [avg if row["average_complete"] else avg + "*"])
    return tabulate(body, headers=headers, tablefmt={"grid": "grid", "markdown": "github"}[fmt],
                    disable_numparse=True)


def format_missing(missing):
    """'missing: minilm/modular c=2: rte seed 3; cb seeds 1,2,3', one line per row."""
    by_row = {}
    for m in missing:
        key = (m["model"], m["variant"], m["compression"], m.get("settings", ""))
        word = "seed" if len(m["seeds"]) == 1 else "seeds"
        by_row.setdefault(key, []).append(f"{m['task']} {word} {','.join(map(str, m['seeds']))}")
    return [f"missing: {row_name(key)}: {'; '.join(parts)}" for key, parts in by_row.items()]


def format_na(tables, tasks):
    """'n/a (last epoch): minilm/modular c=2: stsb seed 2', one line per row and selection with such seeds."""
    out = []
    for which, label in SELECTIONS:
        for row in tables[which]:
            parts = []
            for task in tasks:
                cell = row["tasks"].get(task)
                if cell and cell["na_seeds"]:
                    word = "seed" if len(cell["na_seeds"]) == 1 else "seeds"
                    parts.append(f"{task} {word} {','.join(map(str, cell['na_seeds']))}")
            if parts:
                key = (row["model"], row["variant"], row["compression"], row.get("settings", ""))
                out.append(f"n/a ({label.split(' (')[0]}): {row_name(key)}: {'; '.join(parts)}")
    return out


def retention(rows):
    """{row label: score / baseline score} for every compressed row with a baseline row of the same model and
    the same fine-tune settings (its teacher's; a row whose seeds mix baselines of other settings has none),
    each mean taken over the tasks where both rows have a score (the paper's headline ratio)."""
    base = {}
    for r in rows:
        if r["variant"] == "baseline":
            base.setdefault((r["model"], r.get("baseline_settings")), r)
    out = {}
    for r in rows:
        b = base.get((r["model"], r.get("baseline_settings")))
        mixed = "baseline_settings" in r and r["baseline_settings"] is None
        if r["variant"] == "baseline" or b is None or mixed:
            continue
        both = [t for t in r["tasks"] if r["tasks"][t] and b["tasks"].get(t)
                and r["tasks"][t]["score"] is not None and b["tasks"][t]["score"] is not None]
        base_score = float(np.mean([b["tasks"][t]["score"] for t in both])) if both else 0.0
        if base_score > 0:  # a ratio to a zero or negative score (e.g. a failed stsb baseline) means nothing
            out[row_label(r)] = float(np.mean([r["tasks"][t]["score"] for t in both])) / base_score
    return out


def render(tables, missing, tasks, fmt, warnings=()):
    """Text for grid/markdown: both labelled tables with the retention of each compressed row, then a
    footnote and the missing cells."""
    out = []
    for which, label in SELECTIONS:
        out += [f"== {label} ==", render_table(tables[which], tasks, fmt), ""]
        kept = retention(tables[which])
        if kept:
            out += [f"retention ({label.split(' (')[0]}; compressed / baseline score, same tasks): "
                    + "; ".join(f"{name} {v:.3f}" for name, v in kept.items()), ""]
    out.append("Cells: median over seeds, x100; cb and mrpc acc/F1, stsb Pearson/Spearman.")
    if missing:
        out.append("* Average Score over the cells present only; missing cells:")
        out += format_missing(missing)
    else:
        out.append("All (task, seed) cells present.")
    out += list(warnings)
    na = format_na(tables, tasks)
    if na:
        out.append("* Seeds whose selected epoch has no score (an undefined metric, e.g. a constant stsb "
                   "prediction: n/a) are left out of the medians:")
        out += na
    return "\n".join(out)


def build(results, tasks=None, seeds=None, warnings=None):
    """(tasks, {'best': rows, 'last': rows}, missing) for a list of loaded results; lines about rows split by
    their settings are appended to `warnings` when given."""
    if tasks is None:
        tasks = [t for t in TASK_ORDER if any(r["task"] == t for r in results)]
    groups = group(results, tasks, seeds, warnings)
    if not groups:
        raise UserError("no results left for the chosen --tasks/--seeds")
    tables = {which: median_cells(groups, which, tasks, seeds) for which, _ in SELECTIONS}
    return tasks, tables, find_missing(groups, tasks, seeds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results_dir", required=True, help="searched recursively for results.json")
    p.add_argument("--format", choices=["grid", "markdown", "json"], default="grid")
    p.add_argument("--output", help="also write what is printed to this file (atomically)")
    p.add_argument("--tasks", nargs="+", help=f"columns: of {' '.join(TASK_ORDER)} or your own tasks' names "
                                              "(default: tasks seen)")
    p.add_argument("--seeds", nargs="+", type=int, help="expected seeds (default: union seen per row)")
    args = p.parse_args(argv)

    results = load_results(args.results_dir)   # (registers the metrics of your own tasks it holds)
    unknown = [t for t in args.tasks or () if t not in TASK_METRICS]
    if unknown:
        raise UserError(f"--tasks {unknown[0]!r}: no such task here (known: {', '.join(TASK_ORDER)})")
    tasks = None if args.tasks is None else [t for t in TASK_ORDER if t in args.tasks]
    seeds = None if args.seeds is None else sorted(set(args.seeds))
    warnings = []
    tasks, tables, missing = build(results, tasks, seeds, warnings)
    for w in warnings:
        print(w, file=sys.stderr)
    if args.format == "json":
        obj = {"tasks": tasks, "best": tables["best"], "last": tables["last"], "missing": missing,
               "warnings": warnings,
               "retention": {which: retention(tables[which]) for which, _ in SELECTIONS}}
        print(json.dumps(obj, indent=2))
        if args.output:
            atomic_write_json(args.output, obj)
    else:
        text = render(tables, missing, tasks, args.format, warnings)
        print(text)
        if args.output:
            atomic_write_bytes(args.output, (text + "\n").encode())


if __name__ == "__main__":
    run_main(main)
