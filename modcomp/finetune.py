"""Fine-tune and evaluate one task for one seed: model building, the training loop and results.json.

run_superglue.py is the command line over this module."""
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import (AutoConfig, AutoModelForMultipleChoice, AutoModelForSequenceClassification,
                          AutoTokenizer, get_linear_schedule_with_warmup)
from transformers.modeling_outputs import MultipleChoiceModelOutput

from modcomp import tasks as T
from modcomp.allocation import encoder_macs
from modcomp.compression import compress, load_modules, module_dims, module_heads, module_removed_layers
from modcomp.distill import EXAMPLE_INDEX
from modeling_moddistilbert import (SUPPORTED_TEACHERS, TEACHER_ARCHITECTURES, ModDistilBertForMultipleChoice,
                                    ModDistilBertForSequenceClassification, resolve_model_path)
from modcomp.utils import (UserError, best_epoch, file_sha256, model_weights, state_dict_sha256,
                           written_atomically)

OUR_TEACHERS = tuple(TEACHER_ARCHITECTURES)  # loaded into our own model class, which can be compressed
MACS_LENGTH = 128  # tokens at which results.json counts the encoder's multiply-adds (what --compression budgets)


class ScoreEachChoice(torch.nn.Module):
    """Multiple choice for architectures without a multiple-choice head (e.g. T5): a one-logit
    sequence-classification head scores every (context, choice) pair; softmax over choices."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids, attention_mask=None, labels=None, **kw):
        B, C = input_ids.shape[:2]
        kw = {k: v.reshape(B * C, -1) for k, v in kw.items() if v is not None}
        logits = self.model(input_ids=input_ids.reshape(B * C, -1),
                            attention_mask=attention_mask.reshape(B * C, -1), **kw).logits.view(B, C)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return MultipleChoiceModelOutput(loss=loss, logits=logits)

    def save_pretrained(self, path, **kw):
        self.model.save_pretrained(path, **kw)


def build_model(name_or_path, task, compression=None, init="svd", modules_dir=None, hf_model=False,
                allow_partial_modules=False, seed=None):
    """Returns (model, tokenizer, info). Teachers of OUR_TEACHERS (BERT, DistilBERT, RoBERTa, XLM-RoBERTa, ELECTRA)
    become our ModDistilBERT (compressible); a saved ModDistilBERT loads as is; any other architecture uses its own
    Hugging Face class, uncompressed.
    `seed`: of the random start's per-block generators (compression.compress)."""
    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {name_or_path!r}: {str(e).splitlines()[0]}") from e
    if os.path.isdir(path):  # a saved model: its weights there, whole and not a pickle (else a traceback below)
        model_weights(path)
    mc = task.kind == "multiple_choice"
    num_labels = 1 if mc else task.num_labels
    ours = config.model_type in OUR_TEACHERS and not hf_model
    if ours:
        cls = ModDistilBertForMultipleChoice if mc else ModDistilBertForSequenceClassification
        model = cls.from_teacher(name_or_path, num_labels=num_labels)
    elif config.model_type == "moddistilbert":
        auto = AutoModelForMultipleChoice if mc else AutoModelForSequenceClassification
        model = auto.from_pretrained(path, num_labels=num_labels, ignore_mismatched_sizes=True)
        if getattr(config, "finetuning_task", None) != task.name:  # another task's (or no) head: start it afresh
            torch.nn.init.normal_(model.classifier.weight, std=model.config.initializer_range)
            torch.nn.init.zeros_(model.classifier.bias)
    else:
        if compression or modules_dir:
            raise UserError(f"--compression/--modules_dir need a {SUPPORTED_TEACHERS} model, "
                            f"not {config.model_type!r}")
        model = _hf_model(path, config, mc, num_labels)
    if modules_dir and not compression:
        raise UserError("--modules_dir needs --compression (the modules are low-rank blocks)")
    teacher_sha = state_dict_sha256(model.base_model) if modules_dir else None  # before compressing
    macs_before = encoder_macs(model.config, MACS_LENGTH) if hasattr(model.config, "attn_dims") else None
    if compression and init == "data" and not modules_dir:
        raise UserError("--init data: the closed-form blocks come from the module stage (mha_modular.py / "
                        "ffn_modular.py); give their --modules_dir (or --compression 1: the uncompressed model)")
    if compression:  # an allocated modules dir's blocks have their own sizes (any c, even beyond uniform sizes)
        dims = module_dims(modules_dir, model.config.num_hidden_layers) if modules_dir else None
        heads = module_heads(modules_dir) if modules_dir else None   # a latency budget's heads per layer
        removed = module_removed_layers(modules_dir) if modules_dir else None   # layers it removes whole
        compress(model, compression, "svd" if init == "data" else init, seed=seed, dims=dims,
                 heads=heads, removed_layers=removed)  # data: the modules
    modules, missing = None, []
    if modules_dir:
        names, missing = load_modules(model, modules_dir, teacher_sha, allow_partial_modules, task=task.name)
        modules = {n: file_sha256(os.path.join(modules_dir, n)) for n in names}
    if tokenizer.pad_token_id is None:
        raise UserError(f"tokenizer of {name_or_path!r} has no padding token")
    # the pretrained model a saved checkpoint of ours descends from (a fine-tuned baseline records "minilm")
    base_model = getattr(model.config, "teacher", None) if config.model_type == "moddistilbert" else None
    info = {"base_model": base_model or name_or_path, "architecture": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "modules": sorted(modules) if modules else None, "modules_sha256": modules,
            "modules_missing": [f"layer{l:02d}_{k}" for l, k in missing] or None,
            "macs": macs_record(model.config, macs_before)}
    return model, tokenizer, info


