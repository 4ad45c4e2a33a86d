"""The activation-aware closed-form start of the low-rank blocks (`init="data"`).

The SVD start (compression.svd_init_*) truncates each block's weight products as if every input
direction mattered equally. BERT-family hidden states are far from isotropic, so the truncation throws away
directions the data uses and keeps ones it does not. Here every truncation is weighted by the captured
inputs, in float64, on the training sequences only:

- Whitening: for a token matrix X (real tokens), C = X^T X = Q L Q^T; the eigenvalues are clamped at
  `eps` times the largest (Cholesky fails on BERT's anisotropic states); R = L^1/2 Q^T, R^-1 = Q L^-1/2,
  so that ||X D|| = ||R D|| for any D.
- Scores, per head: M_h = [Wq_h | bq_h]^T Wk_h (the key bias drops out of the softmax, as in the SVD start);
  the best rank-r M' in ||X~ (M - M') X^T|| (X~ = [X, 1]) is the SVD of R~ M_h R^T, truncated and mapped back.
  The dropped share of its squared singular values is the predicted share of score energy lost.
- Values, per head: N_h = Wv_h^T Wo_h^T acts on the attention-mixed inputs Z_h = P_h X (P_h: the teacher's
  attention probabilities), so it is truncated in the metric of Z_h^T Z_h, which it only meets through the
  d x d moment of the teacher's value context P_h X Wv_h^T (mha_statistics). The value bias folds into the
  output bias exactly (attention rows sum to 1).
- Refit: one ridge least-squares fit of `out_lin` (all heads, weight and bias) on the student's own head
  outputs against the teacher block's outputs (the targets given: the teacher's block output in the isolated
  mode).
- FFN: keep the F/c hidden units with the largest sum_tokens h_j^2 * ||W2[:, j]||^2 (h = the activation output),
  copy their `lin1` rows, and refit `lin2` and its bias by ridge least squares.

Every rank-r product is finally re-split into factors of equal scale (an SVD of the product, singular values
split evenly): the whitened factors come out badly scaled (one near 1, the other in the hundreds), which
computes the same function but wrecks Adam's fine-tuning.
"""
import math

import torch

from modcomp.activations import by_length, flat_positions, pad_sequences, sequence_offsets, subsample
from modeling_moddistilbert import MultiHeadSelfAttention, attention_mask_4d, make_block


# ------------------------------------------------------------------ data
@torch.no_grad()
def attention_outputs(attention, x, lengths, index, device, batch=64):
    """attention(x) on the sequences `index` of the flat inputs x: flat [tokens, H] on `device`, in the order of
    flat_positions(lengths, index). Computed in batches of sequences of similar length (little padding)."""
    lengths = torch.as_tensor(lengths).long()
    offsets, order = sequence_offsets(lengths), by_length(lengths, index)
    x = x.to(device).float()
    outs = torch.empty_like(x)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        xb, mask = pad_sequences(x, lengths, idx, offsets)
        outs[flat_positions(lengths, idx, offsets).to(device)] = attention(xb, attention_mask_4d(mask))[mask]
    return outs[flat_positions(lengths, index, offsets).to(device)]


HIDDEN_LIMIT = 2 ** 28  # floats of an FFN's hidden activations kept for reuse (1 GiB); beyond, they are recomputed


@torch.no_grad()
def block_io(layer, kind, x, lengths, device, batch=64, hidden=False):
    """(inputs, targets) of block `kind` of the teacher `layer` on its layer inputs x, as flat [tokens, H]
    tensors on `device`, in the order of x: MHA inputs = x, targets = attention(x); FFN inputs =
    sa_layer_norm(x + attention(x)), targets = ffn(FFN inputs) (ffn_io). hidden=True: a third item, the FFN's
    hidden activations (ffn_io; None for "mha")."""
    layer = layer.to(device).eval()
    x = x.to(device).float()
    a = attention_outputs(layer.attention, x, lengths, torch.arange(len(lengths)), device, batch)
    if kind == "mha":
        return (x, a, None) if hidden else (x, a)
    return ffn_io(layer, x, a, hidden=hidden)


