import json
import math
import os
import random

import pytest

from modcomp.augment import (STOPWORDS, WordNeighbours, _split_word, augment_examples, augment_text,
                     neighbours_for)
from modcomp.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "fixtures", "data")  # real rows, see tests/fixtures/README.md

LONG = ("The old captain walked slowly across the wooden deck, watching the dark clouds gather over "
        "the quiet harbour while young sailors repaired torn sails and cheerful children played "
        "near the busy market, selling fresh bread, ripe apples and beautiful flowers to tired travellers.")


@pytest.fixture(scope="module")
def nb():
    return neighbours_for("minilm", k=10)


def _read_jsonl(path, n):
    if not os.path.exists(path):
        pytest.skip(f"missing {path}")
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


# --- neighbours in the teacher's input-embedding space ---------------------------------------------

def test_embedding_neighbours_plausible(nb):
    for w in ["good", "house", "king", "happy"]:
        out = nb.neighbours(w)
        assert len(out) == 10
        assert w not in out
        assert all(x.isalpha() and len(x) >= 2 and not x.startswith("##") for x in out)
    assert "excellent" in nb.neighbours("good") or "great" in nb.neighbours("good")
    assert "queen" in nb.neighbours("king")
    assert nb.neighbours("Good") == nb.neighbours("good")          # case-insensitive lookup
    assert nb.neighbours("xqzzvwk") == [] and nb.neighbours("##ing") == []
    assert nb.neighbours("good") is nb.neighbours("good")          # cached
    assert not any(w.startswith("[") or w.startswith("##") for w in nb.words)


# --- augment_text -----------------------------------------------------------------------------------

def test_split_word():
    assert _split_word("*Table,") == ("*", "Table", ",")
    assert _split_word("(hello)!") == ("(", "hello", ")!")
    assert _split_word("--") == ("--", "", "")
    assert _split_word("don't") == ("", "don't", "")


def test_augment_text_seeded_and_p0(nb):
    a = augment_text(LONG, nb, random.Random(1), p=0.3)
    assert a == augment_text(LONG, nb, random.Random(1), p=0.3)
    assert a != augment_text(LONG, nb, random.Random(2), p=0.3)
    assert a != LONG
    assert augment_text(LONG, nb, random.Random(1), p=0.0) == LONG
    with pytest.raises(UserError):
        augment_text(LONG, nb, random.Random(1), p=1.5)


def test_augment_text_p1_changes_every_eligible_word(nb):
    text = "The *Table, was GOOD and the House is Beautiful. Old KING (happy)! don't 42"
    out = augment_text(text, nb, random.Random(0), p=1.0)
    src, dst = text.split(), out.split()
    assert len(src) == len(dst)
    for s, d in zip(src, dst):
        ls, cs, ts = _split_word(s)
        ld, cd, td = _split_word(d)
        assert (ls, ts) == (ld, td)                                  # punctuation kept
        eligible = cs.isalpha() and cs.lower() not in STOPWORDS and nb.neighbours(cs.lower())
        if not eligible:
            assert s == d
            continue
        assert cd.lower() != cs.lower() and cd.lower() in nb.neighbours(cs.lower())
        if cs.isupper() and len(cs) > 1:
            assert cd.isupper()
        elif cs[0].isupper():
            assert cd[0].isupper() and cd[1:].islower()
        else:
            assert cd.islower()
    assert dst[1].startswith("*") and dst[1].endswith(",") and dst[1][1].isupper()
    assert dst[0] == "The" and dst[2] == "was" and dst[-2:] == ["don't", "42"]


def test_augment_text_preserves_whitespace_and_keep(nb):
    text = "  good   house\tking \n"
    out = augment_text(text, nb, random.Random(0), p=1.0, keep={1})
    assert out.startswith("  ") and "\t" in out and out.endswith(" \n")
    assert out.split()[1] == "house" and out.split()[0] != "good"


# --- augment_examples -------------------------------------------------------------------------------

def test_augment_examples_rte(nb):
    rows = _read_jsonl(os.path.join(DATA, "rte", "train.jsonl"), 8)
    before = json.loads(json.dumps(rows))
    out = augment_examples(rows, 2, nb, seed=0, p=0.3)
    assert rows == before                                           # input not mutated
    assert len(out) == 3 * len(rows)
    for i, r in enumerate(rows):
        assert {k: v for k, v in out[i].items() if k != "aug_copy"} == r and out[i]["aug_copy"] == 0
    for c in (1, 2):
        for i, r in enumerate(rows):
            o = out[c * len(rows) + i]
            assert o["aug_copy"] == c and o["label"] == r["label"] and o["idx"] == r["idx"]
            for k in ("premise", "hypothesis"):
                assert len(o[k].split()) == len(r[k].split())
    assert any(o["premise"] != r["premise"] or o["hypothesis"] != r["hypothesis"]
               for o, r in zip(out[len(rows):], rows * 2))
    assert out == augment_examples(rows, 2, nb, seed=0, p=0.3)       # deterministic
    assert out != augment_examples(rows, 2, nb, seed=1, p=0.3)
    assert augment_examples(rows, 0, nb, seed=0) == out[:len(rows)]
    with pytest.raises(UserError):
        augment_examples(rows, -1, nb, seed=0)


