"""Fine-tune and evaluate one task for one seed; writes OUTPUT_DIR/results.json (and the model, HF format).

    python run_superglue.py --model_name_or_path minilm --task rte --data_dir ../shared/data \
        --output_dir runs/rte/baseline/seed1 --seed 1
    python run_superglue.py ... --compression 2 --init svd                 # compressed, SVD start
    python run_superglue.py ... --compression 2 --modules_dir runs/rte/modules   # modular (trained blocks)
"""
import argparse
import json
import math
import os
import shutil
import time

import torch

from modcomp import config
from modcomp import tasks as T
from modcomp.distill import Distiller, check_given_teacher, check_teacher, weights_sha256
from modcomp.finetune import CHECKPOINT, build_model, evaluate, save_model, summarize, train_and_evaluate
from modeling_moddistilbert import resolve_model_path
from modcomp.utils import (HelpFormatter, UserError, atomic_write_json, file_sha256, get_device, provenance, run_main,
                   set_seed)


def parse_args(argv=None):
    """The recipe's fine-tune fields (config.py: their defaults the --config recipe's), the paths and the run's
    switches. --compression 1 is the uncompressed model (the baseline)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    T.add_task_arguments(p)
    p.add_argument("--data_dir", default=None, help="official files; default: repo data/ if it has the task, else the hub")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=1, help="the fine-tuning seed (the pipeline's --seed)")
    recipe = config.add_stage_arguments(p, "finetune", argv, skip=("compression",))
    p.add_argument("--compression", type=float, default=None,
                   help=f"divide the encoder's multiply-adds by C (recipe field compression): default the recipe's "
                        f"({recipe['compression']:g}) with --modules_dir, else none: the uncompressed model (also "
                        "--compression 1)")
    p.add_argument("--modules_dir", default=None, help="the low-rank blocks (mha_modular.py / ffn_modular.py)")
    p.add_argument("--allow_partial_modules", action="store_true",
                   help="accept a --modules_dir lacking some blocks (they keep their --init start; variant 'modular-partial')")
    p.add_argument("--variant", default=None, help="row label for consolidate.py (default: baseline/modular/INIT)")
    p.add_argument("--no_group_by_length", action="store_true",
                   help="plain shuffled batches (default: batches of similar length, less padding)")
    p.add_argument("--hf_model", action="store_true", help="use transformers' own class even for an architecture our model takes (the uncompressed model only)")
    p.add_argument("--no_save_model", action="store_true", help="do not save the fine-tuned model")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in OUTPUT_DIR (its results.json and model/ are replaced only once "
                        "this run has finished)")
    p.add_argument("--resume", action="store_true",
                   help="reuse a finished run with the same settings and inputs (one of other settings or inputs is "
                        "an error: another --output_dir, or --overwrite), and continue an unfinished one of the same "
                        "from its last epoch checkpoint (OUTPUT_DIR/checkpoint)")
    p.add_argument("--recipe", default=None, metavar="JSON",
                   help='the recipe this run belongs to, {"name": ..., "fields": {...}}: recorded in results.json '
                        "and part of the run's identity (the workflow passes it)")
    p.add_argument("--eval_only", action="store_true",
                   help="evaluate the model as it is, no training (an already fine-tuned classifier given as the "
                        "teacher: its score is the baseline row; its head must fit the task); the model is not saved")
    p.add_argument("--distill_from", default=None, metavar="DIR",
                   help="distil from this fine-tuned uncompressed model of the same task (distill.py)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.compression is None and args.modules_dir:
        args.compression = float(recipe["compression"])
    if args.compression == 1:   # the uncompressed model: recorded as no compression (as every baseline is)
        args.compression = None
    return args


def check_args(args):
    """Every bad number or path of the command line as one line, before anything is read, built or replaced."""
    finite = lambda x: x is not None and math.isfinite(x)
    bad = [msg for ok, msg in [
        (args.epochs >= 1, f"--epochs must be at least 1 (got {args.epochs})"),
        (0 <= args.seed < 2 ** 32, f"--seed must be in [0, 2^32) (got {args.seed})"),
        (finite(args.lr) and args.lr > 0, f"--lr must be a number > 0 (got {args.lr})"),
        (args.batch_size >= 1 and args.eval_batch_size >= 1,
         f"--batch_size and --eval_batch_size must be at least 1 (got {args.batch_size}, {args.eval_batch_size})"),
        (args.max_train_samples is None or args.max_train_samples >= 1,
         f"--max_train_samples must be at least 1 (got {args.max_train_samples})"),
        (args.max_eval_samples is None or args.max_eval_samples >= 1,
         f"--max_eval_samples must be at least 1 (got {args.max_eval_samples})"),
        (args.compression is None or (finite(args.compression) and args.compression >= 1),
         f"--compression must be a number >= 1 (got {args.compression}; leave it out for the uncompressed model)"),
        (finite(args.weight_decay) and args.weight_decay >= 0,
         f"--weight_decay must be >= 0 (got {args.weight_decay})"),
        (finite(args.warmup_ratio) and 0 <= args.warmup_ratio <= 1,
         f"--warmup_ratio must be in [0, 1] (got {args.warmup_ratio})"),
        (finite(args.max_grad_norm) and args.max_grad_norm > 0,
         f"--max_grad_norm must be > 0 (got {args.max_grad_norm})"),
        (args.threads is None or args.threads >= 1, f"--threads must be at least 1 (got {args.threads})"),
    ] if not ok]
    if bad:
        raise UserError("; ".join(bad))
    args.recipe = parse_recipe(args.recipe)
    if args.eval_only:
        if args.compression or args.modules_dir or args.distill_from:
            raise UserError("--eval_only evaluates a model as it is: no --compression, --modules_dir or --distill_from")
        check_given_teacher(args.model_name_or_path, T.get_task(args.task))
    if args.distill_from:
        check_teacher(args.distill_from, T.get_task(args.task), args.distill_alpha, args.distill_temperature,
                      args.distill_beta)


def parse_recipe(text):
    """--recipe's JSON object {"name": str, "fields": {...}}, recorded as given (None without --recipe)."""
    if text is None:
        return None
    try:
        recipe = json.loads(text)
    except ValueError as e:
        raise UserError(f"--recipe is not JSON ({e})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("name"), str) \
            or not isinstance(recipe.get("fields"), dict):
        raise UserError(f'--recipe must be a JSON object {{"name": ..., "fields": {{...}}}}, got {text!r}')
    return recipe


def main(argv=None):
    args = parse_args(argv)
    task = T.task_from_args(args)
    args.task = task.name
    check_args(args)
    results_path = os.path.join(args.output_dir, "results.json")
    checkpoint_dir = os.path.join(args.output_dir, CHECKPOINT)
    if os.path.exists(results_path) and not (args.overwrite or args.resume):
        raise UserError(f"{results_path} holds a finished run; pass --overwrite, --resume or another --output_dir")
    data_dir = args.data_dir or T.default_data_dir(task)
    train_all = T.load_rows(task, "train", data_dir)
    eval_all = T.load_rows(task, "validation", data_dir)
    train_rows, eval_rows = train_all[: args.max_train_samples], eval_all[: args.max_eval_samples]
    data = {"train_data": T.data_fingerprint(task, "train", data_dir, train_all),
            "validation_data": T.data_fingerprint(task, "validation", data_dir, eval_all)}
    identity = run_identity(args, data)
    if os.path.exists(results_path):  # never deleted here: replaced only once this run's result is written
        stored = stored_identity(results_path)
        if args.resume and stored == identity:
            print(f"{results_path}: finished with the same settings and inputs; nothing to do")
            return
        if not args.overwrite:
            raise UserError(f"{results_path} holds a finished run of other settings or inputs "
                            f"({identity_difference(stored, identity)}); use another --output_dir, or "
                            "--overwrite to replace it")
        print(f"{results_path} holds a finished run: replaced once this one has finished (--overwrite)")
    if args.threads:
        torch.set_num_threads(args.threads)

    set_seed(args.seed)
    device = get_device(args.device)
    model, tokenizer, info = build_model(args.model_name_or_path, task, args.compression, args.init,
                                         args.modules_dir, args.hf_model, args.allow_partial_modules, args.seed)
    distiller = None
    if args.distill_from:
        distiller = Distiller(args.distill_from, task, args.distill_alpha, args.distill_temperature,
                              args.distill_beta, device)
    variant = args.variant or ("baseline" if not args.compression
                               else ("modular-partial" if info["modules_missing"] else "modular")
                               if args.modules_dir else args.init)
    if distiller is not None and not args.variant:
        variant += "+kd"
    print(f"{task.name}: {info['architecture']} ({variant}), {info['params']:,} parameters, "
          f"{len(train_rows)} train / {len(eval_rows)} validation rows, device {device}")
    if not args.resume and os.path.isdir(checkpoint_dir):
        shutil.rmtree(checkpoint_dir)
    t0 = time.time()
    if args.eval_only:   # the model as it is: one evaluation, epoch 0
        epochs = [{"epoch": 0, **evaluate_rows(model, tokenizer, task, eval_rows, args, device)}]
    else:
        epochs = train_and_evaluate(model, tokenizer, task, train_rows, eval_rows, args, device, distiller,
                                    checkpoint_dir, identity)
    record = {
        "task": task.name, "task_metrics": list(task.metrics),
        "task_spec": T.user_data.spec(task) if task.benchmark == "files" else None,
        "model": args.model_name_or_path, "base_model": info["base_model"], "variant": variant,
        "compression": args.compression, "init": args.init if args.compression else None,
        "seed": args.seed, "params": info["params"], "architecture": info["architecture"],
        "modules": info["modules"], "modules_dir": args.modules_dir, "modules_sha256": info["modules_sha256"],
        "modules_missing": info["modules_missing"], "macs": info["macs"],
        "data_dir": data_dir or "hub", "distill": distiller.info if distiller else None,
        "n_train": len(train_rows), "n_eval": len(eval_rows),
        "settings": {k: v for k, v in vars(args).items()}, "device": str(device),
        "seconds": round(time.time() - t0, 1), "epochs": epochs, **summarize(epochs),
        "recipe": args.recipe, "provenance": provenance(device), "identity": identity,
    }
    # the old result goes only now, and first: a kill from here on leaves no result (a rerun redoes it), never an
    # old results.json beside a new model/ or a new one beside an old model/
    if os.path.exists(results_path):
        os.unlink(results_path)
    model_dir = os.path.join(args.output_dir, "model")
    if not args.no_save_model and not args.eval_only:
        save_model(model, tokenizer, model_dir, task)
    elif os.path.isdir(model_dir):
        shutil.rmtree(model_dir)  # an earlier run's model is not this result's
    atomic_write_json(results_path, record)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    print(f"{task.name} seed {args.seed}: best epoch {record['best_epoch']} score {_fmt(record['best_score'])} "
          f"(paper's selection), last epoch score {_fmt(record['last_score'])} -> {results_path}")


VOLATILE = ("output_dir", "overwrite", "resume", "threads", "device", "no_save_model", "eval_batch_size", "config")


def evaluate_rows(model, tokenizer, task, rows, args, device):
    """The validation metrics of a model as it is (finetune.evaluate over the task's encoded rows)."""
    dev = T.encode(task, rows, tokenizer, args.max_length)
    loader = T.make_loader(dev, args.eval_batch_size, False, tokenizer.pad_token_id, args.seed)
    model.to(device)
    metrics = evaluate(model, loader, task, device)
    print(f"[{task.name}] evaluated as it is: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def run_identity(args, data=None):
    """What a finished run (or a checkpoint) must share with this one to be reused by --resume: every setting
    that changes the result (--recipe included), the data it reads (`data`: tasks.data_fingerprint of the train
    and validation splits) and the weights it starts from (module files, a local model's and a distillation
    teacher's)."""
    inputs = dict(data or {})
    if args.modules_dir and os.path.isdir(args.modules_dir):
        inputs["modules"] = {n: file_sha256(os.path.join(args.modules_dir, n))
                             for n in sorted(os.listdir(args.modules_dir)) if n.endswith(".safetensors")}
    path = resolve_model_path(args.model_name_or_path)
    if os.path.isdir(path):
        inputs["model"] = weights_sha256(path)
    if args.distill_from:
        inputs["distill_from"] = weights_sha256(args.distill_from)
    unused = set(VOLATILE)
    if not args.compression:    # the uncompressed model: no start of low-rank blocks
        unused |= {"init"}
    if not args.distill_from:   # no distillation: its weights are no setting
        unused |= {"distill_alpha", "distill_temperature", "distill_beta"}
    return {"settings": {k: v for k, v in vars(args).items() if k not in unused}, "inputs": inputs}


def identity_difference(old, new):
    """What differs between a stored identity and this run's, in one line: 'lr 2e-05 -> 5e-05, train_data'."""
    if not isinstance(old, dict):
        return "it records no settings"
    diff = []
    for part in ("settings", "inputs"):
        was, now = old.get(part) or {}, new[part]
        for k in sorted(set(was) | set(now)):
            if was.get(k) != now.get(k):
                diff.append(f"{k} {was.get(k)!r} -> {now.get(k)!r}" if part == "settings" else f"{k} changed")
    return ", ".join(diff) or "other fields"


def stored_identity(results_path):
    try:
        with open(results_path) as f:
            return json.load(f).get("identity")
    except (OSError, ValueError):
        return None


def _fmt(score):
    """A score for the summary line; n/a when undefined (None or NaN: e.g. constant stsb predictions)."""
    return "n/a" if score is None or score != score else f"{score:.2f}"


if __name__ == "__main__":
    run_main(main)
