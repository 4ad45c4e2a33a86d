"""Predict with a model exported by export.py: needs only onnxruntime, tokenizers and numpy (no torch, no
transformers). export.py copies this file into the export directory, where it finds its model by itself:

    python predict.py "A man is playing a guitar." "A man plays the guitar."     # one text pair (or one text)
    python predict.py --file pairs.tsv          # one example a line: text, or text<TAB>text; "-": stdin
    python predict.py --dir runs/deploy/stsb --model model.onnx ...                # from elsewhere; fp32

One JSON line per example: {"label": name, "scores": {name: probability}} for a classification task,
{"score": value} for a regression task (STS-B). The texts go in as the task formats them (tasks.py
format_example: WiC and WSC mark their words with * and _; COPA, multiple choice, is not exported).
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


class Predictor:
    """The exported model and its tokenizer: predictor(examples) -> one dict per example (see the module doc)."""

    def __init__(self, directory=HERE, model="model_int8.onnx", threads=None):
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        max_length = 128
        if os.path.isfile(os.path.join(directory, "export.json")):
            with open(os.path.join(directory, "export.json"), encoding="utf-8") as f:
                max_length = json.load(f).get("max_length", max_length)
        self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        self.regression = len(self.labels) == 1  # one output: a regression task
        self.tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)  # longest_first, as in training
        pad_id = config.get("pad_token_id") or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.path.join(directory, model), opts,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, examples):
        """{input name: int64 array (batch, length)} for text pairs (a, b) or single texts (a, None)."""
        encs = self.tokenizer.encode_batch([a if b is None else (a, b) for a, b in examples])
        feed = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs],
                "token_type_ids": [e.type_ids for e in encs]}
        return {k: np.asarray(feed[k], dtype=np.int64) for k in self.inputs}

    def logits(self, examples):
        return self.session.run(["logits"], self.encode(examples))[0]

    def __call__(self, examples, batch_size=32):
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


def read_examples(path):
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with f:
        lines = [line.rstrip("\r\n") for line in f if line.strip()]
    return [tuple(line.split("\t", 1)) if "\t" in line else (line, None) for line in lines]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="*", help="one example: a text, or two texts (a pair)")
    p.add_argument("--file", help="examples, one a line: text or text<TAB>text ('-': stdin)")
    p.add_argument("--dir", default=HERE, help="the export directory (default: this file's)")
    p.add_argument("--model", default="model_int8.onnx", help="model_int8.onnx (default) or model.onnx (fp32)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args(argv)
    if bool(args.text) == bool(args.file) or len(args.text) > 2:
        p.error("give one example (one or two texts) or --file")
    examples = read_examples(args.file) if args.file else [(args.text[0], (args.text + [None])[1])]
    for out in Predictor(args.dir, args.model, args.threads)(examples, args.batch_size):
        print(json.dumps(out))


if __name__ == "__main__":
    main()
