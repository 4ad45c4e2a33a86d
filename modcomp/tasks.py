"""The eight tasks (declared in task_registry.py): loading, normalizing, formatting, encoding, batching and scoring.

Every stage goes through this module, so all of them see the same rows, the same text
pairs and the same metrics. Row format (whatever the source, jsonl/tsv files or the hub):
a dict with `idx` (int), `label` (int class index in the hub's order, float for stsb)
and the task's text fields, see FIELDS.
"""
import csv
import hashlib
import json
import numbers
import os
import sys
from functools import partial

import numpy as np
import torch

# the declarations (torch-free, read by config.py, the workflow and consolidate.py too): task_registry.py
from modcomp.task_registry import (_BOOL, EXPECTED_ROWS, FIELDS, HUB, INT_FIELDS, TASK_NAMES, TASKS,  # noqa: F401
                                   TSV_COLUMNS, Task)
from modcomp import user_data
from modcomp.utils import UserError, file_sha256

TASK_NAMES = list(TASK_NAMES)
REPO_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
SPLITS = ("train", "validation")


def task_from_args(args):
    """The task a stage's flags name: --task NAME of the eight, or your files (--train_file, --validation_file,
    --text_columns, --label_column, --task_type; --task then names it), checked and registered (user_data.py)."""
    if getattr(args, "dataset", None):   # through `datasets`: written once as files, then a files task
        if args.train_file or args.validation_file:
            raise UserError("--dataset or --train_file/--validation_file, not both")
        out = getattr(args, "output_dir", None) or "."
        args.train_file, args.validation_file = user_data.dataset_files(args.dataset, out, args.label_column)
        args.task = args.task or user_data.dataset_task_name(args.dataset)
    if getattr(args, "train_file", None) or getattr(args, "validation_file", None):
        if not (args.train_file and args.validation_file and args.text_columns):
            raise UserError("your own task needs --train_file, --validation_file and --text_columns")
        return user_data.make_task(args.train_file, args.validation_file, args.text_columns, args.label_column,
                                   args.task_type, args.task)
    if not args.task:
        raise UserError(f"--task: one of {', '.join(TASK_NAMES)}, or your files (--train_file ...)")
    return get_task(args.task)


def add_task_arguments(p, required=True):
    """--task and the flags of your own files, for a stage's parser."""
    p.add_argument("--task", default=None, help=f"{' '.join(TASK_NAMES)}; with --train_file: your task's name "
                                                "(default: from the file's name)")
    g = p.add_argument_group("your own task (instead of one of the eight; user_data.py)")
    g.add_argument("--train_file", default=None, help="csv, tsv, json or jsonl")
    g.add_argument("--validation_file", default=None)
    g.add_argument("--dataset", default=None, metavar="NAME[:CONFIG]",
                   help="instead of the two files: a dataset through `datasets` (a hub id or a local folder), its "
                        "train and validation splits written once as jsonl under OUTPUT_DIR/datasets/")
    g.add_argument("--text_columns", default=None, metavar="A[,B]", help="one text column, or two (a pair)")
    g.add_argument("--label_column", default="label")
    g.add_argument("--task_type", default=None, choices=user_data.TASK_TYPES,
                   help="default: regression when every label is a number and some is not an integer")


