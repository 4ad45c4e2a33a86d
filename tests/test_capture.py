"""capture_data.py + activations.py with a tiny random BERT teacher on real shared data (offline, fast)."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from modcomp import activations as A  # noqa: E402
from modcomp import capture as capture_data  # noqa: E402
from modeling_moddistilbert import ModDistilBertModel, attention_mask_4d  # noqa: E402
from modcomp.utils import UserError  # noqa: E402

from conftest import FIXTURE_DATA as DATA  # noqa: E402  (real rows, shipped in tests/fixtures)
tasks = pytest.importorskip("tasks")


@pytest.fixture(scope="module")
def teacher_dir(tiny_bert_dir):
    return tiny_bert_dir


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return ModDistilBertModel.from_teacher(teacher_dir).eval()


def capture(teacher_dir, out, *extra, task="rte", n=20, data_dir=DATA):
    argv = ["--model_name_or_path", teacher_dir, "--task", task, "--data_dir", data_dir,
            "--output_dir", str(out), "--max_samples", str(n), "--batch_size", "4", *map(str, extra)]
    capture_data.main(argv)
    return str(out)


def encoded(teacher_dir, task="rte", n=20):
    from transformers import AutoTokenizer
    rows = tasks.load_rows(task, "train", DATA)[:n]
    return tasks.encode(task, rows, AutoTokenizer.from_pretrained(teacher_dir), 128)


def shard_files(d):
    return sorted(glob.glob(os.path.join(d, "shard_*.safetensors")))


def test_exact_layer_inputs_and_no_padding(teacher_dir, teacher, tmp_path):
    d = capture(teacher_dir, tmp_path / "c", "--dtype", "fp32", "--shard_sequences", "7")
    store = A.ActivationStore(d)
    assert store.num_layers == 2 and store.hidden_size == 32 and store.n_sequences == 20
    m = store.manifest
    assert m["status"] == "complete" and m["stored"] == ["mha_in"] and m["dtype"] == "float32"
    enc = encoded(teacher_dir)
    # no padding stored: tokens == sum of attention masks; each shard's layer tensor has sum(lengths) rows
    assert m["n_tokens"] == sum(sum(a) for a in enc["attention_mask"])
    for f in shard_files(d):
        with safe_open(f, framework="pt") as s:
            n_tok = int(s.get_tensor("lengths").sum())
            assert all(s.get_tensor(f"layer{l}").shape == (n_tok, 32) for l in range(2))
    xs = [store.load_layer(l) for l in range(2)]
    lengths = xs[0][1]
    assert lengths.tolist() == [len(x) for x in enc["input_ids"]]
    # layer 0 input == the embeddings of each row, unpadded
    off = A.sequence_offsets(lengths).tolist()
    with torch.no_grad():
        for i, (ids, tt) in enumerate(zip(enc["input_ids"], enc["token_type_ids"])):
            emb = teacher.embeddings(torch.tensor([ids]), torch.tensor([tt]))[0]
            assert (xs[0][0][off[i]:off[i] + len(ids)] - emb).abs().max() < 1e-5
    # layer l applied to the stored layer-l inputs == the stored layer-(l+1) inputs (the last layer:
    # == the teacher's output on each row alone)
    idx = torch.arange(len(lengths))
    with torch.no_grad():
        last = [teacher(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                        torch.tensor([tt])).last_hidden_state[0]
                for ids, tt in zip(enc["input_ids"], enc["token_type_ids"])]
        for l in range(2):
            x, mask = A.pad_sequences(xs[l][0], lengths, idx)
            layer = teacher.layers[l]
            m4 = attention_mask_4d(mask)
            h = layer.sa_layer_norm(x + layer.attention(x, m4))
            y = layer.output_layer_norm(h + layer.ffn(h))
            assert torch.equal(y, layer(x, m4))
            target = A.pad_sequences(xs[l + 1][0], lengths, idx)[0] if l + 1 < 2 else \
                torch.nn.utils.rnn.pad_sequence(last, batch_first=True)
            assert target.shape == y.shape and (target[~mask] == 0).all()
            assert (y[mask] - target[mask]).abs().max() < 1e-5
    # the last layer's output is not stored, and layer indices are checked
    with pytest.raises(UserError, match="out of range"):
        store.load_layer(2)
    ln, ex, cp = store.sequence_info()
    assert torch.equal(ln, lengths) and (cp == 0).all()
    assert ex.tolist() == [r["idx"] for r in tasks.load_rows("rte", "train", DATA)[:20]]


def test_manifest_provenance_beside_settings_and_resume_after_a_commit(teacher_dir, tmp_path, monkeypatch, capsys):
    d = str(tmp_path / "c")
    real = A.ActivationWriter._write_shard

    def interrupted(self, *args):
        if len(self.shards) == 1:
            raise KeyboardInterrupt
        real(self, *args)
    monkeypatch.setattr(A.ActivationWriter, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        capture(teacher_dir, d, "--shard_sequences", "4", n=12)
    monkeypatch.setattr(A.ActivationWriter, "_write_shard", real)
    m = json.load(open(os.path.join(d, "manifest.json")))
    p = m["provenance"]
    assert set(p) == {"python", "torch", "transformers", "git_commit", "device"} and p["device"] == "cpu"
    assert p["torch"] == torch.__version__ and "provenance" not in m["settings"]
    # another commit (or torch) since: the capture still resumes; the manifest records the latest run
    later = {**p, "git_commit": "0" * 40, "torch": "9.9"}
    monkeypatch.setattr(capture_data, "provenance", lambda device: later)
    capsys.readouterr()
    capture(teacher_dir, d, "--shard_sequences", "4", n=12)
    assert "resuming: 4 of 12" in capsys.readouterr().out
    m = json.load(open(os.path.join(d, "manifest.json")))
    assert m["status"] == "complete" and m["provenance"] == later


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_capture_matches_cpu(teacher_dir, tmp_path):
    cpu = capture(teacher_dir, tmp_path / "cpu", "--dtype", "fp32", "--device", "cpu", n=8)
    gpu = capture(teacher_dir, tmp_path / "gpu", "--dtype", "fp32", "--device", "cuda", n=8)
    assert json.load(open(os.path.join(gpu, "manifest.json")))["provenance"]["device"] == \
        torch.cuda.get_device_name(0)
    for (x, n), (y, k) in zip(_all_layers(cpu)[0], _all_layers(gpu)[0]):
        assert torch.equal(n, k) and (x - y).abs().max() < 1e-3


def test_pad_sequences():
    lengths = torch.tensor([2, 3, 1])
    x = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 2)
    batch, mask = A.pad_sequences(x, lengths, [2, 0], A.sequence_offsets(lengths))
    assert batch.shape == (2, 2, 2) and mask.tolist() == [[True, False], [True, True]]
    assert batch[:, :, 0].tolist() == [[5, 0], [0, 1]]


def test_store_errors(teacher_dir, tmp_path):
    d = capture(teacher_dir, tmp_path / "c", "--shard_sequences", "8", n=20)
    names = [os.path.basename(f) for f in shard_files(d)]
    assert names == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    p = os.path.join(d, names[1])
    data = bytearray(open(p, "rb").read())
    data[-3] ^= 0xFF
    open(p, "wb").write(bytes(data))
    with pytest.raises(UserError, match=r"shard_00001\.safetensors.*checksum"):
        A.ActivationStore(d)
    os.unlink(p)
    with pytest.raises(UserError, match=r"shard_00001\.safetensors.*missing"):
        A.ActivationStore(d)
    mp = os.path.join(d, "manifest.json")
    m = json.load(open(mp))
    m["status"] = "incomplete"
    json.dump(m, open(mp, "w"))
    with pytest.raises(UserError, match="incomplete"):
        A.ActivationStore(d)
    open(mp, "w").write("{not json")
    with pytest.raises(UserError, match="malformed"):
        A.ActivationStore(d)
    os.unlink(mp)
    with pytest.raises(UserError, match="manifest.json missing"):
        A.ActivationStore(d)


def _all_layers(d):
    store = A.ActivationStore(d)
    return [store.load_layer(l) for l in range(store.num_layers)], store.sequence_info()


def test_resume_after_interruption(teacher_dir, tmp_path, monkeypatch, capsys):
    ref = capture(teacher_dir, tmp_path / "ref", "--shard_sequences", "6", "--dtype", "fp32", n=22)
    d = str(tmp_path / "c")
    real = A.ActivationWriter._write_shard

    def interrupted(self, *args):
        if len(self.shards) == 2:
            raise KeyboardInterrupt
        real(self, *args)
    monkeypatch.setattr(A.ActivationWriter, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        capture(teacher_dir, d, "--shard_sequences", "6", "--dtype", "fp32", n=22)
    monkeypatch.setattr(A.ActivationWriter, "_write_shard", real)
    m = json.load(open(os.path.join(d, "manifest.json")))
    assert m["status"] == "incomplete" and len(m["shards"]) == 2 and m["n_sequences"] == 12
    with pytest.raises(UserError, match="incomplete"):
        A.ActivationStore(d)
    # leftovers of a crash mid-write: a temp file and a shard renamed but not yet in the manifest
    for stray in (".tmp-shard_00002.safetensors", "shard_00002.safetensors"):
        open(os.path.join(d, stray), "wb").write(b"partial")
    kept = os.stat(os.path.join(d, "shard_00001.safetensors")).st_mtime_ns
    capsys.readouterr()
    capture(teacher_dir, d, "--shard_sequences", "6", "--dtype", "fp32", n=22)
    assert "resuming: 12 of 22" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(d, ".tmp-shard_00002.safetensors"))
    assert os.stat(os.path.join(d, "shard_00001.safetensors")).st_mtime_ns == kept  # not rewritten
    (got, info), (want, info_ref) = _all_layers(d), _all_layers(ref)
    for (x, n), (y, k) in zip(got, want):
        assert torch.equal(x, y) and torch.equal(n, k)
    assert all(torch.equal(a, b) for a, b in zip(info, info_ref))
    assert json.load(open(os.path.join(d, "manifest.json")))["status"] == "complete"
    # complete with the same settings: no work
    capture(teacher_dir, d, "--shard_sequences", "6", "--dtype", "fp32", n=22)
    assert "already complete" in capsys.readouterr().out
    # other settings: refused, naming the differing key; --overwrite starts afresh
    with pytest.raises(UserError, match=r"other settings.*max_length.*--overwrite"):
        capture(teacher_dir, d, "--shard_sequences", "6", "--dtype", "fp32", "--max_length", "64", n=22)
    capture(teacher_dir, d, "--shard_sequences", "6", "--dtype", "fp32", "--max_length", "64", "--overwrite", n=22)
    assert json.load(open(os.path.join(d, "manifest.json")))["settings"]["max_length"] == 64


def test_resume_recaptures_from_a_corrupted_shard(teacher_dir, tmp_path):
    d = capture(teacher_dir, tmp_path / "c", "--shard_sequences", "5", n=12)
    before = _all_layers(d)[0]
    p = os.path.join(d, "shard_00001.safetensors")
    data = bytearray(open(p, "rb").read())
    data[-1] ^= 0xFF
    open(p, "wb").write(bytes(data))
    capture(teacher_dir, d, "--shard_sequences", "5", n=12)
    after = _all_layers(d)[0]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(before, after))


def test_fp16_bytes_per_sample(teacher_dir, tmp_path):
    d = capture(teacher_dir, tmp_path / "c", "--shard_sequences", "8", n=20)
    m = json.load(open(os.path.join(d, "manifest.json")))
    total = sum(os.path.getsize(f) for f in shard_files(d))
    assert m["dtype"] == "float16" and m["n_examples"] == 20 and m["num_layers"] == 2
    assert m["bytes_per_sample_per_layer"] == total / (20 * 2)
    assert m["original_bytes_per_sample_per_layer"] == 4 * 128 * 32 * 4
    assert m["storage_ratio"] == pytest.approx(total / 40 / (4 * 128 * 32 * 4))
    x, lengths = A.ActivationStore(d).load_layer(0)
    assert x.dtype == torch.float32 and lengths.dtype == torch.long


def test_copa_two_sequences_per_example(teacher_dir, tmp_path):
    d = capture(teacher_dir, tmp_path / "c", task="copa", n=10)
    m = json.load(open(os.path.join(d, "manifest.json")))
    assert m["n_examples"] == 10 and m["n_sequences"] == 20
    _, ex, _ = A.ActivationStore(d).sequence_info()
    assert ex[0::2].tolist() == ex[1::2].tolist() and len(set(ex.tolist())) == 10


def test_augment_doubles_sequences(teacher_dir, tmp_path):
    pytest.importorskip("augment")
    d = capture(teacher_dir, tmp_path / "c", "--augment", "1", n=10)
    m = json.load(open(os.path.join(d, "manifest.json")))
    assert m["n_examples"] == 10 and m["n_sequences"] == 20 and m["augment"] == 1
    _, ex, cp = A.ActivationStore(d).sequence_info()
    assert cp.tolist() == [0] * 10 + [1] * 10 and ex[:10].tolist() == ex[10:].tolist()


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "capture_data.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("args,msg", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "rte", "--data_dir", "/nonexistent/data"], "/nonexistent/data: directory not found"),
    (["--task", "rte", "--batch_size", "0"], "--batch_size must be >= 1"),
    (["--task", "rte", "--max_tokens", "0"], "--max_tokens must be >= 1"),
])
def test_bad_inputs_exit_2(tmp_path, args, msg):
    r = run_cli(*args, "--output_dir", str(tmp_path / "c"))
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and msg in lines[0]
    assert not os.path.exists(tmp_path / "c")


def test_missing_split_file(teacher_dir, tmp_path):
    os.makedirs(tmp_path / "data" / "rte")
    with pytest.raises(UserError, match="file not found"):
        capture(teacher_dir, tmp_path / "c", data_dir=str(tmp_path / "data"))


def test_max_tokens_captures_a_seeded_subset_of_whole_examples(teacher_dir, tmp_path):
    """--max_tokens: a seeded random subset of the rows, at most N tokens in all, whole examples (both COPA
    choices), in dataset order; the same with the same seed, another with another; recorded in the settings."""
    data_dir = DATA
    full = capture(teacher_dir, tmp_path / "full", task="copa", n=40, data_dir=data_dir)
    lengths_all, ex_all, _ = A.ActivationStore(full).sequence_info()
    tokens_of = {}
    for e, n in zip(ex_all.tolist(), lengths_all.tolist()):
        tokens_of[e] = tokens_of.get(e, 0) + n
    budget = sum(tokens_of.values()) // 3
    runs = [capture(teacher_dir, tmp_path / name, "--max_tokens", budget, "--seed", seed, task="copa", n=40,
                    data_dir=data_dir) for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    seen = []
    for d in runs:
        m = json.load(open(os.path.join(d, "manifest.json")))
        lengths, ex, _ = A.ActivationStore(d).sequence_info()
        assert m["settings"]["max_tokens"] == budget and m["n_tokens"] == int(lengths.sum()) <= budget
        assert ex[0::2].tolist() == ex[1::2].tolist()                       # both choices of every example
        order = [ex_all.tolist().index(e) for e in ex[0::2].tolist()]
        assert order == sorted(order) and 0 < m["n_examples"] < 40           # dataset order, a strict subset
        assert sum(tokens_of[e] for e in set(ex.tolist())) == int(lengths.sum())
        seen.append(ex.tolist())
    assert seen[0] == seen[1] and seen[0] != seen[2]
