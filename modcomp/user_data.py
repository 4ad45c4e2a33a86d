"""Your own task from your own files: a training and a validation file (csv, tsv, json, jsonl), one text column or
a pair, a label column; classification (the labels as found in the training file, strings or integers) or
regression (float labels). Standard library only: the workflow checks the files with it before any stage runs.

    python run_superglue.py --train_file train.csv --validation_file dev.csv --text_columns text \
        --label_column label --output_dir runs/mine

Every bad input is a one-line error naming the file and line: a missing column, an empty file, duplicate header
names, bytes that are not UTF-8, a NaN or non-numeric regression target, a validation label the training file
does not have. CSV quoting, a UTF-8 BOM and CRLF line endings just work.

Or a dataset through `datasets` (`--dataset NAME[:CONFIG]`: a hub id where the hub is reachable, or a local
dataset folder): its training and validation splits are written once as jsonl files (`dataset_files`), named by
their content, and from then on it is a files task like any other (every stage reads the same bytes).
"""
import csv
import hashlib
import io
import json
import math
import os
import re

from modcomp.task_registry import TASKS, Task
from modcomp.utils import UserError, atomic_write_bytes, atomic_write_json

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}
TASK_TYPES = ("classification", "regression")


def _text(path):
    """The file's text (a UTF-8 BOM dropped); non-UTF-8 bytes are an error naming their line."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")
    data = open(path, "rb").read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8") \
            from None
    if not text.strip():
        raise UserError(f"{path}: empty file")
    return text


def read_table(path):
    """[(line number, {column: value})] of a csv/tsv/json/jsonl file, every row with every column."""
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise UserError(f"{path}: unknown file type (give {', '.join(FORMATS)})")
    text = _text(path)
    rows = []
    if fmt in ("csv", "tsv"):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"{path}: empty file") from None
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise UserError(f"{path}, line 1: duplicate column name(s) {', '.join(map(repr, dup))}")
        try:
            for values in reader:
                if not values or all(not v.strip() for v in values):
                    continue   # a blank line
                line = reader.line_num
                if len(values) != len(header):
                    raise UserError(f"{path}, line {line}: {len(values)} fields, the header has {len(header)}")
                rows.append((line, dict(zip(header, values))))
        except csv.Error as e:
            raise UserError(f"{path}, line {reader.line_num}: {e}") from None
    elif fmt == "jsonl":
        for line, raw in enumerate(text.splitlines(), 1):
            if raw.strip():
                rows.append((line, _json_object(path, line, raw)))
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path}, line {getattr(e, 'lineno', '?')}: not JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path}: a JSON file holds a list of objects (one per example), or use .jsonl")
        rows = [(i + 1, r) for i, r in enumerate(data)]
    if not rows:
        raise UserError(f"{path}: no rows (only a header)")
    return rows


def _json_object(path, line, raw):
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise UserError(f"{path}, line {line}: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}, line {line}: not a JSON object")
    return obj


def _check_columns(path, rows, columns):
    for line, row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise UserError(f"{path}, line {line}: no column {missing[0]!r} (it has: {', '.join(map(str, row))})")


def _float(path, line, v, column):
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{path}, line {line}: {column} {v!r} is not a number (a regression task)") from None
    if not math.isfinite(x):
        raise UserError(f"{path}, line {line}: {column} is {v!r} (a regression target must be finite)")
    return x


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()))


def _is_number(v):
    try:
        return math.isfinite(float(v)) and not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


def task_name(train_file):
    """A task name from a training file's name: train.csv in a folder `reviews` -> reviews."""
    stem = os.path.splitext(os.path.basename(train_file))[0]
    if stem.lower() in ("train", "training", "data"):
        stem = os.path.basename(os.path.dirname(os.path.abspath(train_file))) or stem
    name = re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "user"
    return name if name not in TASKS or TASKS[name].benchmark == "files" else f"{name}_files"


