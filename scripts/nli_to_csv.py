"""A three-class natural-language-inference file (premise, hypothesis, entailment/neutral/contradiction) as the
CSV a user would give the pipeline for a pair task: columns `premise,hypothesis,label`, the label as its name.

    python scripts/nli_to_csv.py SOURCE OUT.csv [--limit N --seed S]

SOURCE is a tab-separated file with a header row (no quoting, as GLUE, XTREME and Hugging Face exports write
them), a JSON-lines file, or a .tar.gz / .tgz holding exactly one such file. The text columns are found by
name: `premise`/`hypothesis` or `sentence1`/`sentence2`; the label column is `gold_label` or `label`. Labels
may be names (entailment, neutral, contradiction), the integers 0/1/2 of the Hugging Face `xnli`, `snli`,
`multi_nli` and `anli` sets (0 entailment, 1 neutral, 2 contradiction) or ANLI's e/n/c. Rows with no gold
label ('-', '', -1: the annotators did not agree) are dropped and counted; any other label is an error.
--limit N keeps N rows drawn at random with --seed (in source order); without it every row is written.

The copy used for runs/nli (XNLI English, test as training and dev as validation; see runs/nli/SOURCE.md):

    python scripts/nli_to_csv.py xnli_test_en.tar.gz runs/nli/train.csv
    python scripts/nli_to_csv.py xnli_validation_en.tar.gz runs/nli/validation.csv
"""
import argparse
import collections
import csv
import io
import json
import os
import random
import sys
import tarfile

LABELS = ("entailment", "neutral", "contradiction")
LABEL_ALIASES = {"0": "entailment", "1": "neutral", "2": "contradiction", "e": "entailment", "n": "neutral",
                 "c": "contradiction", **{name: name for name in LABELS}}
NO_GOLD = {"-", "", "-1"}
COLUMNS = {"premise": ("premise", "sentence1"), "hypothesis": ("hypothesis", "sentence2"),
           "label": ("gold_label", "label")}


def read_text(path):
    """(member name, text) of SOURCE, unpacking a one-file tar archive."""
    if path.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            if len(members) != 1:
                sys.exit(f"{path}: holds {len(members)} files, not one")
            return members[0].name, tar.extractfile(members[0]).read().decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return path, f.read()


def pick(keys, where):
    found = {}
    for field, names in COLUMNS.items():
        name = next((n for n in names if n in keys), None)
        if name is None:
            sys.exit(f"{where}: no {' or '.join(names)} column (has {', '.join(keys)})")
        found[field] = name
    return found


def records(name, text):
    """(premise, hypothesis, raw label) of every row."""
    if name.endswith((".jsonl", ".json")):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not rows:
            sys.exit(f"{name}: no rows")
        col = pick(list(rows[0]), name)
        return [(r[col["premise"]], r[col["hypothesis"]], str(r[col["label"]])) for r in rows]
    lines = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = lines[0], [row for row in lines[1:] if row]
    col = {field: header.index(n) for field, n in pick(header, name).items()}
    for i, row in enumerate(body, 2):
        if len(row) != len(header):
            sys.exit(f"{name}, line {i}: {len(row)} fields, the header has {len(header)}")
    return [(row[col["premise"]], row[col["hypothesis"]], row[col["label"]]) for row in body]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source")
    p.add_argument("csv_file")
    p.add_argument("--limit", type=int, default=None, help="keep this many rows, drawn with --seed")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    name, text = read_text(a.source)
    found = records(name, text)
    kept, dropped = [], 0
    for i, (premise, hypothesis, raw) in enumerate(found, 1):
        raw = raw.strip()
        if raw in NO_GOLD:
            dropped += 1
            continue
        if raw not in LABEL_ALIASES:
            sys.exit(f"{name}, row {i}: label {raw!r} is none of {', '.join(LABELS)}")
        if not premise.strip() or not hypothesis.strip():
            sys.exit(f"{name}, row {i}: an empty premise or hypothesis")
        kept.append((premise.strip(), hypothesis.strip(), LABEL_ALIASES[raw]))
    if a.limit is not None and a.limit < len(kept):
        chosen = sorted(random.Random(a.seed).sample(range(len(kept)), a.limit))
        kept = [kept[i] for i in chosen]
    os.makedirs(os.path.dirname(os.path.abspath(a.csv_file)), exist_ok=True)
    tmp = a.csv_file + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["premise", "hypothesis", "label"])
        w.writerows(kept)
    os.replace(tmp, a.csv_file)
    counts = collections.Counter(label for _, _, label in kept)
    print(f"{a.csv_file}: {len(found)} rows in {name}, {dropped} without a gold label dropped, {len(kept)} written"
          + (f" (--limit {a.limit} --seed {a.seed})" if a.limit is not None else ""))
    print("  " + ", ".join(f"{label} {counts[label]}" for label in LABELS))


if __name__ == "__main__":
    main()
