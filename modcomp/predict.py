"""Predict with a model exported by export.py: needs only tokenizers, numpy and one runtime, onnxruntime or
openvino (no torch, no transformers). export.py copies this file into the export directory, where it finds its
model by itself:

    python predict.py "A man is playing a guitar." "A man plays the guitar."     # one text pair (or one text)
    python predict.py --file pairs.tsv          # one example a line: text, or text<TAB>text; "-": stdin
    python predict.py --dir runs/deploy/stsb --model model.onnx ...                # from elsewhere; fp32
    python predict.py --model openvino_model_int8.xml ...     # OpenVINO: a .xml model (openvino_model.xml: fp32)

The runtime follows the model file: .onnx runs in ONNX Runtime, .xml in OpenVINO. The default model is
model_int8.onnx, or openvino_model_int8.xml where onnxruntime is not installed.

Output, on stdout: one JSON line per example, {"label": name, "scores": {name: probability}} for a
classification task, {"score": value} for a regression task (STS-B). With --file, exactly one line per input
line, in order, each with its line number ("line", from 1): {"line": 3, "label": ...}; an input line that
cannot be predicted gets {"line": 3, "error": "why"} in its place (an empty line, an empty text, one text where
the task takes a pair or two where it takes one, more than one tab, bytes that are not UTF-8), so output line i
is always input line i (--strict: the first bad line is an error instead, and nothing is printed).
Exit status: 0 every example predicted; 1 some lines got an "error" line (a summary on stderr); 2 nothing
predicted: a bad flag, export directory, model or input file, a bad example given as arguments, or a bad line
with --strict: one line "error: ..." on stderr naming the file, flag or line (after argparse's usage, for a
bad flag), nothing on stdout.

The texts go in as the task formats them (tasks.py format_example: WiC and WSC mark their words with * and _;
COPA, multiple choice, is not exported); a line's text is taken as it is (only its line ending is removed, and a
UTF-8 byte order mark before the first line).
"""
import argparse
import json
import os
import sys

import importlib

import numpy as np
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


class PredictError(ValueError):
    """A bad export directory, model, input or example: main prints it as one line ("error: ...") and exits 2."""


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file (is {os.path.dirname(path) or '.'} an export directory of "
                           "export.py?)") from None
    except (OSError, ValueError) as e:
        raise PredictError(f"{path}: cannot be read as JSON: {_first_line(e)}") from None


