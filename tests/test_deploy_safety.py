"""The deploy path loses nothing and answers line for line (issue 28, item 6), tried as a new user would on a
tiny RTE c=3 model: export.py never deletes what it was not asked to replace (a folder of the user's files, the
model, the run above it), a failed check or a kill leaves the earlier export as it was and nothing beside it,
predict.py gives one output line per input line (or a one-line error naming what is wrong), broken weights are
one-line errors, and saved models are readable by the umask's rules."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from modcomp import export, finetune, inference, utils
from modcomp import tasks as T
from modcomp.compression import CKPT_FORMAT, checkpoint_path, load_modules, save_block
from modcomp.utils import UserError, run_main

from conftest import FIXTURE_DATA, ROOT
from test_export import NO_TORCH, checkpoint

pytest.importorskip("onnxruntime")
ARGS = ["--data_dir", FIXTURE_DATA, "--max_rows", "8", "--threads", "1", "--repeats", "2", "--seq_len", "8"]


@pytest.fixture(scope="module")
def rte_ckpt(tmp_path_factory):
    """A tiny RTE (text pairs) checkpoint compressed at c=3."""
    return checkpoint(tmp_path_factory.mktemp("rte") / "model", "rte", c=3.0)


@pytest.fixture(scope="module")
def rte_export(rte_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("rte_export") / "out"
    export.main([rte_ckpt, str(out), *ARGS])
    return out


def tree(path):
    """{relative path: (sha256, mode)} of every file and folder under `path` (dot entries included)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            digest = None
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, path)] = (digest, os.stat(p).st_mode)
    return out


