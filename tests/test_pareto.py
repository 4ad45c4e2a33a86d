"""scripts/pareto.py (sweep points against measured speedups) and scripts/collect_results.py."""
import json
import os
import sys

import pytest


from modcomp import pareto  # noqa: E402


def load_script(name):
    """A module of scripts/ (helpers, not part of the package), loaded from its file."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "..", "scripts",
                                                                     f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
from test_consolidate import write_result  # noqa: E402
from modcomp.utils import UserError  # noqa: E402


def speed_json(path, speedups, bs=1, seq=128):
    rows = [{"variant": f"fp32 c={c:g}", "compression": c, "batch_size": bs, "seq_len": seq, "speedup": s}
            for c, s in speedups.items()]
    rows.append({"variant": "int8 c=2", "compression": 2.0, "batch_size": bs, "seq_len": seq, "speedup": 9.9})
    path.write_text(json.dumps(rows))
    return str(path)


def test_points_table_and_png(tmp_path):
    res = tmp_path / "res"
    for seed, score in ((1, 0.80), (2, 0.84), (3, 0.90)):
        write_result(res, "rte", seed, [0.5, score], variant="baseline", compression=None)
    for seed, (a, b) in ((1, (0.7, 0.6)), (2, (0.8, 0.7))):
        write_result(res, "rte", seed, [a, b], variant="modular", compression=2.0)
    write_result(res, "rte", 1, [0.55], variant="modular", compression=4.0)
    write_result(res, "rte", 1, [0.5], variant="svd", compression=2.0)
    write_result(res, "cb", 1, [(0.9, 0.8)], variant="baseline", compression=None)   # not asked for
    speed = speed_json(tmp_path / "speed.json", {1.0: 1.0, 2.0: 1.9, 4.0: 3.5})
    png, table = tmp_path / "out" / "p.png", tmp_path / "out" / "p.md"
    pareto.main(["--results", str(res), "--tasks", "rte", "--speed", speed, "--png", str(png), "--table", str(table)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = table.read_text().splitlines()[2:]
    assert lines == ["| rte | baseline | 1 | 1.00x | 3 | 84.0 | 84.0 |",    # last: median(80, 84, 90)
                     "| rte | modular | 2 | 1.90x | 2 | 65.0 | 75.0 |",     # last 60/70, best 70/80
                     "| rte | svd | 2 | 1.90x | 1 | 50.0 | 50.0 |",
                     "| rte | modular | 4 | 3.50x | 1 | 55.0 | 55.0 |"]
    pareto.main(["--results", str(res), "--tasks", "rte", "--speed", speed, "--png", str(png), "--table", str(table),
                 "--variants", "svd"])                                          # only these (and the baseline)
    assert table.read_text().splitlines()[2:] == [lines[0], lines[2]]


def test_checkpoint_rows_precisions_and_the_peer(tmp_path):
    """An allocated variant takes its own checkpoint's speed (run_speed --models), the others the uniform model's
    of the same c; one column and curve per precision; the peer row is marked."""
    res = tmp_path / "res"
    write_result(res, "stsb", 1, [(0.8, 0.8)], variant="baseline", compression=None)
    write_result(res, "stsb", 1, [(0.79, 0.79)], variant="joint", compression=3.0)
    write_result(res, "stsb", 1, [(0.5, 0.5)], variant="modular", compression=3.0)
    rows = [{"variant": v, "compression": c, "checkpoint": ck, "batch_size": 1, "seq_len": 128, "speedup": x}
            for v, c, ck, x in (("fp32 c=1", 1.0, False, 1.0), ("fp32 c=3", 3.0, False, 2.0),
                                ("fp32 c=3 ckpt", 3.0, True, 2.5), ("ort-int8 c=1", 1.0, False, 3.0),
                                ("ort-int8 c=3", 3.0, False, 6.0), ("ort-int8 c=3 ckpt", 3.0, True, 7.0))]
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"rows": rows}))
    table = tmp_path / "p.md"
    pareto.main(["--results", str(res), "--tasks", "stsb", "--speed", str(speed), "--png", str(tmp_path / "p.png"),
                 "--precisions", "fp32", "ort-int8", "--checkpoint_variants", "joint", "--peer", "--table", str(table)])
    lines = table.read_text().splitlines()[2:]
    assert lines == ["| stsb | baseline | 1 | 1.00x | 3.00x | 1 | 80.0 | 80.0 |",
                     "| stsb | joint | 3 | 2.50x | 7.00x | 1 | 79.0 | 79.0 |",
                     "| stsb | modular | 3 | 2.00x | 6.00x | 1 | 50.0 | 50.0 |",
                     "| | peer: ONNX Runtime INT8 c=1 | 1 | 3.00x over fp32 c=1 | | | (its score not measured) | |"]


def test_missing_speed_row_and_duplicates_are_user_errors(tmp_path):
    res = tmp_path / "res"
    write_result(res, "rte", 1, [0.6], variant="modular", compression=3.0)
    speed = speed_json(tmp_path / "speed.json", {1.0: 1.0, 2.0: 1.9})
    args = ["--results", str(res), "--tasks", "rte", "--speed", speed, "--png", str(tmp_path / "p.png")]
    with pytest.raises(UserError, match="no speed row for c=3"):
        pareto.main(args)
    with pytest.raises(UserError, match="no fp32 rows at batch size 8"):
        pareto.main(args + ["--batch_size", "8"])
    old = tmp_path / "old.json"
    old.write_text(json.dumps([{"variant": "fp32 c=1", "batch_size": 1, "seq_len": 128, "speedup": 1.0}]))
    with pytest.raises(UserError, match="without 'compression'"):
        pareto.main(["--results", str(res), "--tasks", "rte", "--speed", str(old), "--png", str(tmp_path / "p.png")])
    write_result(res, "rte", 1, [0.6], variant="modular", compression=3.0, name="again")
    with pytest.raises(UserError, match="a second result"):
        pareto.main(args)
    assert not (tmp_path / "p.png").exists()


def test_collect_results_copies_and_refuses_duplicates(tmp_path):
    collect_results = load_script("collect_results")
    a, b = tmp_path / "a", tmp_path / "b"
    write_result(a, "rte", 1, [0.6], variant="baseline", compression=None)
    write_result(a, "rte", 4, [0.6], variant="baseline", compression=None)
    write_result(b, "rte", 1, [0.7], variant="modular", compression=1.5)
    dest = tmp_path / "dest"
    collect_results.main([str(a), str(b), "--dest", str(dest), "--seeds", "1", "2", "3"])
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("results.json"))
    assert got == ["rte/baseline/seed1/results.json", "rte/modular_c1.5/seed1/results.json"]
    assert json.loads((dest / got[1]).read_text())["epochs"][0]["score"] == pytest.approx(70.0)
    with pytest.raises(UserError, match="--dest exists"):
        collect_results.main([str(a), "--dest", str(dest)])
    write_result(b, "rte", 1, [0.5], variant="baseline", compression=None)
    with pytest.raises(UserError, match="two results for rte/baseline/seed1"):
        collect_results.main([str(a), str(b), "--dest", str(tmp_path / "d2")])
    assert not (tmp_path / "d2").exists()


def test_collect_results_with_allocation_copies_each_runs_allocation(tmp_path):
    collect_results = load_script("collect_results")
    a = tmp_path / "a"
    write_result(a, "stsb", 1, [(0.6, 0.6)], variant="baseline", compression=None)
    path = write_result(a, "stsb", 1, [(0.7, 0.7)], variant="modular", compression=3.0)
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "allocation.json").write_text('{"dims": {"0": [8, 16]}, "heads": {"0": 2}}')
    r = json.loads(open(path).read())
    r["modules_dir"] = str(mod)
    open(path, "w").write(json.dumps(r))
    dest = tmp_path / "dest"
    collect_results.main([str(a), "--dest", str(dest), "--with_allocation"])
    assert json.loads((dest / "stsb/modular_c3/seed1/allocation.json").read_text())["heads"] == {"0": 2}
    assert not (dest / "stsb/baseline/seed1/allocation.json").exists()
    (mod / "allocation.json").unlink()
    with pytest.raises(UserError, match="no allocation.json"):
        collect_results.main([str(a), "--dest", str(tmp_path / "d2"), "--with_allocation"])


def test_speedups_read_both_json_layouts():
    rows = [{"variant": "fp32 c=2", "compression": 2.0, "batch_size": 1, "seq_len": 128, "speedup": 1.9},
            {"variant": "int8 c=2", "compression": 2.0, "batch_size": 1, "seq_len": 128, "speedup": 5.0}]
    assert pareto.speedups(rows, 1, 128) == {(2.0, False): 1.9}                       # older run_speed.py: a bare list
    assert pareto.speedups({"machine": {}, "rows": rows}, 1, 128) == {(2.0, False): 1.9}
    assert pareto.speedups(rows, 1, 128, "int8") == {(2.0, False): 5.0}


def test_collect_results_relabels_and_records_the_old_label(tmp_path):
    collect_results = load_script("collect_results")
    a, b = tmp_path / "a", tmp_path / "b"
    write_result(a, "rte", 1, [0.6], variant="ft-data-alloc+kd", compression=2.0)
    write_result(b, "rte", 2, [0.7], variant="modular-data-alloc-ft+kd", compression=2.0)
    dest = tmp_path / "dest"
    collect_results.main([str(a), str(b), "--dest", str(dest), "--relabel", "ft-data-alloc+kd=modular-data-alloc-ft+kd"])
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("results.json"))
    assert got == ["rte/modular-data-alloc-ft+kd_c2/seed1/results.json", "rte/modular-data-alloc-ft+kd_c2/seed2/results.json"]
    r1, r2 = (json.loads((dest / g).read_text()) for g in got)
    assert r1["variant"] == r2["variant"] == "modular-data-alloc-ft+kd"
    assert r1["relabelled_from"] == "ft-data-alloc+kd" and "relabelled_from" not in r2
    only = tmp_path / "only"
    collect_results.main([str(a), str(b), "--dest", str(only), "--variants", "ft-data-alloc+kd"])
    assert [str(p.relative_to(only)) for p in only.rglob("results.json")] == ["rte/ft-data-alloc+kd_c2/seed1/results.json"]
    with pytest.raises(UserError, match="expected OLD=NEW"):
        collect_results.main([str(a), "--dest", str(tmp_path / "d3"), "--relabel", "nolabel"])


def test_speed_spread_over_runs_by_hand(tmp_path):
    """scripts/speed_spread.py: per row, the median and range over the runs of its ms, speedup and vs-peer;
    rows missing from a run are left out; one run or runs from two CPUs are refused."""
    speed_spread = load_script("speed_spread")
    row = lambda v, ms, sp, peer: {"variant": v, "batch_size": 1, "seq_len": 128, "median_ms": ms, "speedup": sp,
                                   "vs_peer": peer}
    runs = [[row("fp32 c=1", 60.0, 1.0, 0.3), row("ort-int8 c=1", 18.0, 3.3, 1.0), row("x", 1, 1, 1)],
            [row("fp32 c=1", 66.0, 1.0, 0.25), row("ort-int8 c=1", 16.5, 4.0, 1.0)],
            [row("fp32 c=1", 63.0, 1.0, 0.2), row("ort-int8 c=1", 21.0, 3.0, 1.0)]]
    paths = []
    for i, rows in enumerate(runs):
        paths.append(str(tmp_path / f"run{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump({"machine": {"cpu": "AMD EPYC", "isa": ["avx2"], "cores": 2}, "command": ["run_speed.py"], "rows": rows}, f)
    out = tmp_path / "spread.json"
    speed_spread.main(paths + ["--json", str(out), "--table", str(tmp_path / "spread.md")])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"fp32 c=1", "ort-int8 c=1"}
    assert rows["fp32 c=1"]["median_ms"] == 63.0
    assert rows["fp32 c=1"]["spread"]["median_ms"] == {"min": 60.0, "max": 66.0, "values": [60.0, 66.0, 63.0]}
    assert rows["ort-int8 c=1"]["speedup"] == 3.3 and rows["fp32 c=1"]["vs_peer"] == 0.25
    assert rows["ort-int8 c=1"]["seq_len"] == 128                # the run's own fields kept: pareto.py reads it
    assert "p10_ms" not in rows["fp32 c=1"] and rows["fp32 c=1"]["peer_by_run"] == [None, None, None]
    assert "63.00 (60.00-66.00)" in (tmp_path / "spread.md").read_text()
    with pytest.raises(UserError, match="at least two runs"):
        speed_spread.main(paths[:1])
    with open(paths[0], "w") as f:
        json.dump({"machine": {"cpu": "AMD EPYC", "isa": ["avx2", "avx512_vnni"], "cores": 2}, "rows": runs[0]}, f)
    with pytest.raises(UserError, match="different CPUs"):
        speed_spread.main(paths)