@torch.no_grad()
def ffn_io(layer, mha_in, mha_out, chunk=8192, hidden=False):
    """The FFN block's (inputs, targets) from its layer's attention (inputs, outputs), flat [tokens, H] on the
    layer's device: h = sa_layer_norm(x + attention(x)) and ffn(h), in chunks of tokens (so a caller that has the
    attention's outputs does not run it a second time). hidden=True: a third item, the teacher FFN's hidden
    activations act(lin1(h)) [tokens, F] from which the targets were computed, for fit_ffn and the allocation's
    FFN curve to rank and refit on instead of recomputing them (None beyond HIDDEN_LIMIT floats)."""
    ins, ffn = layer.sa_layer_norm(mha_in + mha_out), layer.ffn
    chunks = range(0, len(ins), chunk)
    if not hidden or ffn.removed or len(ins) * ffn.lin1.out_features > HIDDEN_LIMIT:
        outs = torch.cat([ffn(ins[s:s + chunk]) for s in chunks])
        return (ins, outs, None) if hidden else (ins, outs)
    h = torch.cat([ffn.act(ffn.lin1(ins[s:s + chunk])) for s in chunks])
    return ins, torch.cat([ffn.dropout(ffn.lin2(h[s:s + chunk])) for s in chunks]), h


def _batches(inputs, lengths, index, batch, device, targets=None):
    offsets, index = sequence_offsets(lengths), by_length(lengths, index)
    for s in range(0, len(index), batch):
        idx = index[s:s + batch]
        xb, mask = pad_sequences(inputs, lengths, idx, offsets)
        yb = None if targets is None else pad_sequences(targets, lengths, idx, offsets)[0].to(device).float()
        yield xb.to(device).float(), mask.to(device), yb


# ------------------------------------------------------------------ linear algebra
def whitener(C, eps=1e-6):
    """(R, R^-1) with ||X D|| = ||R D|| for C = X^T X: eigenvalues clamped at eps * the largest."""
    C = (C + C.T).double() / 2
    lam, Q = torch.linalg.eigh(C)
    lam = lam.clamp_min(eps * float(lam.max().clamp_min(1e-300)))
    return lam.sqrt()[:, None] * Q.T, Q / lam.sqrt()[None, :]


def top_r(a, b, r):
    """Best rank-r factors of a^T b (a: d x n, b: d x m), singular values split evenly between them.

    Returns (L n x r, R m x r, s): L @ R.T is the truncated SVD of a^T b and s all its singular values.
    QR of both sides first, so only a d x d SVD is needed."""
    qa, ra = torch.linalg.qr(a.T.double())
    qb, rb = torch.linalg.qr(b.T.double())
    u, s, vh = torch.linalg.svd(ra @ rb.T)
    root = s[:r].sqrt()
    return qa @ u[:, :r] * root, qb @ vh[:r].T * root, s


def balance(L, R):
    """Re-split the rank-r product L @ R.T (n x r, m x r) into factors of equal scale; same product."""
    L2, R2, _ = top_r(L.T, R.T, L.shape[1])
    return L2, R2


def dropped_share(s, r):
    """Share of the squared singular values beyond rank r: the predicted relative error of the truncation."""
    e = s.double() ** 2
    return float(e[r:].sum() / e.sum().clamp_min(1e-300))


def ridge_solve(G, B, ridge=1e-6):
    """argmin_W ||A W - Y||^2 + lam ||W||^2 from G = A^T A, B = A^T Y; lam = ridge * mean(diag G)."""
    lam = ridge * float(G.diagonal().mean().clamp_min(1e-300))
    return torch.linalg.solve(G + lam * torch.eye(len(G), dtype=G.dtype, device=G.device), B)


# ------------------------------------------------------------------ attention
def _heads(t, B, T, nh):
    return t.view(B, T, nh, -1).transpose(1, 2)