class Predictor:
    """The exported model and its tokenizer: predictor(examples) -> one dict per example (see the module doc).
    An example is (text, None) or (text, text); Predictor.check(example) says what is wrong with one (None: it
    can be predicted); calling it with a bad example raises PredictError naming the example."""

    def __init__(self, directory=HERE, model=None, threads=None):
        if not os.path.isdir(directory):
            raise PredictError(f"{directory}: not a directory (--dir: an export directory of export.py)")
        config = _read_json(os.path.join(directory, "config.json"))
        report = {}
        if os.path.isfile(os.path.join(directory, "export.json")):
            report = _read_json(os.path.join(directory, "export.json"))
        try:
            self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        except (KeyError, TypeError) as e:
            raise PredictError(f"{os.path.join(directory, 'config.json')}: no label names (id2label)") from e
        self.regression = len(self.labels) == 1  # one output: a regression task
        self.texts = report.get("texts_per_example")  # 1 or 2; None (an older export): either is taken
        self.task = report.get("task")
        max_length = report.get("max_length", 128)
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise PredictError(f"{path}: no such file (is {directory} an export directory of export.py?)")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001  (tokenizers raises its own Exception type)
            raise PredictError(f"{path}: cannot be read as a tokenizer: {_first_line(e)}") from None
        self.tokenizer.enable_truncation(max_length=max_length)  # longest_first, as in training
        pad_id = config.get("pad_token_id") or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id))
        model = model or default_model()
        path = os.path.join(directory, model)
        if not os.path.isfile(path) or not model.endswith((".onnx", ".xml")):
            found = sorted(n for n in os.listdir(directory) if n.endswith((".onnx", ".xml")))
            why = "is no ONNX model (.onnx) or OpenVINO model (.xml)" if os.path.isfile(path) else "no such model"
            raise PredictError(f"{path}: {why} (--model: one of {', '.join(found) or 'none here'})")
        if model.endswith(".xml"):
            self.run, self.inputs = _openvino(path, threads)
        else:   # the session optimizations the export's graph must not get (export.json: ort_disabled_optimizers)
            self.run, self.inputs = _onnxruntime(path, threads, report.get("ort_disabled_optimizers", ()))

    def check(self, example):
        """None when `example` ((text, None) or (text, text)) can be predicted, else why not (a phrase)."""
        texts = [t for t in example if t is not None]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                return f"text {i + 1} is not a string"
            if not t.strip():
                return "empty text" if len(texts) == 1 else f"text {i + 1} of 2 is empty"
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:  # an argument with bytes that are not UTF-8 (surrogate escapes)
                return f"text {i + 1} is not UTF-8 (byte 0x{ord(t[e.start]) & 0xff:02x} at character {e.start + 1})"
        if self.texts and len(texts) != self.texts:
            task = f"{self.task} takes" if self.task else "the model takes"
            return (f"{task} a text pair (text<TAB>text), not one text" if self.texts == 2
                    else f"{task} one text, not a pair (a tab in the line?)")
        return None

    def encode(self, examples):
        """{input name: int64 array (batch, length)} for text pairs (a, b) or single texts (a, None)."""
        encs = self.tokenizer.encode_batch([a if b is None else (a, b) for a, b in examples])
        feed = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs],
                "token_type_ids": [e.type_ids for e in encs]}
        return {k: np.asarray(feed[k], dtype=np.int64) for k in self.inputs}

    def logits(self, examples):
        return self.run(self.encode(examples))

    def __call__(self, examples, batch_size=32):
        if batch_size < 1:
            raise PredictError(f"batch_size must be at least 1, not {batch_size}")
        for i, ex in enumerate(examples):
            why = self.check(ex)
            if why:
                raise PredictError(f"example {i + 1}: {why}")
        out = []
        for i in range(0, len(examples), batch_size):
            logits = self.logits(examples[i:i + batch_size]).astype(np.float64)
            if self.regression:
                out += [{"score": round(float(z[0]), 4)} for z in logits]
                continue
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out += [{"label": self.labels[int(q.argmax())],
                     "scores": {n: round(float(v), 4) for n, v in zip(self.labels, q)}} for q in p]
        return out


