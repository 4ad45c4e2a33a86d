"""consolidate.py on hand-made results.json files: medians, selections, formats, missing cells, errors."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from modcomp import report as C  # noqa: E402
from modcomp.utils import UserError  # noqa: E402

METRICS = {"boolq": ["accuracy"], "cb": ["accuracy", "f1"], "copa": ["accuracy"], "rte": ["accuracy"],
           "wic": ["accuracy"], "wsc": ["accuracy"], "stsb": ["pearson", "spearman"],
           "mrpc": ["accuracy", "f1"]}


def write_result(root, task, seed, epochs, model="minilm", variant="modular", compression=2.0,
                 params=15_000_000, name=None):
    """Write one results.json; `epochs` is a list of metric tuples (in METRICS order), one per epoch."""
    eps = []
    for i, vals in enumerate(epochs, 1):
        vals = vals if isinstance(vals, (tuple, list)) else (vals,)
        ep = {"epoch": i, **dict(zip(METRICS[task], vals))}
        ep["score"] = 100 * sum(vals) / len(vals)
        eps.append(ep)
    best = max(range(len(eps)), key=lambda i: eps[i]["score"])
    obj = {"task": task, "model": model, "variant": variant, "compression": compression,
           "init": None if compression is None else "svd", "seed": seed, "params": params,
           "settings": {}, "epochs": eps, "best_epoch": best + 1,
           "best_score": eps[best]["score"], "last_score": eps[-1]["score"]}
    d = os.path.join(root, name or f"{model}_{variant}_{compression}_{task}_s{seed}")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "results.json")
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


def build(root, **kw):
    return C.build(C.load_results(str(root)), **kw)


def only_row(tables, which="best"):
    assert len(tables[which]) == 1
    return tables[which][0]


def test_median_over_three_seeds(tmp_path):
    for seed, acc in zip([1, 2, 3], [0.60, 0.70, 0.65]):
        write_result(tmp_path, "rte", seed, [acc])
    tasks, tables, missing = build(tmp_path)
    row = only_row(tables)
    assert tasks == ["rte"] and missing == [] and row["n_seeds"] == 3
    assert row["tasks"]["rte"]["metrics"]["accuracy"] == pytest.approx(0.65)
    assert row["tasks"]["rte"]["score"] == pytest.approx(65.0)
    assert row["tasks"]["rte"]["seeds"] == [1, 2, 3]
    assert C.format_cell(row["tasks"]["rte"], "rte") == "65.0"


def test_median_over_four_seeds_is_mean_of_middle_two(tmp_path):
    for seed, acc in zip([1, 2, 3, 4], [0.50, 0.90, 0.60, 0.70]):
        write_result(tmp_path, "boolq", seed, [acc])
    _, tables, _ = build(tmp_path)
    cell = only_row(tables)["tasks"]["boolq"]
    assert cell["metrics"]["accuracy"] == pytest.approx(0.65)  # (0.60 + 0.70) / 2
    assert C.format_cell(cell, "boolq") == "65.0"


def test_best_and_last_selection_differ(tmp_path):
    # seed 1 peaks at epoch 2, seeds 2/3 keep improving
    write_result(tmp_path, "rte", 1, [0.60, 0.80, 0.70])
    write_result(tmp_path, "rte", 2, [0.50, 0.55, 0.62])
    write_result(tmp_path, "rte", 3, [0.40, 0.66, 0.64])
    _, tables, _ = build(tmp_path)
    best, last = only_row(tables, "best")["tasks"]["rte"], only_row(tables, "last")["tasks"]["rte"]
    assert best["metrics"]["accuracy"] == pytest.approx(0.66)  # median(0.80, 0.62, 0.66)
    assert last["metrics"]["accuracy"] == pytest.approx(0.64)  # median(0.70, 0.62, 0.64)
    assert C.format_cell(best, "rte") == "66.0" and C.format_cell(last, "rte") == "64.0"


def test_pair_cells_median_per_metric(tmp_path):
    # cb acc/F1: acc median 0.85, f1 median 0.80 (taken separately, from different seeds)
    for seed, (acc, f1) in zip([1, 2, 3], [(0.85, 0.70), (0.90, 0.80), (0.80, 0.90)]):
        write_result(tmp_path, "cb", seed, [(acc, f1)])
    for seed, (p, s) in zip([1, 2, 3], [(0.88, 0.87), (0.86, 0.89), (0.90, 0.85)]):
        write_result(tmp_path, "stsb", seed, [(p, s)])
    for seed, (acc, f1) in zip([1, 2, 3, 4], [(0.80, 0.86), (0.70, 0.80), (0.75, 0.84), (0.85, 0.90)]):
        write_result(tmp_path, "mrpc", seed, [(acc, f1)])
    _, tables, _ = build(tmp_path)
    row = only_row(tables)
    assert C.format_cell(row["tasks"]["cb"], "cb") == "85.0/80.0"
    assert C.format_cell(row["tasks"]["stsb"], "stsb") == "88.0/87.0"
    assert C.format_cell(row["tasks"]["mrpc"], "mrpc") == "77.5/85.0"
    # cb score median: scores 77.5, 85.0, 85.0 -> 85.0
    assert row["tasks"]["cb"]["score"] == pytest.approx(85.0)
    text = C.render(tables, [], ["cb", "stsb", "mrpc"], "grid")
    assert "85.0/80.0" in text and "88.0/87.0" in text and "77.5/85.0" in text


def test_average_score_by_hand_and_row_order(tmp_path):
    for seed in [1, 2, 3]:
        write_result(tmp_path, "rte", seed, [0.60 + 0.01 * seed])          # median 0.62
        write_result(tmp_path, "cb", seed, [(0.80, 0.70 + 0.02 * seed)])   # scores 76, 77, 78 -> 77
        write_result(tmp_path, "rte", seed, [0.70], variant="baseline", compression=None,
                     params=22_700_000)
        write_result(tmp_path, "cb", seed, [(0.90, 0.90)], variant="baseline", compression=None,
                     params=22_700_000)
    _, tables, missing = build(tmp_path)
    assert missing == []
    base, mod = tables["best"]
    assert (base["variant"], mod["variant"]) == ("baseline", "modular")
    assert mod["average"] == pytest.approx((62.0 + 77.0) / 2)
    assert base["average"] == pytest.approx((70.0 + 90.0) / 2)
    assert C.row_label(base) == "minilm (baseline)" and C.row_label(mod) == "minilm modular c=2"
    text = C.render(tables, missing, ["cb", "rte"], "grid")
    assert "22.7M" in text and "69.5" in text and "80.0" in text and "*" not in text


def test_missing_cells_named(tmp_path):
    for seed in [1, 2, 3]:
        write_result(tmp_path, "boolq", seed, [0.7])
    for seed in [1, 2]:
        write_result(tmp_path, "rte", seed, [0.6])
    write_result(tmp_path, "boolq", 1, [0.8], variant="baseline", compression=None)
    _, tables, missing = build(tmp_path, tasks=["boolq", "rte", "cb"])
    assert {"model": "minilm", "variant": "modular", "compression": 2.0, "task": "rte",
            "seeds": [3]} in missing
    lines = C.format_missing(missing)
    assert "missing: minilm/modular c=2: rte seed 3; cb seeds 1,2,3" in lines
    assert "missing: minilm/baseline: rte seed 1; cb seed 1" in lines
    mod = tables["best"][1]
    assert mod["tasks"]["cb"] is None and not mod["average_complete"]
    assert mod["average"] == pytest.approx((70.0 + 60.0) / 2)  # over present tasks only
    text = C.render(tables, missing, ["boolq", "rte", "cb"], "grid")
    assert "65.0*" in text and "missing: minilm/modular c=2: rte seed 3; cb seeds 1,2,3" in text


def test_explicit_seeds_flag_reports_absent_seeds(tmp_path):
    for seed in [1, 2]:
        write_result(tmp_path, "rte", seed, [0.6])
    write_result(tmp_path, "rte", 9, [0.1])  # outside --seeds: left out
    _, tables, missing = build(tmp_path, seeds=[1, 2, 3])
    row = only_row(tables)
    assert row["n_seeds"] == 3 and row["tasks"]["rte"]["seeds"] == [1, 2]
    assert missing == [{"model": "minilm", "variant": "modular", "compression": 2.0,
                        "task": "rte", "seeds": [3]}]


def test_duplicate_results_error_names_both_files(tmp_path):
    a = write_result(tmp_path, "rte", 1, [0.6], name="run_a")
    b = write_result(tmp_path, "rte", 1, [0.7], name="run_b")
    with pytest.raises(UserError) as e:
        build(tmp_path)
    assert a in str(e.value) and b in str(e.value) and "duplicate" in str(e.value)


def test_malformed_files_error_names_file_and_key(tmp_path):
    path = write_result(tmp_path, "rte", 1, [0.6])
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(UserError, match="results.json") as e:
        C.load_results(str(tmp_path))
    assert path in str(e.value)

    with open(path, "w") as f:
        json.dump({"task": "rte", "model": "m", "variant": "v", "compression": None, "params": 1,
                   "epochs": [{"accuracy": 0.5, "score": 50.0}]}, f)
    with pytest.raises(UserError) as e:
        C.load_results(str(tmp_path))
    assert path in str(e.value) and "'seed'" in str(e.value)

    write_result(tmp_path, "cb", 1, [(0.5, 0.5)], name="cb_run")
    cb_path = os.path.join(tmp_path, "cb_run", "results.json")
    obj = json.load(open(cb_path))
    del obj["epochs"][0]["f1"]
    json.dump(obj, open(cb_path, "w"))
    os.remove(path)
    with pytest.raises(UserError) as e:
        C.load_results(str(tmp_path))
    assert cb_path in str(e.value) and "'f1'" in str(e.value)


def test_no_results_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no results.json"):
        C.load_results(str(tmp_path))


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "consolidate.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def make_small_set(root):
    for seed in [1, 2, 3]:
        write_result(root, "rte", seed, [0.5, 0.6 + 0.01 * seed, 0.55])
        write_result(root, "cb", seed, [(0.85, 0.80)])
    write_result(root, "rte", 1, [0.7], variant="baseline", compression=None)


@pytest.mark.slow
def test_json_format_parses_and_matches(tmp_path):
    make_small_set(tmp_path / "res")
    out = tmp_path / "out" / "table.json"
    p = run_cli("--results_dir", str(tmp_path / "res"), "--format", "json", "--output", str(out))
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)
    assert json.loads(out.read_text()) == obj
    assert set(obj) >= {"best", "last", "missing"}
    base, mod = obj["best"]
    assert base["variant"] == "baseline" and base["tasks"]["cb"] is None
    assert mod["compression"] == 2.0 and mod["n_seeds"] == 3 and mod["params"] == 15_000_000
    assert mod["tasks"]["rte"]["metrics"]["accuracy"] == pytest.approx(0.62)
    assert mod["tasks"]["rte"]["seeds"] == [1, 2, 3]
    assert obj["last"][1]["tasks"]["rte"]["score"] == pytest.approx(55.0)
    assert mod["average"] == pytest.approx((62.0 + 82.5) / 2)
    assert obj["missing"] == [{"model": "minilm", "variant": "baseline", "compression": None,
                               "task": "cb", "seeds": [1]}]


@pytest.mark.slow
def test_markdown_format_has_pipe_header(tmp_path):
    make_small_set(tmp_path)
    p = run_cli("--results_dir", str(tmp_path), "--format", "markdown")
    assert p.returncode == 0, p.stderr
    assert any(line.startswith("|") and "Average Score" in line for line in p.stdout.splitlines())


@pytest.mark.slow
def test_cli_grid_prints_both_selections_and_writes_output(tmp_path):
    make_small_set(tmp_path / "res")
    out = tmp_path / "table.txt"
    p = run_cli("--results_dir", str(tmp_path / "res"), "--output", str(out))
    assert p.returncode == 0, p.stderr
    assert "best epoch on validation (the paper's selection)" in p.stdout
    assert "last epoch" in p.stdout and "+---" in p.stdout
    assert "missing: minilm/baseline: cb seed 1" in p.stdout
    assert out.read_text() == p.stdout


@pytest.mark.slow
def test_cli_bad_dir_exits_2_with_one_line_error(tmp_path):
    p = run_cli("--results_dir", str(tmp_path / "nope"))
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


def test_null_scores_never_best_and_shown_as_na(tmp_path):
    """NaN metrics (constant stsb predictions) are written as null; old files may hold the NaN token."""
    nan = float("nan")
    path = write_result(tmp_path, "stsb", 1, [(0.8, 0.8), (0.9, 0.9), (0.5, 0.5)])
    obj = json.load(open(path))
    obj["epochs"][0].update(pearson=None, spearman=None, score=None)
    obj["epochs"][2].update(pearson=nan, spearman=nan, score=nan)  # json.dump writes the NaN token
    json.dump(obj, open(path, "w"))
    write_result(tmp_path, "stsb", 2, [(0.7, 0.7), (0.6, 0.6)])
    write_result(tmp_path, "stsb", 3, [(0.5, 0.5), (0.4, 0.4)])
    r1 = [r for r in C.load_results(str(tmp_path)) if r["seed"] == 1][0]
    assert C.select_epoch(r1, "best")["epoch"] == 2 and C.select_epoch(r1, "last")["score"] is None
    r1["epochs"][1]["score"] = None
    none = C.select_epoch(r1, "best")  # no epoch has a score: none (results.json's best_epoch is null too)
    assert none["epoch"] is None and none["score"] is None and none["pearson"] is None

    tasks, tables, missing = build(tmp_path)
    best, last = only_row(tables, "best"), only_row(tables, "last")
    assert missing == [] and best["tasks"]["stsb"]["na_seeds"] == [] and best["average_complete"]
    assert best["tasks"]["stsb"]["score"] == pytest.approx(70.0)  # 90, 70, 50
    cell = last["tasks"]["stsb"]
    assert cell["na_seeds"] == [1] and cell["seeds"] == [1, 2, 3] and not last["average_complete"]
    assert cell["score"] == pytest.approx(50.0) and last["average"] == pytest.approx(50.0)  # median of 60, 40
    text = C.render(tables, missing, tasks, "grid")
    assert "50.0*" in text and "n/a (last epoch): minilm/modular c=2: stsb seed 1" in text
    assert "n/a (best epoch" not in text
    assert C.format_cell({"metrics": {"pearson": None, "spearman": None}}, "stsb") == "n/a/n/a"
    # all seeds without a score: the cell and the average are n/a
    for seed in (2, 3):
        os.remove(os.path.join(tmp_path, f"minilm_modular_2.0_stsb_s{seed}", "results.json"))
    _, tables, _ = build(tmp_path)
    row = only_row(tables, "last")
    assert row["tasks"]["stsb"]["score"] is None and row["average"] is None
    assert "n/a" in C.render(tables, [], ["stsb"], "grid")


@pytest.mark.slow
def test_json_output_has_no_nan_token(tmp_path):
    path = write_result(tmp_path / "res", "stsb", 1, [(0.8, 0.8)])
    obj = json.load(open(path))
    obj["epochs"][0].update(pearson=float("nan"), spearman=float("nan"), score=float("nan"))
    json.dump(obj, open(path, "w"))
    out = tmp_path / "table.json"
    p = run_cli("--results_dir", str(tmp_path / "res"), "--format", "json", "--output", str(out))
    assert p.returncode == 0, p.stderr
    assert "NaN" not in out.read_text() and json.loads(out.read_text())["best"][0]["average"] is None


def test_retention_is_the_ratio_of_average_scores_over_shared_tasks():
    from modcomp.report import retention
    cell = lambda s: {"score": s, "metrics": {}, "seeds": [1], "na_seeds": []}
    rows = [{"model": "m", "variant": "baseline", "compression": None, "tasks": {"stsb": cell(80.0), "cb": cell(60.0)}},
            {"model": "m", "variant": "x", "compression": 2.0, "tasks": {"stsb": cell(78.0), "cb": None}},
            {"model": "n", "variant": "baseline", "compression": None, "tasks": {"stsb": cell(-5.0)}},
            {"model": "n", "variant": "x", "compression": 2.0, "tasks": {"stsb": cell(-4.0)}}]
    assert retention(rows) == {"m x c=2": pytest.approx(78 / 80)}   # cb missing: stsb only; n: negative baseline


def test_select_epoch_follows_the_rule_finetune_summarize_records():
    """One rule for the best epoch: consolidate's selection is the epoch results.json names as best_epoch,
    also when no epoch has a score (then neither picks one: it used to pick epoch 1 here)."""
    from modcomp.finetune import summarize
    cases = [[None, 60.0, 70.0, 70.0], [float("nan"), 50.0], [None, None], [float("nan")], [40.0, None]]
    for scores in cases:
        epochs = [{"epoch": i, "score": s, "accuracy": s} for i, s in enumerate(scores, 1)]
        chosen = C.select_epoch({"epochs": epochs}, "best")
        assert chosen["epoch"] == summarize(epochs)["best_epoch"], scores
        assert chosen["score"] == summarize(epochs)["best_score"], scores