def get_task(name) -> Task:
    """The Task for a name (a Task passes through unchanged)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return TASKS[name]


# -----------------------------------------------------------------------------
# loading

def split_path(task, split, data_dir) -> str:
    """Where a split lives under a data dir: <task>/{train,val}.jsonl or <task>/{train,dev}.tsv."""
    task = get_task(task)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if task.benchmark == "glue":
        return os.path.join(data_dir, task.name, "train.tsv" if split == "train" else "dev.tsv")
    return os.path.join(data_dir, task.name, "train.jsonl" if split == "train" else "val.jsonl")


def default_data_dir(task) -> str | None:
    """REPO_DATA_DIR if the repo ships both splits of this task, else None (= the hub)."""
    ok = all(os.path.isfile(split_path(task, s, REPO_DATA_DIR)) for s in SPLITS)
    return REPO_DATA_DIR if ok else None


def load_rows(task, split, data_dir=None, check_count=True) -> list[dict]:
    """Normalized rows of one split, from data_dir, else the repo's data/, else the hub.
    check_count: warn (stderr) when the number of rows is not the official split size (a user's own split
    is used as it is; malformed rows are still refused)."""
    task = get_task(task)
    if task.benchmark == "files":   # your own files (user_data.py): read and checked there
        return user_data.load(task, split)
    data_dir = data_dir or default_data_dir(task)
    if data_dir is None:
        rows, where = load_hub_rows(task, split), f"hub {'/'.join(HUB[task.name])} {split}"
    else:
        where = split_path(task, split, data_dir)
        rows = read_tsv(task, where) if task.benchmark == "glue" else read_jsonl(task, where)
    if not rows:
        raise UserError(f"{where}: no rows (an empty {split} split)")
    expected = EXPECTED_ROWS[task.name][SPLITS.index(split)]
    if check_count and len(rows) != expected:
        print(f"warning: {where}: expected {expected} rows for {task.name} {split} (the official size), "
              f"found {len(rows)}; using them", file=sys.stderr)
    return rows


def data_fingerprint(task, split, data_dir, rows) -> dict:
    """What identifies the rows a run read from a split (a finished run is reused only with the same): the
    sha256 of the file, or for the hub, whose revision is not pinned, the dataset id and the sha256 of its
    normalized `rows`."""
    task = get_task(task)
    if task.benchmark == "files":
        path = task.files[SPLITS.index(split)]
        return {"file": os.path.basename(path), "sha256": file_sha256(path)}
    if data_dir:
        path = split_path(task, split, data_dir)
        return {"file": os.path.basename(path), "sha256": file_sha256(path)}
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()
    return {"hub": "/".join(HUB[task.name]), "rows_sha256": hashlib.sha256(text).hexdigest()}


def _open(path):
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found (expected the {os.path.basename(path)} "
                        f"split file of task '{os.path.basename(os.path.dirname(path))}')")
    return open(path, encoding="utf-8-sig", newline="")


def read_jsonl(task, path) -> list[dict]:
    """SuperGLUE jsonl, one object a line; labels as strings/booleans; WSC spans under `target`."""
    task = get_task(task)
    rows = []
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(raw, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object")
            if task.name == "wsc" and isinstance(raw.get("target"), dict):
                raw = {**raw, **raw["target"]}
            rows.append(normalize_row(task, raw, f"{path}:{lineno}"))
    return rows


def read_tsv(task, path) -> list[dict]:
    """GLUE tsv with a header line (utf-8-sig: MRPC has a BOM; QUOTE_NONE: bare quotes)."""
    task = get_task(task)
    with _open(path) as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
        raise UserError(f"{path}: empty file, expected a header line")
    header, cols = lines[0], {}
    for field, name in TSV_COLUMNS[task.name].items():
        if name not in header:
            raise UserError(f"{path}:1: column {name!r} missing from the header")
        cols[field] = header.index(name)
    rows = []
    for lineno, values in enumerate(lines[1:], 2):
        if len(values) != len(header):
            raise UserError(f"{path}:{lineno}: expected {len(header)} columns, got {len(values)}")
        raw = {field: values[i] for field, i in cols.items()}
        raw["idx"] = len(rows)
        label = raw["label"]
        try:
            raw["label"] = float(label) if task.kind == "regression" else int(label)
        except ValueError:
            raise UserError(f"{path}:{lineno}: field 'label' (column {TSV_COLUMNS[task.name]['label']!r})"
                            f" is not a number: {label!r}") from None
        rows.append(normalize_row(task, raw, f"{path}:{lineno}"))
    return rows


def load_hub_rows(task, split) -> list[dict]:
    task = get_task(task)
    try:
        import datasets
        ds = datasets.load_dataset(*HUB[task.name], split=split)
    except Exception as e:
        raise UserError(f"could not load {task.name} from the Hugging Face hub "
                        f"({type(e).__name__}); pass --data_dir with {task.name}/ split files") from None
    return rows_from_hub(task, ds)


def rows_from_hub(task, dataset) -> list[dict]:
    """Normalized rows from any iterable of dicts in the hub schema (integer labels, flat WSC)."""
    task = get_task(task)
    return [normalize_row(task, dict(raw), f"hub {task.name} row {i}") for i, raw in enumerate(dataset)]


def _label(task, v, where):
    if task.kind == "regression":
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= float(v) <= 5.0:
            raise UserError(f"{where}: field 'label' must be a number in [0, 5], got {v!r}")
        return float(v)
    if isinstance(v, bool) and task.label_names == _BOOL:
        return int(v)
    if isinstance(v, str) and v in task.label_names:
        return task.label_names.index(v)
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v < len(task.label_names):
        return int(v)
    raise UserError(f"{where}: field 'label' has unknown value {v!r} "
                    f"(expected one of {', '.join(task.label_names)} or their index)")


def normalize_row(task, raw, where) -> dict:
    """One source dict -> the row format; checks types, labels, offsets and span indices."""
    task = get_task(task)
    row = {}
    for field in ("idx",) + FIELDS[task.name] + ("label",):
        if field not in raw:
            raise UserError(f"{where}: field {field!r} missing")
        v = raw[field]
        if field == "label":
            row[field] = _label(task, v, where)
        elif field == "idx" or field in INT_FIELDS:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise UserError(f"{where}: field {field!r} must be an integer, got {v!r}")
            row[field] = int(v)
        else:
            if not isinstance(v, str):
                raise UserError(f"{where}: field {field!r} must be a string, got {v!r}")
            row[field] = v
    if task.name == "copa" and row["question"] not in ("cause", "effect"):
        raise UserError(f"{where}: field 'question' must be 'cause' or 'effect', got {row['question']!r}")
    if task.name == "wic":
        for k in ("1", "2"):
            s, e, n = row["start" + k], row["end" + k], len(row["sentence" + k])
            if not 0 <= s < e <= n:
                raise UserError(f"{where}: field 'start{k}'/'end{k}' ({s}, {e}) outside sentence{k} (length {n})")
    if task.name == "wsc":
        n = len(row["text"].split())
        for k in ("1", "2"):
            i, m = row[f"span{k}_index"], len(row[f"span{k}_text"].split())
            if m == 0 or not 0 <= i <= n - m:
                raise UserError(f"{where}: field 'span{k}_index' {i} (+{m} words) outside text ({n} words)")
    return row


# -----------------------------------------------------------------------------
# formatting and encoding

def mark_wsc(row) -> str:
    """text with span1's words wrapped in *...* and span2's in #...#, located by word index.
    The index is trusted over span_text (which may differ in case, or at all, in a few rows)."""
    words = row["text"].split()
    s1, s2 = row["span1_index"], row["span2_index"]
    e1 = s1 + len(row["span1_text"].split()) - 1
    e2 = s2 + len(row["span2_text"].split()) - 1
    out = []
    for i, w in enumerate(words):
        pre = ("*" if i == s1 else "") + ("#" if i == s2 else "")
        post = ("#" if i == e2 else "") + ("*" if i == e1 else "")
        out.append(pre + w + post)
    return " ".join(out)


def mark_wic(sentence, start, end) -> str:
    return sentence[:start] + "*" + sentence[start:end] + "*" + sentence[end:]


def format_example(task, row):
    """(text_a, text_b or None); for multiple choice a list with one pair per choice."""
    task = get_task(task)
    name = task.name
    if task.benchmark == "files":
        return (row["text_a"], row.get("text_b"))
    if name == "copa":
        premise = row["premise"].strip()
        premise = premise[:-1] if premise.endswith(".") else premise
        text_a = premise + (" because" if row["question"] == "cause" else " so")
        return [(text_a, row["choice1"]), (text_a, row["choice2"])]
    if name == "wsc":
        return (mark_wsc(row), None)
    if name == "wic":
        return (mark_wic(row["sentence1"], row["start1"], row["end1"]),
                mark_wic(row["sentence2"], row["start2"], row["end2"]))
    a, b = FIELDS[name][:2]  # boolq: question/passage, cb/rte: premise/hypothesis, stsb/mrpc
    return (row[a], row[b])


def min_max_length(tokenizer, pair=True) -> int:
    """The shortest max_length that keeps a token of each text besides the special tokens: below it the
    tokenizer drops the first text of a pair, or (below the special tokens alone) silently stops truncating."""
    return tokenizer.num_special_tokens_to_add(pair=pair) + (2 if pair else 1)


def encode(task, rows, tokenizer, max_length) -> dict:
    """Tokenize rows without padding. For copa every feature is a list of num_choices encodings."""
    task = get_task(task)
    pairs = [format_example(task, r) for r in rows]
    c = task.num_choices
    if c:
        pairs = [p for choices in pairs for p in choices]
    text_a = [a for a, _ in pairs]
    text_b = [b for _, b in pairs]
    text_b = None if all(b is None for b in text_b) else text_b
    shortest = min_max_length(tokenizer, pair=text_b is not None)
    if max_length is not None and max_length < shortest:
        raise UserError(f"max_length {max_length} is too short for {task.name}: at least {shortest} keeps a token of "
                        f"each text besides the {shortest - (1 if text_b is None else 2)} special tokens")
    enc = tokenizer(text_a, text_b, truncation=True, max_length=max_length) if pairs else {}
    out = {}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key in enc:
            vals = [list(v) for v in enc[key]]
            out[key] = [vals[i:i + c] for i in range(0, len(vals), c)] if c else vals
    out["labels"] = [r["label"] for r in rows]
    return out


class TaskDataset(torch.utils.data.Dataset):
    """Features of an encode() result, one dict per example."""

    def __init__(self, encoded):
        self.encoded = encoded
        self.keys = [k for k in encoded if k != "labels"] + ["labels"]

    def __len__(self):
        return len(self.encoded["labels"])

    def __getitem__(self, i):
        return {k: self.encoded[k][i] for k in self.keys}


def _pad(seqs, length, value):
    return [s + [value] * (length - len(s)) for s in seqs]


def collate(features_batch, pad_token_id) -> dict:
    """Pad to the longest sequence in the batch: (B, T), or (B, C, T) for multiple choice."""
    batch = {}
    for key in features_batch[0]:
        if key == "labels":
            continue
        if key == "example_index":  # position in the training set (distillation's cached teacher logits)
            batch[key] = torch.tensor([f[key] for f in features_batch], dtype=torch.long)
            continue
        value = pad_token_id if key == "input_ids" else 0
        seqs = [f[key] for f in features_batch]
        if seqs and isinstance(seqs[0][0], list):  # multiple choice
            t = max(len(s) for choices in seqs for s in choices)
            batch[key] = torch.tensor([_pad(choices, t, value) for choices in seqs], dtype=torch.long)
        else:
            t = max(len(s) for s in seqs)
            batch[key] = torch.tensor(_pad(seqs, t, value), dtype=torch.long)
    labels = [f["labels"] for f in features_batch]
    dtype = torch.float if isinstance(labels[0], float) else torch.long
    batch["labels"] = torch.tensor(labels, dtype=dtype)
    return batch


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Shuffled batches of similar length (less padding): each epoch, a seeded permutation is cut into
    chunks of `group` batches, each chunk sorted by length and cut into batches, and the batches shuffled."""

    def __init__(self, lengths, batch_size, seed, group=50):
        self.lengths, self.batch_size, self.group = torch.as_tensor(lengths), batch_size, group
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        perm = torch.randperm(len(self.lengths), generator=self.gen)
        batches = []
        for chunk in perm.split(self.batch_size * self.group):
            chunk = chunk[self.lengths[chunk].argsort(descending=True, stable=True)]
            batches += [b.tolist() for b in chunk.split(self.batch_size)]
        yield from (batches[i] for i in torch.randperm(len(batches), generator=self.gen).tolist())


