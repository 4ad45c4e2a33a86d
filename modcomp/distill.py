"""Knowledge distillation while fine-tuning (run_superglue.py --distill_from DIR).

DIR is a fine-tuned, uncompressed model of the same task (e.g. a baseline run saved with its `model/`).
The loss of every training batch becomes

    alpha * task loss + (1 - alpha) * soft loss + beta * sum over hidden states of their MSE (real tokens)

soft loss: T^2 * KL(teacher || student) of the logits softened by the temperature T (classification and
multiple choice), or the MSE between the two predictions (regression, STS-B). The compressed model keeps the
hidden size and the number of layers, so the hidden states compare one to one, no projection.

With beta = 0 the teacher's logits are computed once, before training, for every training example (the
teacher is frozen and in eval mode, so they never change); with beta > 0 the teacher runs beside the student
on every batch.
"""
import math
import os

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForMultipleChoice, AutoModelForSequenceClassification

import modeling_moddistilbert  # noqa: F401  (registers our model type with the Auto classes)
from modcomp.utils import UserError, file_sha256, model_weights
from modeling_moddistilbert import is_sequence_classifier, resolve_model_path

EXAMPLE_INDEX = "example_index"  # batch key: position of each example in the training set


def weights_sha256(path):
    """sha256 of a saved model's weights file (model.safetensors, or the index of a sharded save)."""
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.isfile(os.path.join(path, name)):
            return file_sha256(os.path.join(path, name))
    return None


def check_teacher(path, task, alpha=0.5, temperature=2.0, beta=0.0):
    """The config of a --distill_from model once it is known to be one: a directory holding a model fine-tuned
    on `task` (its config's finetuning_task, and for one-score-per-example tasks its num_labels), uncompressed;
    a UserError otherwise (a model never fine-tuned would be distilled towards its random head). Reads only
    config.json: run_superglue.py calls it before any work."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--distill_alpha must be in [0, 1], got {alpha}")
    if not (temperature > 0 and beta >= 0 and math.isfinite(temperature) and math.isfinite(beta)):
        raise UserError(f"--distill_temperature must be > 0 and --distill_beta >= 0 (got {temperature}, {beta})")
    if not os.path.isdir(path):
        raise UserError(f"--distill_from {path}: no such directory (a model fine-tuned on {task.name} by "
                        "run_superglue.py: its OUTPUT_DIR/model)")
    config = _config(path, "--distill_from")
    done = getattr(config, "finetuning_task", None)
    if done is None and not is_sequence_classifier(config):
        raise UserError(f"--distill_from {path} was never fine-tuned (its config names no finetuning_task and it is "
                        f"no sequence classifier): its head is random; distil from a model fine-tuned on {task.name}")
    if done is not None and done != task.name:
        raise UserError(f"--distill_from {path} was fine-tuned on {done}, not {task.name}")
    return _fits(config, path, task, "--distill_from")


def _config(path, flag):
    try:
        return AutoConfig.from_pretrained(resolve_model_path(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {path}: cannot load it ({str(e).splitlines()[0]})") from None


def _fits(config, path, task, flag):
    """What every fine-tuned teacher must be: uncompressed, a head that fits the task (check_head), its weights
    whole (no weights, a truncated file, a pickle: one line, before any work)."""
    if getattr(config, "compression", None):
        raise UserError(f"{flag} {path} is compressed; the teacher is an uncompressed model")
    check_head(config, task, f"{flag} {path}")
    if os.path.isdir(resolve_model_path(path)):
        model_weights(resolve_model_path(path))
    return config


def check_head(config, task, what):
    """A fine-tuned head that fits the task: as many outputs, and label names (where the config names them) in the
    task's order; a UserError otherwise (one line, before any work)."""
    if task.kind == "multiple_choice":
        return
    if config.num_labels != task.num_labels:
        kind = "a regression head (1 output)" if config.num_labels == 1 else f"{config.num_labels} outputs"
        want = "1 output (a regression task)" if task.kind == "regression" else f"{task.num_labels} classes"
        raise UserError(f"{what} has {kind}, but {task.name} needs {want}")
    names = [str((config.id2label or {}).get(i, (config.id2label or {}).get(str(i), ""))) for i in
             range(config.num_labels)]
    generic = all(n.upper() in (f"LABEL_{i}", str(i), "") for i, n in enumerate(names))
    if task.label_names and not generic and [n.lower() for n in names] != [n.lower() for n in task.label_names]:
        raise UserError(f"{what} has the labels {names}, but {task.name}'s are {list(task.label_names)} (in this "
                        "order): a head of another label set or order would be scored against the wrong labels")