@torch.no_grad()
def mha_statistics(teacher, inputs, lengths, index, device, batch=32):
    """Second moments over the real tokens of sequences `index`, float64: C~ of [x, 1] ((H+1)^2) and, per head,
    of the teacher's value context without its bias, P_h X Wv_h^T (nh x d x d; P_h the attention probabilities).

    The value path only needs the latter: the best rank-r N' in ||Z_h (N_h - N')|| (Z_h = P_h X, N_h =
    Wv_h^T Wo_h^T) has Z_h N' in the column space of Z_h Wv_h^T, so N' = Wv_h^T A and the metric on A is
    Wv_h Z_h^T Z_h Wv_h^T, the d x d moment of the context. Accumulating Z_h^T Z_h itself (H x H per head) cost
    as much as a layer's forward pass per token; this costs nh d^2."""
    teacher = teacher.to(device).eval()
    H, nh, d = teacher.q_lin.in_features, teacher.num_heads, teacher.head_dim
    Cx = torch.zeros(H + 1, H + 1, dtype=torch.float64, device=device)
    Cv = torch.zeros(nh, d, d, dtype=torch.float64, device=device)
    Wv = teacher.v_lin.weight.detach().to(device).float()
    for xb, mask, _ in _batches(inputs, lengths, index, batch, device):
        B, T, _ = xb.shape
        x1 = torch.cat([xb[mask], torch.ones(int(mask.sum()), 1, device=device)], 1)
        Cx += (x1.T @ x1).double()
        q, k = _heads(teacher.q_lin(xb), B, T, nh), _heads(teacher.k_lin(xb), B, T, nh)
        v = _heads(torch.nn.functional.linear(xb, Wv), B, T, nh)                   # X Wv_h^T, no bias
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask_4d(mask))
        c = ctx.transpose(0, 1)[:, mask]                                           # (nh, tokens, d)
        Cv += (c.transpose(1, 2) @ c).double()
    return {"Cx1": Cx, "Cv": Cv}


@torch.no_grad()
def fit_mha(teacher, student, stats, eps=1e-6, heads=None):
    """Closed-form per-head start of a low-rank attention block from `mha_statistics`. Returns per-head
    predicted errors (dropped share of the whitened spectra) of the scores and of the value path. The score
    rank is the student's head_dim, the value rank its v_lin size per head (the same in our model; a student
    whose value heads differ in size gets its own rank there, as scripts/qk_vo_split.py measures). `heads`:
    the teacher heads the student's heads start from, in order (default: all, when the student has as many);
    the others are dropped (their mean output is left to refit_out_lin's bias)."""
    H, nh, d, r = teacher.q_lin.in_features, teacher.num_heads, teacher.head_dim, student.head_dim
    heads = list(range(nh)) if heads is None else list(heads)
    if len(heads) != student.num_heads or not set(heads) <= set(range(nh)) or len(set(heads)) != len(heads):
        raise ValueError(f"heads {heads}: the student's {student.num_heads} heads need as many distinct teacher "
                         f"heads of {nh}")
    rv = student.v_lin.out_features // len(heads)
    dev = stats["Cx1"].device
    white = stats.setdefault("whiteners", {})  # they do not depend on r: once per statistics (allocate's curves)
    if eps not in white:
        white[eps] = (whitener(stats["Cx1"], eps), whitener(stats["Cx1"][:H, :H], eps),
                      [whitener(stats["Cv"][h], eps) for h in range(nh)])
    (R1, R1inv), (R, Rinv), V = white[eps]
    W = {n: getattr(teacher, n).weight.detach().to(dev).double() for n in ("q_lin", "k_lin", "v_lin", "out_lin")}
    bq, bv = teacher.q_lin.bias.detach().to(dev).double(), teacher.v_lin.bias.detach().to(dev).double()
    new = {k: torch.zeros_like(p, dtype=torch.float64, device=dev) for k, p in student.state_dict().items()}
    score_err, value_err = [], []
    for i, h in enumerate(heads):
        t, s = slice(h * d, (h + 1) * d), slice(i * r, (i + 1) * r)
        a = torch.cat([W["q_lin"][t], bq[t, None]], 1)                 # d x (H+1)
        L, Rk, sv = top_r(a @ R1.T, W["k_lin"][t] @ R.T, r)             # whitened product, truncated
        L, Rk = balance(R1inv @ L, Rinv @ Rk)                           # mapped back, re-split evenly
        L = L * math.sqrt(r / d)                                        # keep the 1/sqrt(head_dim) temperature
        new["q_lin.weight"][s], new["q_lin.bias"][s], new["k_lin.weight"][s] = L[:H].T, L[H], Rk.T
        score_err.append(dropped_share(sv, r))
        Rc, Rcinv = V[h]                                                # Rc^T Rc = Wv_h Z_h^T Z_h Wv_h^T
        La, Ro, sz = top_r(Rc.T, W["out_lin"][:, t].T, rv)              # Rc Wo_h^T, truncated: A = Rc^-1 La Ro^T
        Lv, Ro = balance(W["v_lin"][t].T @ Rcinv @ La, Ro)              # N' = Wv_h^T A
        o = slice(i * rv, (i + 1) * rv)
        new["v_lin.weight"][o], new["out_lin.weight"][:, o] = Lv.T, Ro
        value_err.append(dropped_share(sz, rv))
    new["out_lin.bias"] = teacher.out_lin.bias.detach().to(dev).double() + W["out_lin"] @ bv
    dtype = student.q_lin.weight.dtype
    student.load_state_dict({k: v.to(dtype).cpu() for k, v in new.items()})
    return {"score_dropped_share": score_err, "value_dropped_share": value_err}


