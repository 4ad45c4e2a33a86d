"""The committed frontier as a file (modcomp/frontier.py, scripts/make_frontier.py) and `run_speed.py --frontier`,
which re-times every point on the CPU at hand (random weights of its shapes, no checkpoint)."""
import json
import os

import pytest

from modcomp import frontier, inference
from modcomp import speed as run_speed
from modcomp.utils import UserError
from test_consolidate import write_result


def allocation(path, dims):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"dims": {str(l): d for l, d in enumerate(dims)}}, f)


def test_frontier_points_are_the_medians_and_their_allocations(tmp_path):
    res = tmp_path / "res"
    for seed, (b, c2, c4) in {1: (0.80, 0.80, 0.70), 2: (0.90, 0.81, 0.72), 3: (0.70, 0.69, 0.68)}.items():
        write_result(res, "stsb", seed, [(b, b)], variant="baseline", compression=None)
        write_result(res, "stsb", seed, [(c2, c2)], variant="mine", compression=2.0)
        write_result(res, "stsb", seed, [(c4, c4)], variant="mine", compression=4.0)
        write_result(res, "stsb", seed, [(0.1, 0.1)], variant="other", compression=2.0)   # another recipe: not it
        for c in (2, 4):
            allocation(str(tmp_path / f"alloc/s{seed}_c{c}/allocation.json"), [[16, 96], [8, 64]])
    data = frontier.build(str(res), "mine", ["stsb"], str(tmp_path / "alloc/s{seed}_c{c}/allocation.json"),
                          model="tiny")
    (p2, p4) = data["points"]
    assert (p2["budget"], p2["seeds"], p4["budget"]) == ("macs c=2", [1, 2, 3], "macs c=4")
    assert p2["retention"] == pytest.approx(80 / 80) and p4["retention"] == pytest.approx(70 / 80)  # medians
    assert p2["allocation"]["attn_dims"] == [16, 8] and p2["allocation"]["ffn_dims"] == [96, 64]
    with pytest.raises(UserError, match="allocation files match"):
        frontier.build(str(res), "mine", ["stsb"], str(tmp_path / "nowhere/{c}.json"))
    # a latency budget's allocation: its heads and runtime come along, and name the budget
    with open(tmp_path / "alloc/s1_c2/allocation.json", "w") as f:
        json.dump({"dims": {"0": [16, 96], "1": [8, 64]}, "heads": {"0": 2, "1": 1},
                   "budget": {"latency": {"runtime": "openvino", "predicted_ratio": 2.01}}}, f)
    p2 = frontier.build(str(res), "mine", ["stsb"], str(tmp_path / "alloc/s{seed}_c{c}/allocation.json"))["points"][0]
    assert (p2["budget"], p2["runtime"], p2["allocation"]["attn_heads"]) == ("latency c=2 (openvino)", "openvino",
                                                                             [2, 1])
    # an undefined score (a constant prediction's correlation: null) counts below every number in the median
    assert frontier._median([None, 0.5, 0.7]) == 0.5 and frontier._median([None, None, 0.7]) is None
    assert frontier._median([None, 0.5]) is None and frontier._median([0.4, 0.6]) == pytest.approx(0.5)
    path = res / "minilm_mine_4.0_stsb_s2" / "results.json"
    r = json.loads(path.read_text())
    r["epochs"][-1].update(score=None, pearson=None, spearmanr=None)
    r.update(last_score=None, best_score=None)
    path.write_text(json.dumps(r))
    p4 = frontier.build(str(res), "mine", ["stsb"], str(tmp_path / "alloc/s{seed}_c{c}/allocation.json"))["points"][1]
    assert p4["undefined_seeds"] == [2] and p4["retention"] == pytest.approx(0.68 / 0.80)


