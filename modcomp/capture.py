"""Capture what a frozen teacher's layers see on task data, for modular training (activations.py).

Stores every layer's input (the MHA block input) for real tokens only; the trainers recompute the
block outputs from the teacher. Sequences are processed in dataset order (no sorting or shuffling),
so an interrupted capture resumes with the same command.

    python capture_data.py --task rte --data_dir ../shared/data --output_dir runs/cap_rte
"""
import argparse
import hashlib
import json
import os

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from modcomp import config, tasks
from modcomp.activations import ActivationWriter, subsample
from modeling_moddistilbert import ModDistilBertModel, resolve_model_path
from modcomp.utils import HelpFormatter, UserError, get_device, provenance, run_main, set_seed, state_dict_sha256

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--model_name_or_path", default="minilm", help="teacher: dir, hub id or `minilm`")
    tasks.add_task_arguments(p)
    p.add_argument("--data_dir", default=None, help="default: tasks.default_data_dir(task) (the repo's data/ or the hub)")
    p.add_argument("--split", default="train", help=" or ".join(tasks.SPLITS))
    p.add_argument("--output_dir", required=True)
    recipe = config.add_stage_arguments(p, "capture", argv)
    p.add_argument("--max_tokens", type=lambda v: None if v in ("", "all") else int(v),
                   default=config.capture_tokens(recipe), metavar="N|all",
                   help="a seeded random subset of the (first --capture_samples) rows holding at most N tokens "
                        "before augmentation, kept in dataset order: what a closed-form start without module "
                        "training needs (the recipe's fit_tokens plus the held-out tenth; default %(default)s; "
                        "all: every token)")
    p.add_argument("--shard_sequences", type=int, default=2048)
    p.add_argument("--overwrite", action="store_true", help="discard whatever capture is in --output_dir")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    for name, lo in (("max_length", 2), ("augment", 0), ("batch_size", 1), ("max_samples", 1), ("max_tokens", 1),
                     ("shard_sequences", 1)):
        v = getattr(a, name)
        if v is not None and v < lo:
            raise UserError(f"--{name} must be >= {lo}, got {v}")
    if not 0.0 <= a.aug_p <= 1.0:
        raise UserError(f"--aug_p must be in [0, 1], got {a.aug_p}")
    if a.data_dir is not None and not os.path.isdir(a.data_dir):
        raise UserError(f"--data_dir {a.data_dir}: directory not found")
    return a


def main(argv=None):
    a = parse_args(argv)
    set_seed(a.seed)
    task = tasks.task_from_args(a)
    data_dir = a.data_dir or tasks.default_data_dir(task)
    rows = tasks.load_rows(task, a.split, data_dir)[:a.max_samples]
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(a.model_name_or_path))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of {a.model_name_or_path!r}: {str(e).splitlines()[0]}") from None
    c = task.num_choices or 1
    flat = (lambda v: [s for ex in v for s in ex]) if task.num_choices else (lambda v: v)
    if a.max_tokens is not None:
        ids = tasks.encode(task, rows, tokenizer, a.max_length)["input_ids"]
        per_row = [sum(map(len, x)) if task.num_choices else len(x) for x in ids]
        rows = [rows[i] for i in subsample(per_row, torch.arange(len(rows)), a.max_tokens, a.seed).tolist()]
    n_examples = len(rows)
    if a.augment:
        from modcomp.augment import augment_examples, neighbours_for
        rows = augment_examples(rows, a.augment, neighbours_for(a.model_name_or_path, a.glove), a.seed, p=a.aug_p)
    enc = tasks.encode(task, rows, tokenizer, a.max_length)
    ids = flat(enc["input_ids"])
    types = flat(enc["token_type_ids"]) if "token_type_ids" in enc else None
    example_ids = [r["idx"] for r in rows for _ in range(c)]
    copies = [r.get("aug_copy", 0) for r in rows for _ in range(c)]
    digest = hashlib.sha256(json.dumps([ids, types, example_ids, copies]).encode()).hexdigest()

    device = get_device(a.device)
    model = ModDistilBertModel.from_teacher(a.model_name_or_path).to(device).eval()
    cfg = model.config
    settings = {"model": a.model_name_or_path, "task": task.name, "split": a.split, "max_length": a.max_length,
                "augment": a.augment, "aug_p": a.aug_p if a.augment else None,
                "glove": a.glove if a.augment else None, "seed": a.seed, "dtype": a.dtype,
                "max_samples": a.max_samples, "max_tokens": a.max_tokens, "shard_sequences": a.shard_sequences,
                "inputs_sha256": digest,
                "teacher_sha256": state_dict_sha256(model)}  # the trainers check it: no targets from another teacher
    fields = {"model": a.model_name_or_path, "task": task.name, "split": a.split,
              "num_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "max_length": a.max_length,
              "augment": a.augment, "seed": a.seed, "data_dir": data_dir, "batch_size": a.batch_size,
              "n_examples": n_examples, "n_sequences_expected": len(ids), "settings": settings,
              "provenance": provenance(device)}  # beside settings, not in them: resuming compares settings only
    writer = ActivationWriter(a.output_dir, fields, a.shard_sequences, DTYPES[a.dtype], overwrite=a.overwrite)
    if writer.already_complete:
        print(f"{a.output_dir}: capture already complete")
        return
    if writer.n_stored:
        print(f"resuming: {writer.n_stored} of {len(ids)} sequences already stored")
    B = a.batch_size
    first = writer.n_stored // B * B  # the same batches as an uninterrupted run: identical numerics
    pad = tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for s in tqdm(range(first, len(ids), B), desc=f"capture {task.name}", disable=None):
            batch = ids[s:s + B]
            T = max(len(x) for x in batch)
            lengths = torch.tensor([len(x) for x in batch])
            inp = torch.tensor([x + [pad] * (T - len(x)) for x in batch], device=device)
            mask = (torch.arange(T)[None, :] < lengths[:, None]).long().to(device)
            tt = None if types is None else torch.tensor([x + [0] * (T - len(x)) for x in types[s:s + B]], device=device)
            hidden = model(inp, mask, tt, output_hidden_states=True).hidden_states
            writer.add(list(hidden[:-1]), lengths, example_ids[s:s + B], copies[s:s + B], start=s)
    writer.close()


if __name__ == "__main__":
    run_main(main)