@torch.no_grad()
def refit_out_lin(student, inputs, targets, lengths, index, device, batch=32, ridge=1e-6):
    """Least-squares refit of out_lin (weight and bias, all heads) on the student's own head outputs against
    `targets`; then each head's (v_lin, out_lin) pair is re-split to equal scale (the same function)."""
    student = student.to(device).eval()
    inner, nh = student.out_lin.in_features, student.num_heads
    r = inner // nh  # the value heads' size
    G = torch.zeros(inner + 1, inner + 1, dtype=torch.float64, device=device)
    Bm = torch.zeros(inner + 1, student.out_lin.out_features, dtype=torch.float64, device=device)
    for xb, mask, yb in _batches(inputs, lengths, index, batch, device, targets):
        B, T, _ = xb.shape
        q, k, v = (_heads(getattr(student, n)(xb), B, T, nh) for n in ("q_lin", "k_lin", "v_lin"))
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask_4d(mask))
        a = ctx.transpose(1, 2).reshape(B, T, inner)[mask]
        a = torch.cat([a, torch.ones(len(a), 1, device=device)], 1)
        G += (a.T @ a).double()
        Bm += (a.T @ yb[mask]).double()
    Wt = ridge_solve(G, Bm, ridge)                                       # (inner+1) x H
    Wo, Wv = Wt[:inner].T, student.v_lin.weight.detach().double()
    Wv = Wv.to(device)
    for h in range(nh):
        s = slice(h * r, (h + 1) * r)
        Lv, Ro = balance(Wv[s].T, Wo[:, s])
        Wv[s], Wo[:, s] = Lv.T, Ro
    dtype = student.out_lin.weight.dtype
    student.v_lin.weight.copy_(Wv.to(dtype))
    student.out_lin.weight.copy_(Wo.to(dtype))
    student.out_lin.bias.copy_(Wt[inner].to(dtype))


# ------------------------------------------------------------------ feed-forward
def hidden_rows(teacher, inputs, hidden, t, device):
    """The teacher FFN's hidden activations act(lin1(x)) of the rows t of the flat inputs: taken from `hidden`
    (ffn_io(hidden=True), the same rows) when given, else computed."""
    if hidden is not None:
        return hidden[t.to(hidden.device)].to(device).float()
    return teacher.act(teacher.lin1(inputs[t].to(device).float()))