def _length(ids):
    return max(len(s) for s in ids) if ids and isinstance(ids[0], list) else len(ids)


def make_loader(encoded, batch_size, shuffle, pad_token_id, seed=0, group_by_length=False):
    """A DataLoader over an encode() result; shuffling is seeded with its own generator.
    group_by_length (with shuffle): batches of similar length, see LengthGroupedBatches."""
    collate_fn = partial(collate, pad_token_id=pad_token_id)
    if shuffle and group_by_length:
        sampler = LengthGroupedBatches([_length(x) for x in encoded["input_ids"]], batch_size, seed)
        return torch.utils.data.DataLoader(TaskDataset(encoded), batch_sampler=sampler, collate_fn=collate_fn)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(TaskDataset(encoded), batch_size=batch_size, shuffle=shuffle,
                                       generator=gen, collate_fn=collate_fn)


# -----------------------------------------------------------------------------
# metrics

def compute_metrics(task, predictions, labels) -> dict:
    """Metrics as python floats. predictions: logits (B, num_labels) or (B, C); (B,) or (B, 1)
    for stsb. For the other tasks a 1-d array is taken as predicted class indices.
    stsb correlations are NaN when predictions (or labels) are constant; cb's macro-F1 averages over the
    labels that occur in the gold labels or the predictions (a subset may lack a class)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score
    task = get_task(task)
    if isinstance(predictions, torch.Tensor):
        predictions = predictions.detach().float().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    preds, labels = np.asarray(predictions), np.asarray(labels)
    if task.kind == "regression":
        preds, labels = preds.reshape(-1).astype(float), labels.reshape(-1).astype(float)
        return {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}
    if preds.ndim > 1:
        preds = preds.argmax(-1)
    preds, labels = preds.reshape(-1).astype(int), labels.reshape(-1).astype(int)
    if len(preds) != len(labels):
        raise UserError(f"{task.name}: {len(preds)} predictions for {len(labels)} labels")
    out = {"accuracy": float(accuracy_score(labels, preds))}
    if task.name == "cb":
        out["f1"] = float(f1_score(labels, preds, labels=np.union1d(labels, preds), average="macro",
                                   zero_division=0))
    if task.name == "mrpc":
        out["f1"] = float(f1_score(labels, preds, average="binary", pos_label=1, zero_division=0))
    if task.benchmark == "files":   # your own classification task: macro-F1 in the score, Matthews beside it
        from sklearn.metrics import matthews_corrcoef
        every = np.arange(task.num_labels)
        out["f1"] = float(f1_score(labels, preds, labels=every, average="macro", zero_division=0))
        out["matthews"] = float(matthews_corrcoef(labels, preds))
    return out


def task_score(task, metrics) -> float:
    """The paper's table number: 100 x the mean of the task's metrics (NaN if one of them is NaN)."""
    task = get_task(task)
    missing = [m for m in task.metrics if m not in metrics]
    if missing:
        raise UserError(f"{task.name}: metric(s) {', '.join(missing)} missing from {sorted(metrics)}")
    return 100.0 * sum(float(metrics[m]) for m in task.metrics) / len(task.metrics)