def make_task(train_file, validation_file, text_columns, label_column="label", task_type=None, name=None,
              verbose=True):
    """The Task of your files (checked whole: every error before any work), registered under its name."""
    cols = [c.strip() for c in (text_columns.split(",") if isinstance(text_columns, str) else text_columns)]
    if not 1 <= len(cols) <= 2 or not all(cols):
        raise UserError(f"--text_columns must name one text column or two (a pair), got {text_columns!r}")
    if label_column in cols:
        raise UserError(f"--label_column {label_column!r} is also a text column")
    if task_type is not None and task_type not in TASK_TYPES:
        raise UserError(f"--task_type must be {' or '.join(TASK_TYPES)}, got {task_type!r}")
    train, val = read_table(train_file), read_table(validation_file)
    for path, rows in ((train_file, train), (validation_file, val)):
        _check_columns(path, rows, cols + [label_column])
        for line, row in rows:
            for c in cols:
                if not isinstance(row[c], str) or not row[c].strip():
                    raise UserError(f"{path}, line {line}: {c} is empty (every example needs its text)")
    labels = [row[label_column] for _, row in train]
    inferred = task_type is None
    if inferred:
        task_type = ("regression" if all(_is_number(v) for v in labels) and not all(_is_int(v) for v in labels)
                     else "classification")
    if task_type == "regression":
        for path, rows in ((train_file, train), (validation_file, val)):
            for line, row in rows:
                _float(path, line, row[label_column], label_column)
        names, kind, metrics = (), "regression", ("pearson", "spearman")
    else:
        found = list(dict.fromkeys(str(v) for v in labels))
        if len(found) < 2:
            raise UserError(f"{train_file}: every training row has the label {found[0]!r} (classification needs "
                            "two labels or more)")
        names = tuple(sorted(found, key=int) if all(_is_int(v) for v in found) else sorted(found))
        for line, row in val:
            if str(row[label_column]) not in names:
                raise UserError(f"{validation_file}, line {line}: label {row[label_column]!r} is not among the "
                                f"training file's ({', '.join(names)})")
        kind, metrics = "classification", ("accuracy", "f1")
    task = Task(name or task_name(train_file), "files", kind, 1 if kind == "regression" else len(names), names,
                metrics, files=(os.path.abspath(train_file), os.path.abspath(validation_file)),
                text_fields=tuple(cols), label_column=label_column)
    if verbose:
        how = "inferred from the labels; --task_type to choose" if inferred else "--task_type"
        print(f"task {task.name}: {kind} ({how}), "
              + (f"{len(names)} labels: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}; "
                 if names else "")
              + f"{len(train)} training / {len(val)} validation rows, text {' + '.join(cols)}")
    TASKS[task.name] = task
    return task


def load(task, split):
    """The normalized rows of one split of a files task: idx, label (class index or float), text_a[, text_b]."""
    path = task.files[0 if split == "train" else 1]
    out = []
    for i, (line, row) in enumerate(read_table(path)):
        label = row[task.label_column]
        label = (_float(path, line, label, task.label_column) if task.kind == "regression"
                 else task.label_names.index(str(label)))
        r = {"idx": i, "label": label, "text_a": row[task.text_fields[0]]}
        if len(task.text_fields) > 1:
            r["text_b"] = row[task.text_fields[1]]
        out.append(r)
    return out


def spec(task):
    """What rebuilds a files task in another process (saved with its results and models)."""
    return {"name": task.name, "train_file": task.files[0], "validation_file": task.files[1],
            "text_columns": list(task.text_fields), "label_column": task.label_column, "task_type": task.kind}


# ------------------------------------------------------------------ --dataset NAME[:CONFIG] through `datasets`
VALIDATION_SPLITS = ("validation", "validation_matched", "dev", "test")   # the first one present is validation