@torch.no_grad()
def fit_ffn(teacher, student, inputs, targets, tokens, device, chunk=8192, ridge=1e-6, hidden=None):
    """Keep the units with the largest sum h_j^2 ||W2[:, j]||^2 on the tokens `tokens` of the flat inputs,
    copy their lin1 rows, refit lin2 and its bias by ridge least squares against `targets`. Two passes: the
    unit scores need only sum h_j^2; the least-squares Gram matrix is then built for the kept units alone
    (a quarter of the full one's cost at c=2). hidden: the teacher's hidden activations of every row of
    `inputs` (ffn_io(hidden=True)), so that neither pass runs lin1 again; None: computed here."""
    teacher = teacher.to(device).eval()
    F = teacher.lin1.out_features
    sq = torch.zeros(F, dtype=torch.float64, device=device)
    for s in range(0, len(tokens), chunk):
        h = hidden_rows(teacher, inputs, hidden, tokens[s:s + chunk], device)
        sq += (h * h).sum(0).double()
    score = sq * (teacher.lin2.weight.detach().to(device).double() ** 2).sum(0)
    keep = score.topk(student.lin1.out_features).indices.sort().values
    n = len(keep)
    w1, b1 = teacher.lin1.weight[keep].to(device), teacher.lin1.bias[keep].to(device)
    G = torch.zeros(n + 1, n + 1, dtype=torch.float64, device=device)
    Bm = torch.zeros(n + 1, teacher.lin2.out_features, dtype=torch.float64, device=device)
    for s in range(0, len(tokens), chunk):
        t = tokens[s:s + chunk]
        if hidden is not None:
            h = hidden_rows(teacher, inputs, hidden, t, device)[:, keep]
        else:
            h = teacher.act(torch.nn.functional.linear(inputs[t].to(device).float(), w1, b1))
        h = torch.cat([h, torch.ones(len(h), 1, device=device)], 1)
        G += (h.T @ h).double()
        Bm += (h.T @ targets[t].to(device).float()).double()
    Wt = ridge_solve(G, Bm, ridge)
    student.lin1.weight.copy_(w1)
    student.lin1.bias.copy_(b1)
    student.lin2.weight.copy_(Wt[:n].T.to(student.lin2.weight.dtype))
    student.lin2.bias.copy_(Wt[n].to(student.lin2.bias.dtype))
    kept = float(score[keep].sum() / score.sum().clamp_min(1e-300))
    return {"kept_unit_energy": kept}


# ------------------------------------------------------------------ one block
def fit_block(teacher, student, inputs, targets, lengths, index, device, eps=1e-6, max_tokens=None, seed=0,
              hidden=None, copy=True, heads=None):
    """init="data" for one block (MHA or FFN), fitted on the sequences `index` of the flat (inputs, targets)
    only (a subset of them holding at most `max_tokens` tokens, drawn with `seed`, when given: the statistics
    and the least-squares refits need far fewer tokens than a task has). Returns what the fit predicts (dropped
    spectra or kept unit energy) and the number of tokens it used. hidden: an FFN teacher's hidden activations
    of the inputs (fit_ffn), when the caller has them. copy: a student of the teacher's own size is the teacher's
    block, copied (the closed form's limit, exact, when the inputs and targets are the teacher block's own; a
    caller whose inputs or targets are not, e.g. the sequential fit, passes copy=False to fit it); a copied
    block reports fit_tokens 0 (it used no data). heads: the teacher heads an attention student with fewer heads
    starts from (fit_mha)."""
    index = subsample(lengths, index, max_tokens, seed)
    info = _fit(teacher, student, inputs, targets, lengths, index, device, eps, hidden, copy, heads)
    used = 0 if info.get("teacher_copy") else int(torch.as_tensor(lengths)[index].sum())
    return {**info, "fit_tokens": used}


@torch.no_grad()
def fit_removed(student, targets, tokens):
    """A removed block's closed form: the constant closest to the targets, their mean over `tokens`."""
    (name, p), = student.state_dict().items()
    mean = targets[tokens.to(targets.device)].double().mean(0)
    student.load_state_dict({name: mean.to(p)})
    return {"removed": True}


def _same_size(teacher, student):
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}
    return (type(teacher) is type(student) and shapes(teacher) == shapes(student)
            and getattr(teacher, "num_heads", None) == getattr(student, "num_heads", None))