def default_model():
    """model_int8.onnx where onnxruntime can be imported, else openvino_model_int8.xml."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return "openvino_model_int8.xml"
    return "model_int8.onnx"


def _import(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise PredictError(f"the model needs the {name} package (pip install {name})") from None


def _onnxruntime(path, threads, disabled_optimizers=()):
    """(run: feed -> logits, input names) of an ONNX model in ONNX Runtime."""
    ort = _import("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(disabled_optimizers))
    except Exception as e:  # noqa: BLE001  (ONNX Runtime's InvalidProtobuf, Fail, ...)
        raise PredictError(f"{path}: cannot be loaded as an ONNX model: {_first_line(e)}") from None
    return (lambda feed: session.run(["logits"], feed)[0]), [i.name for i in session.get_inputs()]


def _openvino(path, threads):
    """(run: feed -> logits, input names) of an OpenVINO IR (.xml beside its .bin) on the CPU."""
    ov = _import("openvino")
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(path), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads} if threads else {})
    except Exception as e:  # noqa: BLE001  (OpenVINO raises RuntimeError with a long message)
        raise PredictError(f"{path}: cannot be loaded as an OpenVINO model: {_first_line(e)}") from None
    out = compiled.output(0)
    inputs = [i.get_any_name() for i in compiled.inputs]
    return (lambda feed: compiled(feed)[out]), inputs


def parse_line(raw, number):
    """(example, None) or (None, why) of one input line (bytes, its line ending still on)."""
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    raw = raw[:-1] if raw.endswith(b"\r") else raw
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1})"
    if not line.strip():
        return None, "empty line"
    fields = line.split("\t")
    if len(fields) > 2:
        return None, f"{len(fields)} tab-separated fields: give one text, or two separated by one tab"
    return (fields[0], fields[1] if len(fields) == 2 else None), None


def read_lines(path):
    """The raw lines (bytes) of a file, or of stdin for "-"; PredictError when it cannot be opened or read."""
    if path == "-":
        return list(sys.stdin.buffer)
    try:
        with open(path, "rb") as f:
            return list(f)
    except OSError as e:
        raise PredictError(f"{path}: cannot be read ({e.strerror or _first_line(e)}; --file: a file of "
                           "examples, one a line, or - for stdin)") from None


def predict_lines(predictor, lines, batch_size, name, strict=False):
    """Print one JSON line per input line (see the module doc); returns the (line number, why) of the lines
    that got an error line. strict: the first bad line raises PredictError (before anything is written)."""
    parsed = []
    for n, raw in enumerate(lines, 1):
        example, why = parse_line(raw, n)
        why = why or predictor.check(example)
        if why and strict:
            raise PredictError(f"{name} line {n}: {why}")
        parsed.append((n, example, why))
    bad = [(n, why) for n, _, why in parsed if why]
    for i in range(0, len(parsed), batch_size):
        chunk = parsed[i:i + batch_size]
        good = iter(predictor([ex for _, ex, why in chunk if not why], batch_size))
        for n, _, why in chunk:
            print(json.dumps({"line": n, "error": why} if why else {"line": n, **next(good)}))
        sys.stdout.flush()  # a batch at a time: a reader of a pipe sees the answers as they come
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="*", help="one example: a text, or two texts (a pair)")
    p.add_argument("--file", help="examples, one a line: text or text<TAB>text ('-': stdin)")
    p.add_argument("--strict", action="store_true", help="with --file: a bad line is an error (exit 2, nothing "
                                                         "printed) instead of an error line in its place")
    p.add_argument("--dir", default=HERE, help="the export directory (default: this file's)")
    p.add_argument("--model", default=None,
                   help="model_int8.onnx (the default) or model.onnx (fp32) in ONNX Runtime; openvino_model_int8.xml "
                        "or openvino_model.xml (default precision) in OpenVINO")
    p.add_argument("--threads", type=at_least(0), default=None,
                   help="the runtime's threads (default, or 0: all cores)")
    p.add_argument("--batch_size", type=at_least(1), default=32)
    args = p.parse_args(argv)
    if bool(args.text) == bool(args.file) or len(args.text) > 2:
        p.error("give one example (one or two texts) or --file")
    predictor = Predictor(args.dir, args.model, args.threads)
    if not args.file:
        example = (args.text[0], (args.text + [None])[1])
        why = predictor.check(example)
        if why:
            raise PredictError(f"the example given as arguments: {why}")
        print(json.dumps(predictor([example])[0]))
        return 0
    lines = read_lines(args.file)
    name = "stdin" if args.file == "-" else args.file
    bad = predict_lines(predictor, lines, args.batch_size, name, args.strict)
    if bad:
        n, why = bad[0]
        print(f"predict.py: {len(bad)} of {len(lines)} lines of {name} not predicted (an \"error\" line in their "
              f"place; the first: line {n}, {why})", file=sys.stderr)
        return 1
    return 0


def at_least(low):
    """An argparse type: an integer >= low (else argparse's one-line error naming the flag). A copy of
    modcomp.utils.at_least's integer case: this file runs where modcomp is not installed."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # the reader went away (| head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