def macs_record(config, uncompressed):
    """The encoder's multiply-adds at MACS_LENGTH tokens, with the uncompressed model's and their ratio (what
    --compression budgets); None for a model of another architecture."""
    if uncompressed is None:
        return None
    used = encoder_macs(config, MACS_LENGTH)
    return {"length": MACS_LENGTH, "encoder_macs": used, "uncompressed_encoder_macs": uncompressed,
            "achieved_compression": uncompressed / used if used else None,
            "attn_dims": list(config.attn_dims), "ffn_dims": list(config.ffn_dims)}


def _hf_model(path, config, mc, num_labels):
    try:
        if mc:
            try:
                return AutoModelForMultipleChoice.from_pretrained(path)
            except ValueError:  # no multiple-choice head for this architecture: score each choice
                return ScoreEachChoice(AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=1, ignore_mismatched_sizes=True))
        # a checkpoint may carry another task's head (e.g. 2 labels where stsb needs 1): re-initialise it
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                  ignore_mismatched_sizes=True)
    except ValueError as e:
        raise UserError(f"unsupported architecture {config.model_type!r}: {str(e).splitlines()[0]}") from e


def _model_inputs(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, loader, task, device):
    model.eval()
    preds, labels = [], []
    for batch in loader:
        batch = _model_inputs(batch, device)
        y = batch.pop("labels")
        preds.append(model(**batch).logits.float().cpu().numpy())
        labels.append(y.cpu().numpy())
    metrics = T.compute_metrics(task, np.concatenate(preds), np.concatenate(labels))
    return {**metrics, "score": T.task_score(task, metrics)}


# ------------------------------------------------------------------ per-epoch checkpoints (resume)
CHECKPOINT = "checkpoint"


def _sampler_generator(loader):
    sampler = loader.batch_sampler
    return getattr(sampler, "gen", None) or loader.generator


def _jsonable(d):
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            pass
    return out