def test_run_speed_frontier_retimes_every_point_beside_the_peers(tiny_bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    f = tmp_path / "frontier.json"
    f.write_text(json.dumps({"model": tiny_bert_dir, "points": [
        {"task": "stsb", "budget": "macs c=2", "compression": 2.0, "seeds": [1], "retention": 0.99,
         "allocation": {"attn_dims": [16, 8], "ffn_dims": [32, 16]}},
        {"task": "stsb", "budget": "macs c=4", "compression": 4.0, "seeds": [1], "retention": 0.97,
         "allocation": {"attn_dims": [8, 0], "ffn_dims": [16, 0]}},   # a removed block times too
        {"task": "stsb", "budget": "latency c=3 (openvino)", "compression": 3.0, "seeds": [1], "retention": 0.98,
         "runtime": "openvino" if inference.has_openvino() else "ort-int8",   # a latency budget's point: heads
         "allocation": {"attn_dims": [16, 8], "ffn_dims": [16, 8], "attn_heads": [2, 1]}}]}))
    out = tmp_path / "out.json"
    run_speed.main(["--frontier", str(f), "--json", str(out), "--repeats", "2", "--warmup", "1", "--threads", "1",
                    "--real_examples", "4", "--seq_lens", "16", "--onnx_dir", str(tmp_path / "onnx"),
                    "--ov_calibration", "4"])
    r = json.loads(out.read_text())
    assert set(r) >= {"machine", "peers", "points"} and r["machine"]
    ov = {run_speed.OV_PEER, run_speed.OV_INT8_PEER} if inference.has_openvino() else set()
    assert {p["name"] for p in r["peers"]} == {"fp32 c=1", "ort c=1", run_speed.PEER, run_speed.PEER_SHIPPED,
                                               run_speed.PEER_ALONE} | ov
    for p in r["points"]:
        assert set(p) >= {"task", "budget", "retention", "ms_128", "vs_peer_128", "ms_real", "vs_peer_real", "peer"}
        peer = {q["name"]: q for q in r["peers"]}[p["peer"]]
        assert p["vs_peer_128"] == pytest.approx(peer["ms_128"] / p["ms_128"], rel=0.05)
        assert p["peer"] == min(r["peers"], key=lambda q: q["ms_128"])["name"] or \
            peer["ms_128"] == min(q["ms_128"] for q in r["peers"])   # the fastest (rounded ms may tie)
        # every point in each runtime, its headline figures in its own; against the uncompressed in the same one
        assert set(p["runtimes"]) == {"ort-int8"} | ({"openvino"} if ov else set())
        assert p["ms_128"] == p["runtimes"][p["runtime"]]["ms_128"] and p["vs_own_128"] > 0
    assert r["points"][2]["runtime"] == ("openvino" if ov else "ort-int8")
    md = frontier.table_and_plot(r, str(tmp_path / "plot.png"))   # the table and plot of the re-timed frontier
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG" and md.count("| stsb |") == 3
    assert "latency c=3 (openvino)" in md and "Peers (uncompressed):" in md
    lat = next(q for q in r["points"] if q["budget"].startswith("latency"))   # its share of the ratio asked for
    row = next(line for line in md.splitlines() if f"| {lat['budget']} |" in line)
    assert row.split(" | ")[7] == f"{lat['vs_own_128'] / 3:.2f}"
    assert frontier._asked("latency c=4 (openvino)") == 4.0 and frontier._asked("macs c=4") is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"points": [{"task": "stsb"}]}))
    with pytest.raises(UserError, match="allocation"):
        run_speed.main(["--frontier", str(bad)])
    bad.write_text(json.dumps({"points": [{"task": "stsb", "allocation": {"attn_dims": [16, 8], "ffn_dims": [8, 8],
                                                                         "attn_heads": [3, 1]}}]}))
    with pytest.raises(UserError, match="attn_heads do not fit"):
        run_speed.main(["--frontier", str(bad)])
    bad.write_text(json.dumps({"points": [{"task": "stsb", "allocation": {"attn_dims": [16, 0], "ffn_dims": [8, 8],
                                                                         "removed_layers": [1]}}]}))
    with pytest.raises(UserError, match="removed_layers are not layers of size 0"):
        run_speed.main(["--frontier", str(bad)])


def test_openvino_runs_the_export_at_its_precision_and_in_nncf_int8(tmp_path):
    """The OpenVINO peers read the plain ONNX export: at the default precision they give the PyTorch logits (bf16 on
    an AMX CPU: within bf16's precision), and NNCF's INT8 of it close to them."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import torch
    from test_speed import tiny_model
    m = tiny_model()
    path = inference.export_onnx(m, str(tmp_path / "m.onnx"))
    ids = torch.randint(1000, 30000, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = m(input_ids=ids, attention_mask=mask).logits
    got = inference.OpenVinoModel(path, 1)(input_ids=ids, attention_mask=mask).logits
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 2 ** -7 * 8 * scale + 1e-5          # bf16: 8 bits of mantissa
    cal = [{"input_ids": ids[i:i + 1].numpy(), "attention_mask": mask[i:i + 1].numpy(),
            "token_type_ids": torch.zeros_like(ids[i:i + 1]).numpy()} for i in range(2)]
    q = inference.OpenVinoModel(path, 1, cal)(input_ids=ids, attention_mask=mask).logits
    assert q.shape == want.shape and float((q - want).abs().max()) < 0.1 * scale + 1e-2