def check_given_teacher(path, task):
    """An already fine-tuned sequence classifier given as the teacher (run_superglue.py --eval_only, the pipeline's
    --teacher DIR): a classifier (a head to keep), of the task's outputs and labels, its weights whole."""
    config = _config(path, "--teacher")
    if config.model_type != "moddistilbert" and not is_sequence_classifier(config):
        raise UserError(f"--teacher {path} has no sequence-classification head (its config's architectures: "
                        f"{getattr(config, 'architectures', None)}): give a fine-tuned classifier, or --teacher finetuned "
                        "to fine-tune one first")
    return _fits(config, path, task, "--teacher")


class Distiller:
    def __init__(self, path, task, alpha=0.5, temperature=2.0, beta=0.0, device="cpu"):
        done = getattr(check_teacher(path, task, alpha, temperature, beta), "finetuning_task", None)
        auto = AutoModelForMultipleChoice if task.kind == "multiple_choice" else AutoModelForSequenceClassification
        self.teacher = auto.from_pretrained(path).to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.task, self.alpha, self.T, self.beta, self.device = task, alpha, temperature, beta, device
        self.path, self.cached = path, None
        self.info = {"from": path, "sha256": weights_sha256(path), "finetuning_task": done, "alpha": alpha,
                     "temperature": temperature, "beta": beta}

    @torch.no_grad()
    def cache_logits(self, loader, n):
        """Teacher logits of every training example (beta = 0 only), indexed by EXAMPLE_INDEX."""
        if self.beta:
            return
        self.cached = None
        for batch in loader:
            idx = batch.pop(EXAMPLE_INDEX)
            batch.pop("labels")
            logits = self.teacher(**{k: v.to(self.device) for k, v in batch.items()}).logits.float()
            if self.cached is None:
                self.cached = torch.zeros(n, *logits.shape[1:], device=self.device)
            self.cached[idx.to(self.device)] = logits

    def soft_loss(self, student_logits, teacher_logits):
        if self.task.kind == "regression":
            return F.mse_loss(student_logits.float().squeeze(-1), teacher_logits.squeeze(-1))
        T = self.T
        return F.kl_div(F.log_softmax(student_logits.float() / T, -1), F.log_softmax(teacher_logits / T, -1),
                        log_target=True, reduction="batchmean") * T * T

    def loss(self, model, inputs, idx):
        """The combined loss of one training batch (inputs include labels); returns (loss, student output)."""
        out = model(**inputs, output_hidden_states=self.beta > 0)
        if self.beta:
            with torch.no_grad():
                t = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}, output_hidden_states=True)
            t_logits = t.logits.float()
        else:
            t_logits = self.cached[idx.to(self.device)]
        loss = self.alpha * out.loss + (1 - self.alpha) * self.soft_loss(out.logits, t_logits)
        if self.beta:
            mask = inputs["attention_mask"].reshape(-1, inputs["attention_mask"].shape[-1]).bool()
            if len(out.hidden_states) != len(t.hidden_states):
                raise UserError(f"--distill_beta needs as many layers as the teacher "
                                f"({len(out.hidden_states) - 1} vs {len(t.hidden_states) - 1})")
            hidden = sum(F.mse_loss(s[mask].float(), h[mask].float())
                         for s, h in zip(out.hidden_states, t.hidden_states))
            loss = loss + self.beta * hidden
        return loss, out