def _dataset_rows(split, label_column, where):
    """(rows of plain values, rows dropped): a ClassLabel column's integers become its names, and a row whose
    label is no class (-1: 'no gold label' in SNLI/MNLI) is dropped."""
    feature = split.features.get(label_column) if label_column else None
    names = getattr(feature, "names", None)
    rows, dropped = [], 0
    for row in split:
        out = {k: v for k, v in row.items() if v is None or isinstance(v, (str, int, float, bool))}
        if names is not None and label_column in out:
            v = out[label_column]
            if not isinstance(v, int) or not 0 <= v < len(names):
                dropped += 1
                continue
            out[label_column] = names[v]
        rows.append(out)
    if not rows:
        raise UserError(f"{where}: no rows")
    return rows, dropped


def dataset_files(spec, out_dir, label_column="label"):
    """(training file, validation file) of `--dataset NAME[:CONFIG]`, loaded with `datasets.load_dataset` (a hub
    id, or a local folder of data files) and written as jsonl under out_dir/datasets/<name>-<content hash>/ with a
    source.json beside them. The validation split is the first of VALIDATION_SPLITS the dataset has. Written once:
    the same content finds its files again; a changed dataset gets a new folder (nothing is overwritten)."""
    name, _, cfg = spec.partition(":")
    if not name:
        raise UserError(f"--dataset {spec!r}: give NAME or NAME:CONFIG")
    try:
        import datasets
    except ImportError:
        raise UserError("--dataset needs the `datasets` package (pip install datasets), or give your files with "
                        "--train_file/--validation_file") from None
    try:
        ds = datasets.load_dataset(name, cfg or None)
    except Exception as e:   # the hub unreachable, no such dataset or config: datasets' own message, one line
        msg = " ".join(str(e).split())[:300]
        raise UserError(f"--dataset {spec}: could not load it with datasets ({type(e).__name__}: {msg}); "
                        "give your files with --train_file/--validation_file instead") from None
    splits = list(ds)
    val = next((s for s in VALIDATION_SPLITS if s in ds), None)
    if "train" not in ds or val is None:
        raise UserError(f"--dataset {spec}: it needs a train split and one of {', '.join(VALIDATION_SPLITS)} "
                        f"(it has: {', '.join(splits)})")
    data, info = {}, {"dataset": name, "config": cfg or None, "datasets_version": datasets.__version__,
                      "splits": {}}
    for split, as_ in (("train", "train"), (val, "validation")):
        rows, dropped = _dataset_rows(ds[split], label_column, f"--dataset {spec} split {split}")
        data[as_] = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
        info["splits"][as_] = {"split": split, "rows": len(rows), "dropped_without_label": dropped}
    digest = hashlib.sha256(data["train"] + b"\0" + data["validation"]).hexdigest()[:12]
    folder = os.path.join(out_dir, "datasets", f"{_dataset_slug(spec)}-{digest}")
    paths = tuple(os.path.join(folder, f"{s}.jsonl") for s in ("train", "validation"))
    if not all(os.path.isfile(p) for p in paths):
        for p, s in zip(paths, ("train", "validation")):
            atomic_write_bytes(p, data[s])
        atomic_write_json(os.path.join(folder, "source.json"), info)
    tr, va = info["splits"]["train"], info["splits"]["validation"]
    print(f"--dataset {spec}: train {tr['rows']} rows, validation = split {va['split']!r} {va['rows']} rows"
          + (f" ({tr['dropped_without_label'] + va['dropped_without_label']} without a label dropped)"
             if tr["dropped_without_label"] + va["dropped_without_label"] else "") + f" -> {folder}")
    return paths


def _dataset_slug(spec):
    name, _, cfg = spec.partition(":")
    base = os.path.basename(os.path.normpath(name)) + (f"_{cfg}" if cfg else "")
    return re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_") or "dataset"


def dataset_task_name(spec):
    """A task name from --dataset NAME[:CONFIG]: its last path part and config (`org/nli:plain` -> nli_plain)."""
    base = _dataset_slug(spec)
    return base if base not in TASKS or TASKS[base].benchmark == "files" else f"{base}_files"