def save_checkpoint(path, model, opt, sched, loader, epochs, identity):
    """Everything a killed run needs to continue after the last finished epoch: model, AdamW state, scheduler,
    the torch and batch-order RNG states (safetensors), the epochs so far and the run's identity (JSON)."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_sd = opt.state_dict()
    for i, st in opt_sd["state"].items():
        for k, v in st.items():
            tensors[f"opt/{i}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators (as HF's Trainer saves them)
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    gen = _sampler_generator(loader)
    if gen is not None:
        tensors["rng/sampler"] = gen.get_state()
    meta = {"identity": identity, "epochs": epochs, "param_groups": opt_sd["param_groups"],
            "scheduler": _jsonable(sched.state_dict())}
    with written_atomically(path, directory=True) as tmp:
        save_file(tensors, os.path.join(tmp, "state.safetensors"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(meta, f)


def read_checkpoint(path, model, opt):
    """(meta, tensors) of what save_checkpoint wrote, checked against the model and optimizer before anything
    is changed; raises (OSError, ValueError, safetensors' errors, ...) when it is truncated, corrupt or of
    another model."""
    with open(os.path.join(path, "state.json")) as f:
        meta = json.load(f)
    with safe_open(os.path.join(path, "state.safetensors"), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    own = model.state_dict()
    saved = {k[len("model/"):]: v for k, v in t.items() if k.startswith("model/")}
    if set(saved) != set(own) or any(saved[k].shape != v.shape for k, v in own.items()):
        raise ValueError("its model tensors differ from this model's")
    if [len(g["params"]) for g in meta["param_groups"]] != [len(g["params"]) for g in opt.param_groups]:
        raise ValueError("its optimizer groups differ from this run's")
    if not isinstance(meta["epochs"], list) or "rng/torch" not in t:
        raise ValueError("it lacks its epochs or RNG state")
    return meta, t


def restore_checkpoint(meta, t, model, opt, sched, loader):
    """Restore what read_checkpoint returned; returns the epochs done so far."""
    model.load_state_dict({k[len("model/"):]: v for k, v in t.items() if k.startswith("model/")})
    state = {}
    for k, v in t.items():
        if k.startswith("opt/"):
            _, i, name = k.split("/", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict({**sched.state_dict(), **meta["scheduler"]})
    torch.set_rng_state(t["rng/torch"])
    cuda = [t[f"rng/cuda/{i}"] for i in range(sum(k.startswith("rng/cuda/") for k in t))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    gen = _sampler_generator(loader)
    if gen is not None and "rng/sampler" in t:
        gen.set_state(t["rng/sampler"])
    return meta["epochs"]


def resume(path, model, opt, sched, loader, identity):
    """The epochs a checkpoint at `path` has done, restored into model, optimizer, scheduler and RNGs, when it
    belongs to this run (the same identity: settings and input fingerprints); else, or when it cannot be read
    (truncated by a kill or a full disk, corrupt), one warning line, the checkpoint removed and [] (the run
    starts over)."""
    try:
        with open(os.path.join(path, "state.json")) as f:
            same = json.load(f)["identity"] == identity
        checkpoint = read_checkpoint(path, model, opt) if same else None
    except Exception as e:  # noqa: BLE001  (whatever a damaged file raises: safetensors, JSON, KeyError, ...)
        same, checkpoint = None, None
        why = f"cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
    if checkpoint is not None:  # read and checked whole: nothing above has changed the model
        epochs = restore_checkpoint(*checkpoint, model, opt, sched, loader)
        print(f"resuming from {path} after epoch {len(epochs)}")
        return epochs
    if same is False:
        why = "belongs to a run with other settings or inputs"
    print(f"warning: checkpoint {path} {why}: starting this run over", file=sys.stderr)
    shutil.rmtree(path)
    return []


def train_and_evaluate(model, tokenizer, task, train_rows, eval_rows, args, device, distiller=None,
                       checkpoint_dir=None, identity=None):
    """AdamW + linear decay, evaluation after every epoch. Returns the list of per-epoch metric dicts.
    With a distill.Distiller, the training loss is its combination of task and teacher terms.
    With checkpoint_dir, a checkpoint is written after every epoch, and one found there with the same
    `identity` is resumed from (the same scores as an uninterrupted run, on the CPU)."""
    pad = tokenizer.pad_token_id
    train = T.encode(task, train_rows, tokenizer, args.max_length)
    dev = T.encode(task, eval_rows, tokenizer, args.max_length)
    if distiller is not None:
        train[EXAMPLE_INDEX] = list(range(len(train["labels"])))
        distiller.cache_logits(T.make_loader(train, args.eval_batch_size, False, pad), len(train["labels"]))
    train_loader = T.make_loader(train, args.batch_size, True, pad, args.seed,
                                 group_by_length=not args.no_group_by_length)
    eval_loader = T.make_loader(dev, args.eval_batch_size, False, pad, args.seed)
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps = args.epochs * len(train_loader)
    sched = get_linear_schedule_with_warmup(opt, int(args.warmup_ratio * steps), steps)
    epochs = []
    if checkpoint_dir and os.path.isdir(checkpoint_dir):
        epochs = resume(checkpoint_dir, model, opt, sched, train_loader, identity)
    for epoch in range(len(epochs) + 1, args.epochs + 1):
        model.train()
        total, n, t0 = 0.0, 0, time.time()
        bar = tqdm(train_loader, desc=f"{task.name} epoch {epoch}/{args.epochs}", leave=False)
        for batch in bar:
            idx = batch.pop(EXAMPLE_INDEX, None)
            inputs = _model_inputs(batch, device)
            loss = model(**inputs).loss if distiller is None else distiller.loss(model, inputs, idx)[0]
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss is {loss.item()} at epoch {epoch}: lower --lr?")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
            bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)  # refresh=True would show a stale count
        metrics = evaluate(model, eval_loader, task, device)
        epochs.append({"epoch": epoch, "train_loss": total / max(n, 1), **metrics,
                       "seconds": round(time.time() - t0, 2)})
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        tqdm.write(f"[{task.name} seed {args.seed}] epoch {epoch}: {shown}")
        if checkpoint_dir and epoch < args.epochs:
            save_checkpoint(checkpoint_dir, model, opt, sched, train_loader, epochs, identity)
    return epochs


def summarize(epochs):
    """The paper's selection (best validation epoch) and the honest one (last epoch). An epoch whose score is
    NaN (e.g. constant stsb predictions) is never the best; when no epoch has a score, best_epoch is None."""
    best = best_epoch(epochs) or {"epoch": None, "score": None}
    return {"best_epoch": best["epoch"], "best_score": best["score"], "last_score": epochs[-1]["score"]}


def label_config(model, task):
    """Record the task and its label names in the config, so that `pipeline(...)` answers with them
    (not LABEL_1) and a later run can tell whether the fine-tuned head belongs to its task."""
    config = model.config
    config.finetuning_task = task.name
    if task.benchmark == "files":   # your own task: what rebuilds it (its files, columns, labels) in export.py
        config.user_task = dict(T.user_data.spec(task), label_names=list(task.label_names))
    if task.kind == "classification":
        config.id2label = dict(enumerate(task.label_names))
        config.label2id = {n: i for i, n in enumerate(task.label_names)}
    elif task.kind == "regression":
        config.id2label, config.label2id = {0: "score"}, {"score": 0}


def save_model(model, tokenizer, path, task=None):
    """Hugging Face format (safetensors + config + tokenizer), written beside then renamed, its files with the
    umask's permissions (save_pretrained alone writes model.safetensors 0600; see written_atomically). Our
    ModDistilBERT also writes its model code there and names it in the config's auto_map (see its
    save_pretrained), so the directory loads outside this repo with `trust_remote_code=True`."""
    if task is not None:
        label_config(model, task)
    with written_atomically(path, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
