"""The tasks, declared once: names, kinds, labels, metrics, text fields, file formats and official sizes.

Standard library only, so that the torch-free layers (config.py, the workflow, consolidate.py) read the same
declarations as the stages; tasks.py (loading, encoding, batching, scoring: torch) builds on them.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    benchmark: str        # "super_glue" or "glue"
    kind: str             # "classification" | "regression" | "multiple_choice"
    num_labels: int       # 1 for stsb and copa (one score per choice), else number of classes
    label_names: tuple    # class names in the hub's integer order, () for stsb
    metrics: tuple
    num_choices: int = 0  # 2 for copa
    # a task of your own files (benchmark "files", user_data.py): its (train, validation) paths, text columns
    # (one or a pair) and label column
    files: tuple = ()
    text_fields: tuple = ()
    label_column: str = ""


_BOOL = ("False", "True")   # boolq, wic, wsc labels (tasks.py reads booleans with it)
TASKS = {t.name: t for t in [
    Task("boolq", "super_glue", "classification", 2, _BOOL, ("accuracy",)),
    Task("cb", "super_glue", "classification", 3, ("entailment", "contradiction", "neutral"), ("accuracy", "f1")),
    Task("copa", "super_glue", "multiple_choice", 1, ("choice1", "choice2"), ("accuracy",), num_choices=2),
    Task("rte", "super_glue", "classification", 2, ("entailment", "not_entailment"), ("accuracy",)),
    Task("wic", "super_glue", "classification", 2, _BOOL, ("accuracy",)),
    Task("wsc", "super_glue", "classification", 2, _BOOL, ("accuracy",)),
    Task("stsb", "glue", "regression", 1, (), ("pearson", "spearman")),
    Task("mrpc", "glue", "classification", 2, ("not_equivalent", "equivalent"), ("accuracy", "f1")),
]}
TASK_NAMES = tuple(TASKS)

# text fields of a normalized row (besides idx and label); the int ones are offsets/indices
FIELDS = {
    "boolq": ("question", "passage"),
    "cb": ("premise", "hypothesis"),
    "copa": ("premise", "choice1", "choice2", "question"),
    "rte": ("premise", "hypothesis"),
    "wic": ("word", "sentence1", "sentence2", "start1", "end1", "start2", "end2"),
    "wsc": ("text", "span1_index", "span1_text", "span2_index", "span2_text"),
    "stsb": ("sentence1", "sentence2"),
    "mrpc": ("sentence1", "sentence2"),
}
INT_FIELDS = {"start1", "end1", "start2", "end2", "span1_index", "span2_index"}

# official (train, validation) sizes; the shared data and the hub both have these
EXPECTED_ROWS = {
    "boolq": (9427, 3270), "cb": (250, 56), "copa": (400, 100), "rte": (2490, 277),
    "wic": (5428, 638), "wsc": (554, 104), "stsb": (5749, 1500), "mrpc": (3668, 408),
}
HUB = {"boolq": ("aps/super_glue", "boolq"), "cb": ("aps/super_glue", "cb"),
       "copa": ("aps/super_glue", "copa"), "rte": ("aps/super_glue", "rte"),
       "wic": ("aps/super_glue", "wic"), "wsc": ("aps/super_glue", "wsc.fixed"),
       "stsb": ("nyu-mll/glue", "stsb"), "mrpc": ("nyu-mll/glue", "mrpc")}
# GLUE tsv: row field -> tsv header column
TSV_COLUMNS = {
    "stsb": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
}