def test_augment_examples_wsc_spans_kept(nb):
    raw = _read_jsonl(os.path.join(DATA, "wsc", "train.jsonl"), 20)
    rows = [{"text": r["text"], "span1_index": r["target"]["span1_index"],
             "span1_text": r["target"]["span1_text"], "span2_index": r["target"]["span2_index"],
             "span2_text": r["target"]["span2_text"], "label": r["label"], "idx": r["idx"]} for r in raw]
    out = augment_examples(rows, 1, nb, seed=0, p=1.0)
    changed = 0
    for r, o in zip(rows, out[len(rows):]):
        assert o["label"] == r["label"] and o["span1_text"] == r["span1_text"]
        src, dst = r["text"].split(), o["text"].split()
        assert len(src) == len(dst)
        for s in ("1", "2"):
            i, n = r[f"span{s}_index"], len(r[f"span{s}_text"].split())
            assert dst[i:i + n] == src[i:i + n]
        changed += o["text"] != r["text"]
    assert changed > len(rows) // 2


def test_augment_examples_wic_unchanged(nb):
    rows = [{"word": "bank", "sentence1": "He sat on the river bank watching boats.",
             "sentence2": "She deposited money at the bank yesterday.", "start1": 20, "end1": 24,
             "start2": 27, "end2": 31, "label": False, "idx": 0}]
    out = augment_examples(rows, 3, nb, seed=0, p=1.0)
    assert len(out) == 4
    for c, o in enumerate(out):
        assert {k: v for k, v in o.items() if k != "aug_copy"} == rows[0] and o["aug_copy"] == c


def test_augment_examples_text_keys(nb):
    rows = [{"premise": "The good house.", "choice1": "A happy king.", "question": "cause", "label": 0}]
    out = augment_examples(rows, 1, nb, seed=0, p=1.0, text_keys=["choice1"])
    assert out[1]["premise"] == rows[0]["premise"] and out[1]["choice1"] != rows[0]["choice1"]
    out = augment_examples(rows, 1, nb, seed=0, p=1.0)
    assert out[1]["premise"] != rows[0]["premise"] and out[1]["question"] == "cause"


# --- GloVe ------------------------------------------------------------------------------------------

GLOVE = {"cat": (1.0, 0.0, 0.0), "dog": (0.9, 0.1, 0.0), "lion": (0.7, 0.7, 0.0),
         "fish": (0.4, 0.0, 0.6), "car": (0.0, 0.0, 1.0)}


def _write_glove(path, header=False, extra=()):
    lines = (["5 3"] if header else []) + [f"{w} " + " ".join(map(str, v)) for w, v in GLOVE.items()]
    path.write_text("\n".join(lines + list(extra)) + "\n")
    return str(path)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_glove_neighbours_exact(tmp_path):
    # cos(cat, .) = dog 0.994, lion 0.707, fish 0.555, car 0
    expected = sorted((w for w in GLOVE if w != "cat"), key=lambda w: -_cos(GLOVE["cat"], GLOVE[w]))
    assert expected == ["dog", "lion", "fish", "car"]
    nb = WordNeighbours.from_glove(_write_glove(tmp_path / "glove.txt", extra=[", 1 1 1", "3d 0 1 0"]))
    assert nb.neighbours("cat") == expected
    # cos(lion, .) = dog 0.781, cat 0.707, fish 0.392, car 0
    assert nb.neighbours("lion") == ["dog", "cat", "fish", "car"]
    assert nb.neighbours("car")[0] == "fish"                        # the rest tie at cosine 0
    assert nb.neighbours("Cat") == expected and nb.neighbours("zebra") == []
    assert set(nb.words) == set(GLOVE)                              # non-alphabetic words dropped
    nb2 = WordNeighbours.from_glove(_write_glove(tmp_path / "g2.txt", header=True), k=2, max_words=3)
    assert nb2.words == ["cat", "dog", "lion"] and nb2.neighbours("cat") == ["dog", "lion"]


def test_glove_malformed(tmp_path):
    p = tmp_path / "glove.txt"
    p.write_text("cat 1 0 0\ndog 0.9 0.1 0\nbird 1 x 0\n")
    with pytest.raises(UserError, match=r"glove\.txt:3"):
        WordNeighbours.from_glove(str(p))
    p.write_text("cat 1 0 0\ndog 0.9 0.1\n")
    with pytest.raises(UserError, match=r"glove\.txt:2"):
        WordNeighbours.from_glove(str(p))
    with pytest.raises(UserError):
        WordNeighbours.from_glove(str(tmp_path / "missing.txt"))


def test_neighbours_for_glove(tmp_path):
    nb = neighbours_for("minilm", glove=_write_glove(tmp_path / "glove.txt"), k=1)
    assert nb.neighbours("cat") == ["dog"]