def cli(argv, capsys):
    """(exit code, the stderr lines that start with "error:", all of stderr) of export.py with these flags."""
    capsys.readouterr()
    try:
        run_main(lambda: export.main(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("error:")], err


@pytest.fixture
def no_work(monkeypatch):
    """Loading the checkpoint fails the test: what is refused must be refused before any work."""
    def worked(*a, **k):
        raise AssertionError("the export started working before refusing")
    monkeypatch.setattr(inference, "checkpoint_data", worked)


# ------------------------------------------------------------------ export.py: what OUT may be
def test_export_refuses_a_folder_of_the_users_files(rte_ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "data").mkdir()
    (out / "data" / "train.csv").write_text("text,label\n")
    before = tree(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(inference, "checkpoint_data", lambda *a, **k: pytest.fail("worked before refusing"))
        code, errors, _ = cli([rte_ckpt, str(out), *ARGS], capsys)
    assert code == 2 and len(errors) == 1 and str(out) in errors[0] and "--overwrite" in errors[0], errors
    assert tree(tmp_path) == before  # nothing deleted, nothing written beside it
    code, errors, _ = cli([rte_ckpt, str(out), *ARGS, "--overwrite"], capsys)  # asked for: replaced
    assert code == 0 and "export.json" in os.listdir(out) and "notes.txt" not in os.listdir(out)


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_export_never_replaces_the_model_itself(rte_ckpt, tmp_path, capsys, no_work, extra):
    model = shutil.copytree(rte_ckpt, tmp_path / "model")
    before = tree(tmp_path)
    code, errors, _ = cli([str(model), str(model), *ARGS, *extra], capsys)
    assert code == 2 and len(errors) == 1 and "is the model directory" in errors[0], errors
    assert tree(tmp_path) == before and (model / "model.safetensors").is_file()


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("up", [1, 2], ids=["run-folder", "its-parent"])
def test_export_never_replaces_a_folder_above_the_model(rte_ckpt, tmp_path, capsys, no_work, extra, up):
    run = tmp_path / "runs" / "rte"
    model = shutil.copytree(rte_ckpt, run / "model")
    (run / "results.json").write_text('{"score": 61.0}\n')
    before = tree(tmp_path)
    out = run if up == 1 else run.parent
    code, errors, _ = cli([str(model), str(out), *ARGS, *extra], capsys)
    assert code == 2 and len(errors) == 1 and "a folder above the model directory" in errors[0], errors
    assert tree(tmp_path) == before  # results.json and model/ are still there


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_export_refuses_a_file_as_out_before_any_work(rte_ckpt, tmp_path, capsys, no_work, extra):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's file")
    before = tree(tmp_path)
    code, errors, _ = cli([rte_ckpt, str(out), *ARGS, *extra], capsys)
    assert code == 2 and len(errors) == 1 and "is a file" in errors[0] and str(out) in errors[0], errors
    assert tree(tmp_path) == before


def test_export_replaces_an_earlier_export_but_not_what_was_added_to_it(rte_ckpt, rte_export, tmp_path, capsys):
    out = shutil.copytree(rte_export, tmp_path / "out")
    (out / "my_results.txt").write_text("mine")
    before = tree(tmp_path)
    code, errors, _ = cli([rte_ckpt, str(out), *ARGS], capsys)
    assert code == 2 and len(errors) == 1 and "my_results.txt" in errors[0], errors
    assert tree(tmp_path) == before
    (out / "my_results.txt").unlink()
    old = json.loads((out / "export.json").read_text())
    code, errors, _ = cli([rte_ckpt, str(out), *ARGS, "--max_rows", "4"], capsys)  # an earlier export: replaced
    new = json.loads((out / "export.json").read_text())
    assert code == 0 and (old["validation_rows"], new["validation_rows"]) == (8, 4)
    assert new["format"] == export.EXPORT_FORMAT and set(new["files"]) == set(os.listdir(out))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli([rte_ckpt, str(empty), *ARGS], capsys)[0] == 0  # an empty folder: nothing to lose


# ------------------------------------------------------------------ a failed check, a kill
def test_a_failed_tolerance_check_keeps_the_earlier_export(rte_ckpt, rte_export, tmp_path, capsys):
    out = shutil.copytree(rte_export, tmp_path / "out")
    before = tree(tmp_path)
    code, errors, err = cli([rte_ckpt, str(out), *ARGS, "--tolerance", "0"], capsys)
    assert json.loads((out / "export.json").read_text())["fp32_max_abs_logit_difference"] > 0
    assert code == 2 and len(errors) == 1 and "--tolerance" in errors[0] and "nothing written" in errors[0], err
    assert tree(tmp_path) == before  # the earlier export as it was, no temporary beside it


def test_sigterm_during_export_leaves_the_earlier_export_and_no_temporary(rte_ckpt, rte_export, tmp_path):
    out = shutil.copytree(rte_export, tmp_path / "out")
    before = tree(tmp_path)
    argv = [sys.executable, "export.py", rte_ckpt, str(out), *ARGS, "--repeats", "100000"]  # a long latency loop
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not any(n.startswith(".tmp-") for n in os.listdir(tmp_path)):
            assert proc.poll() is None and time.time() < deadline, "the export never started writing"
            time.sleep(0.02)
        time.sleep(1.0)  # well inside the export
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert tree(tmp_path) == before  # the ~70 MB .tmp-* folder of a real model is gone


def test_a_killed_exports_temporary_is_removed_by_the_next(rte_ckpt, tmp_path, capsys):
    """SIGKILL cannot be caught: what it leaves (.tmp-PID@HOST-*OUT) is removed by the next export to OUT once
    its process is gone; the temporaries of a live process or of another machine are not touched."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        host = utils._host()
        stale = tmp_path / f".tmp-{gone.pid}@{host}-abcdefghout"
        stale.mkdir()
        (stale / "model.onnx").write_bytes(b"\0" * 4096)
        keep = [tmp_path / f".tmp-{live.pid}@{host}-abcdefghout", tmp_path / f".tmp-{gone.pid}@elsewhere-abcdefghout"]
        for k in keep:
            k.mkdir()
        code, errors, _ = cli([rte_ckpt, str(tmp_path / "out"), *ARGS], capsys)
        assert code == 0, errors
        assert not stale.exists() and all(k.is_dir() for k in keep)
        assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == sorted(k.name for k in keep)
    finally:
        live.kill()
        live.wait()


def test_a_previous_directory_moved_aside_by_a_killed_write_is_put_back(tmp_path):
    """Killed between its two renames, a write leaves OUT missing and the previous OUT in .old-PID@HOST-*OUT:
    the next write puts it back before it replaces it (so, at worst, the earlier OUT is what stays)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    old = tmp_path / f".old-{gone.pid}@{utils._host()}-abcdefghout"
    (old / "out").mkdir(parents=True)
    (old / "out" / "export.json").write_text("{}")
    utils.remove_stale_temporaries(str(tmp_path / "out"))
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out" / "export.json").read_text() == "{}"


# ------------------------------------------------------------------ predict.py: line for line
def predict(export_dir, *args, stdin=None):
    """(exit code, stdout lines, stderr) of the exported predict.py in a process that cannot import torch."""
    res = subprocess.run([sys.executable, "-c", NO_TORCH, os.path.join(export_dir, "predict.py"), "--threads", "1",
                          "--model", "model.onnx", *args], input=stdin, capture_output=True, timeout=300)
    err = res.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    return res.returncode, res.stdout.decode().splitlines(), err


def one_error(code, lines, err, *names):
    """An error exit: 2, nothing on stdout, one "error:" line on stderr naming each of `names`."""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and lines == [] and len(errors) == 1, err
    assert all(n in errors[0] for n in names), errors[0]


def test_predict_keeps_blank_lines_in_place(rte_export, tmp_path):
    f = tmp_path / "in.tsv"
    f.write_bytes(b"\xef\xbb\xbfA man sat.\tA man was sitting.\r\n\nIt rains.\tThe ground is wet.\n   \n"
                  b"Cats purr.\tAnimals make sounds.")  # a BOM, CRLF, a blank and a spaces-only line, no last newline
    code, lines, err = predict(rte_export, "--file", str(f))
    out = [json.loads(line) for line in lines]
    assert code == 1 and len(out) == 5 and [o["line"] for o in out] == [1, 2, 3, 4, 5], err
    assert [("error" in o) for o in out] == [False, True, False, True, False]
    assert "2 of 5 lines" in err and "line 2" in err
    (tmp_path / "good.tsv").write_text("A man sat.\tA man was sitting.\nIt rains.\tThe ground is wet.\n"
                                       "Cats purr.\tAnimals make sounds.\n")
    code, good, _ = predict(rte_export, "--file", str(tmp_path / "good.tsv"))
    assert code == 0 and [json.loads(g)["scores"] for g in good] == [out[i]["scores"] for i in (0, 2, 4)]


def test_predict_does_not_fold_a_third_field_into_the_second_text(rte_export, tmp_path):
    (tmp_path / "in.tsv").write_text("A man sat.\tA man was sitting.\nA man sat.\tA man was\tsitting.\n")
    code, lines, err = predict(rte_export, "--file", str(tmp_path / "in.tsv"))
    out = [json.loads(line) for line in lines]
    assert code == 1 and len(out) == 2 and "label" in out[0], err
    assert out[1] == {"line": 2, "error": out[1]["error"]} and "3 tab-separated fields" in out[1]["error"]


def test_predict_says_when_a_pair_task_gets_one_text(rte_export, tmp_path):
    (tmp_path / "in.txt").write_text("Only one text here.\nA man sat.\tA man was sitting.\n")
    code, lines, err = predict(rte_export, "--file", str(tmp_path / "in.txt"))
    out = [json.loads(line) for line in lines]
    assert code == 1 and "rte takes a text pair" in out[0]["error"] and "label" in out[1], err
    one_error(*predict(rte_export, "Only one text here."), "rte takes a text pair")


def test_predict_says_when_a_text_is_empty(rte_export, tmp_path):
    (tmp_path / "in.tsv").write_text("A man sat.\t\n\tA man was sitting.\nA man sat.\tA man was sitting.\n")
    code, lines, err = predict(rte_export, "--file", str(tmp_path / "in.tsv"))
    out = [json.loads(line) for line in lines]
    assert code == 1 and [o.get("error") for o in out] == ["text 2 of 2 is empty", "text 1 of 2 is empty", None]
    one_error(*predict(rte_export, "A man sat.", ""), "text 2 of 2 is empty")


def test_predict_says_which_line_is_not_utf8(rte_export, tmp_path):
    (tmp_path / "in.tsv").write_bytes(b"A man sat.\tA man was sitting.\nA caf\xe9 sat.\tA man was sitting.\n"
                                      b"It rains.\tThe ground is wet.\n")
    code, lines, err = predict(rte_export, "--file", str(tmp_path / "in.tsv"))
    out = [json.loads(line) for line in lines]
    assert code == 1 and len(out) == 3 and "label" in out[0] and "label" in out[2], err
    assert out[1]["line"] == 2 and "not UTF-8" in out[1]["error"] and "0xe9" in out[1]["error"]
    one_error(*predict(rte_export, b"A caf\xe9 sat.", b"A man was sitting."), "not UTF-8", "0xe9")
    one_error(*predict(rte_export, "--file", "-", "--strict", stdin=(tmp_path / "in.tsv").read_bytes()),
              "stdin line 2", "not UTF-8")


@pytest.mark.parametrize("case", ["batch_size", "dir", "model", "not_onnx", "file"])
def test_predict_bad_flags_are_one_line_errors(rte_export, tmp_path, case):
    args, names = {
        "batch_size": (["--batch_size", "0", "a", "b"], ["--batch_size"]),
        "dir": (["--dir", str(tmp_path / "nowhere"), "a", "b"], [str(tmp_path / "nowhere")]),
        "model": (["--model", "modle.onnx", "a", "b"], ["modle.onnx", "model_int8.onnx"]),
        "not_onnx": (["--model", "config.json", "a", "b"], ["config.json", "ONNX model"]),
        "file": (["--file", str(tmp_path / "missing.tsv")], [str(tmp_path / "missing.tsv")]),
    }[case]
    one_error(*predict(rte_export, *args), *names)


@pytest.fixture(scope="module")
def wsc_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("wsc")
    ckpt = checkpoint(d / "model", "wsc", c=3.0)
    export.main([ckpt, str(d / "out"), *ARGS])
    return d / "out"


def test_predict_says_when_a_single_text_task_gets_a_pair(wsc_export, tmp_path):
    (tmp_path / "in.txt").write_text("The trophy does not fit in the *suitcase* because _it_ is too small.\n"
                                     "One text.\tAnother.\n")
    code, lines, err = predict(wsc_export, "--file", str(tmp_path / "in.txt"))
    out = [json.loads(line) for line in lines]
    assert code == 1 and "label" in out[0] and "wsc takes one text, not a pair" in out[1]["error"], err
    one_error(*predict(wsc_export, "One text.", "Another."), "wsc takes one text")


# ------------------------------------------------------------------ broken weights: one-line errors
def broken(ckpt, where, how):
    model = shutil.copytree(ckpt, where)
    weights = model / "model.safetensors"
    if how == "no_weights":
        weights.unlink()
    elif how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) // 3])
    elif how == "corrupt":
        data = bytearray(weights.read_bytes())
        data[:8] = b"\x7b\x22\x5f\x5f\x6d\x65\x74\x61"  # the length field overwritten with text
        weights.write_bytes(bytes(data))
    elif how == "pickle":
        from safetensors.torch import load_file
        torch.save(load_file(weights), model / "pytorch_model.bin")
        weights.unlink()
    return model, {"no_weights": "no model weights", "truncated": "truncated", "corrupt": "not a whole safetensors",
                   "pickle": "pytorch_model.bin"}[how]


BROKEN = ["no_weights", "truncated", "corrupt", "pickle"]


@pytest.mark.parametrize("how", BROKEN)
def test_export_of_broken_weights_is_a_one_line_error(rte_ckpt, tmp_path, capsys, how):
    model, why = broken(rte_ckpt, tmp_path / "model", how)
    code, errors, err = cli([str(model), str(tmp_path / "out"), *ARGS], capsys)
    assert code == 2 and len(errors) == 1 and why in errors[0] and str(model) in errors[0], err
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize("how", BROKEN)
def test_loading_broken_weights_for_fine_tuning_is_a_user_error(rte_ckpt, tmp_path, how):
    model, why = broken(rte_ckpt, tmp_path / "model", how)
    with pytest.raises(UserError, match=why):
        finetune.build_model(str(model), T.get_task("rte"))


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_loading_a_broken_module_checkpoint_is_a_user_error(rte_ckpt, tmp_path, how):
    base = finetune.build_model(rte_ckpt, T.get_task("rte"))[0]  # compressed at c=3: blocks of that size
    modules = tmp_path / "modules"
    modules.mkdir()
    for layer in range(base.config.num_hidden_layers):
        for kind in ("mha", "ffn"):
            b = base.base_model.layers[layer]
            save_block(checkpoint_path(str(modules), layer, kind), b.attention if kind == "mha" else b.ffn,
                       {"format": CKPT_FORMAT, "layer": layer, "block": kind})
    path = checkpoint_path(str(modules), 1, "ffn")
    data = bytearray(open(path, "rb").read())
    data = data[:len(data) - 100] if how == "truncated" else b"\xff" * 8 + data[8:]
    open(path, "wb").write(bytes(data))
    with pytest.raises(UserError, match=f"{path}: not a whole safetensors file"):
        load_modules(base, str(modules))


# ------------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_model_files_have_the_umask_mode(rte_ckpt, tmp_path, umask):
    from transformers import AutoTokenizer
    from modeling_moddistilbert import ModDistilBertForSequenceClassification
    model = ModDistilBertForSequenceClassification.from_pretrained(rte_ckpt)
    tok = AutoTokenizer.from_pretrained(rte_ckpt)
    previous = os.umask(umask)
    try:
        finetune.save_model(model, tok, str(tmp_path / "model"), T.get_task("rte"))
    finally:
        os.umask(previous)
    modes = {n: os.stat(tmp_path / "model" / n).st_mode & 0o777 for n in os.listdir(tmp_path / "model")}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, {n: oct(m) for n, m in modes.items()}
    assert os.stat(tmp_path / "model").st_mode & 0o777 == 0o777 & ~umask


def test_export_files_have_the_umask_mode(tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "model", "rte", c=3.0)
    os.chmod(os.path.join(ckpt, "tokenizer.json"), 0o600)  # copied into the export: it gets the umask's mode too
    previous = os.umask(0o002)
    try:
        code, errors, _ = cli([ckpt, str(tmp_path / "out"), *ARGS], capsys)
    finally:
        os.umask(previous)
    assert code == 0, errors
    modes = {n: os.stat(tmp_path / "out" / n).st_mode & 0o777 for n in os.listdir(tmp_path / "out")}
    assert set(modes.values()) <= {0o664, 0o775}, {n: oct(m) for n, m in modes.items()}  # 0o775: an executable
    assert modes["model.onnx"] == modes["model_int8.onnx"] == modes["tokenizer.json"] == modes["export.json"] == 0o664


def test_a_distillation_teacher_with_broken_weights_is_a_one_line_error(tiny_bert_dir, tmp_path):
    """--distill_from a directory whose model.safetensors is truncated: refused by check_teacher (before any
    work), not a traceback when the Distiller loads it."""
    from modcomp import tasks as T
    from modcomp.distill import check_teacher
    from modeling_moddistilbert import ModDistilBertForSequenceClassification
    m = ModDistilBertForSequenceClassification.from_teacher(tiny_bert_dir, num_labels=2)
    m.config.finetuning_task = "rte"
    d = tmp_path / "teacher"
    m.save_pretrained(str(d))
    check_teacher(str(d), T.get_task("rte"))
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        check_teacher(str(d), T.get_task("rte"))