def _fit(teacher, student, inputs, targets, lengths, index, device, eps, hidden=None, copy=True, heads=None):
    student.to(device)
    if student.removed:  # size 0: a constant
        return fit_removed(student, targets, flat_positions(lengths, index))
    if copy and _same_size(teacher, student):  # nothing compressed (a layer the allocation keeps whole): the teacher's block
        student.load_state_dict(teacher.state_dict())
        return {"teacher_copy": True}
    if isinstance(student, MultiHeadSelfAttention):
        info = fit_mha(teacher, student, mha_statistics(teacher, inputs, lengths, index, device), eps, heads)
        student.to(device)
        refit_out_lin(student, inputs, targets, lengths, index, device)
        return info
    return fit_ffn(teacher, student, inputs, targets, flat_positions(lengths, index), device, hidden=hidden)


# ------------------------------------------------------------------ a whole model
def layer_forward(layer, x, lengths, device, batch=64):
    """A whole (possibly compressed) layer on flat inputs: its flat outputs (the next layer's inputs), in the
    order of x (a layer takes and returns what a block does: attention_outputs batches it by length)."""
    return attention_outputs(layer.to(device).eval(), x, lengths, torch.arange(len(lengths)), device, batch)


@torch.no_grad()
def compress_with_data(model, dims, data, sequential=False, device=None, index=None, max_tokens=None, seed=0):
    """Replace the blocks of the layers in `dims` ({layer: (attention inner size, FFN width)}) by their
    closed-form start, fitted on `data` ({layer: (x, lengths)}: the teacher's captured layer inputs, all tokens).

    isolated (default, the paper's setting): every block is fitted on the teacher's own inputs.
    sequential: layer l is fitted on the inputs the already-compressed layers 0..l-1 produce (x_s), towards
    targets corrected for the error carried in: attention(x_s) ~ attention_t(x_t) + (x_t - x_s), and the same
    for the FFN with its inputs h, so that the layer's LayerNorm inputs match the teacher's.
    index: the sequences to fit on (default all; the others are only carried through, in sequential mode).
    device: where to fit (default: the model's own device); the model stays where it is, in its own mode."""
    base = model.base_model
    config = base.config
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    x_s = None
    for i in sorted(dims):
        layer = base.layers[i]
        was_training = layer.training
        x_t, lengths = data[i]
        if not sequential or x_s is None or i - 1 not in dims:
            x_s = x_t
        fit_idx = torch.arange(len(lengths)) if index is None else torch.as_tensor(index).long()
        mha_in, mha_out = block_io(layer, "mha", x_t, lengths, device)
        if sequential:  # the FFN is fitted on the student's inputs: the teacher's hidden activations are not theirs
            (ffn_in_t, ffn_out), hidden = ffn_io(layer, mha_in, mha_out), None
        else:
            ffn_in_t, ffn_out, hidden = ffn_io(layer, mha_in, mha_out, hidden=True)
        x_in = x_s.to(device)
        new_attn = make_block(config, i, "mha", dims[i][0])
        fit_block(layer.attention, new_attn, x_in, mha_out + (mha_in - x_in), lengths, fit_idx, device,
                  max_tokens=max_tokens, seed=seed, copy=not sequential)
        layer.attention = new_attn
        if sequential:
            ffn_in = block_io(layer, "ffn", x_in, lengths, device)[0]  # h_s = LN(x_s + attention_s(x_s))
        else:
            ffn_in = ffn_in_t
        new_ffn = make_block(config, i, "ffn", dims[i][1])
        fit_block(layer.ffn, new_ffn, ffn_in, ffn_out + (ffn_in_t - ffn_in), lengths, fit_idx, device,
                  max_tokens=max_tokens, seed=seed, hidden=hidden, copy=not sequential)
        del hidden
        layer.ffn = new_ffn
        config.attn_dims[i], config.ffn_dims[i] = dims[i]
        if sequential:
            x_s = layer_forward(layer, x_in, lengths, device)
        layer.to(home).train(was_training)  # the fits ran on `device` in eval mode: back where and as it was
    if model.config is not config:
        model.config.attn_dims, model.config.ffn_dims = config.attn_dims, config.ffn_dims
    return model
