"""One budget, every block: the attention head dim and the FFN width of every layer, chosen together.

`--compression c` is a budget: the encoder's multiply-adds at `length` tokens (128, the fine-tuning length) are
at most 1/c of the uncompressed model's (`encoder_macs`). Uniform compression (head dim / c, FFN width / c in
every layer) is one way to spend it; `mha_modular.py / ffn_modular.py --allocate` spend it where the measured
errors say it is needed:

- Cost per block (`block_macs`), at T tokens, hidden H: attention of inner size D = heads x head dim costs
  D (4TH + 2T^2) (q, k, v, out projections and the two T x T products), an FFN of width F costs 2THF.
  A size of 0 removes the block (the layer keeps only its residual and a constant bias): cost 0.
- One currency for every block: how much of the block's held-out error reaches the encoder's output
  (`currency="output"`, the default). Built in two steps:
  1. `layernorm`: what the error becomes after the LayerNorm the block's output is added into, relative to that
     LayerNorm's output. The model is post-LN: a block's error e joins the residual stream r = x + block(x) and
     the next layer sees LN(r), which removes e's mean over the hidden dims, divides by r's standard deviation
     per token and scales dim d by gamma_d: sum_t sum_d (gamma_d (e_td - mean_d e_t) / sigma_t)^2 /
     sum_t ||gamma (r_t - mean r_t) / sigma_t||^2.
  2. `output`: each block's layernorm curve times its sensitivity, measured once per block: the squared error of
     the encoder's output (held-out sequences, relative to its energy) with that block alone at the nonzero grid
     size nearest its uniform size for this c (head dim / c, width / c) and every other block the teacher's,
     divided by the block's layernorm error at that size. The later layers shrink most errors (MiniLM's STS-B
     teacher: 0.1-0.25 for most blocks; layers 2 and 5's attention 0.5-0.8) but not all (layer 1's attention:
     3.3-3.9; the last FFN: 1.0, as it should).
  Why not simpler ones: a block's own relative error ignores that attention and FFN outputs have different
  norms; the error relative to the residual stream's energy (`currency="residual"`, the first joint allocations') is dominated by
  a few outlier dims before the FFN's LayerNorm (3 of 384 hold 89% of it in layer 0), so it under-rates FFN
  errors (c=2 lost 0.8 STS-B points); `layernorm` fixes that but, blind to what the later layers do, took too
  much from the attention at c=4 (81.5 against 84.3). Measured: results/joint_allocation.md.
- Curves, per layer, on a seeded subset of the captured training tokens, measured on the held-out examples:
  attention at every head dim of `head_dim_grid` (the closed form: data_init.fit_mha + refit_out_lin; 0 = the
  mean output); FFN at every width of `width_grid` in one pass: the units ranked once by the closed-form score,
  bias first, then one Cholesky factor of their Gram matrix gives the least-squares refit of every leading
  subset (the leading block of a Cholesky factor is the factor of the leading block).
- The choice (`choose`): an exact dynamic programme over integer costs, minimum summed error with total cost
  at most the budget (a multiple-choice knapsack). At c = 1 every block keeps its full size.

The result is written once per modules dir (`allocation.json`, under a lock: the MHA and FFN stages may run
at once) and read by both stages; the curves, which do not depend on the compression, once per capture and
settings beside the modules dirs (`curve_cache`: modular.joint_allocation).
"""
import fcntl
import json
import math
import os
import time

import numpy as np
import torch

from modcomp import data_init
from modcomp.activations import flat_positions, select_sequences, subsample
from modeling_moddistilbert import MultiHeadSelfAttention, make_block
from modcomp.utils import UserError, atomic_write_json

VERSION = "joint/2"          # what allocation.json's curves mean; a change invalidates old files
                             # (2: the value statistics as the d x d context moment, the full head dim not fitted)
CURVE_TOKENS = 16384         # training tokens per layer the curves are fitted on (a seeded subset) ...
CURVE_HELDOUT_TOKENS = 4096  # ... and held-out tokens they are measured on (the blocks are then fitted on more)
LATENCY_VERSION = 3          # what a latency budget's allocation chooses (2: whole layers may be removed;
                             # 3: latency tables of version 3, blocks timed in whole encoders)
MAX_STATES = 200_000         # cost units of the dynamic programme (costs are rounded up beyond this)


# ------------------------------------------------------------------ cost
def block_macs(config, kind, size, length):
    """Multiply-adds of one attention block of inner size `size` or one FFN of width `size` on `length` tokens."""
    H, T = config.hidden_size, length
    if kind == "mha":
        return size * (4 * T * H + 2 * T * T)
    if kind == "ffn":
        return 2 * T * H * size
    raise ValueError(f"block kind must be 'mha' or 'ffn', not {kind!r}")


def encoder_macs(config, length, dims=None):
    """Multiply-adds of the encoder's blocks at `length` tokens (config's sizes, or dims {layer: (attn, ffn)})."""
    layers = range(config.num_hidden_layers)
    dims = dims or {l: (config.attn_dims[l], config.ffn_dims[l]) for l in layers}
    return sum(block_macs(config, "mha", dims[l][0], length) + block_macs(config, "ffn", dims[l][1], length)
               for l in layers)


# ------------------------------------------------------------------ grids
def head_dim_grid(d):
    """0 (removed), then every step of d/16 up to d/4, then steps of d/8 up to d (d = 32: 0 2 4 6 8 12 16 .. 32)."""
    fine, coarse = max(1, d // 16), max(1, d // 8)
    return sorted({0, *range(fine, d // 4 + 1, fine), *range(d // 4, d + 1, coarse), d})


def width_grid(F, steps=96):
    """0 (removed) and every multiple of F/steps (rounded to a multiple of 8 where F allows) up to F."""
    step = max(1, F // steps)
    if step >= 8:
        step -= step % 8
    return sorted({*range(0, F + 1, step), F})


# ------------------------------------------------------------------ curves
def _energy(t):
    return float((t.double() ** 2).sum())


from modcomp.config import CURRENCIES  # noqa: E402  (declared once, with the recipe field)


def currency(name, layer_norm, resid, val_tok):
    """The function (error rows e, their token positions t) -> that error in the currency `name` (see the top
    of this file), for a block whose output is added into the residual stream `resid` (flat [tokens, H], the
    teacher's x + block(x)) before `layer_norm`; relative, on the held-out tokens val_tok, to the stream's energy
    (residual) or to the energy of the LayerNorm's output less its bias (layernorm, output)."""
    if name == "residual":
        total = _energy(resid[val_tok])
        return lambda e, t: _energy(e) / total
    if name not in ("layernorm", "output"):  # output: the layernorm curve, scaled afterwards (allocate)
        raise ValueError(f"currency must be one of {CURRENCIES}, not {name!r}")
    r = resid.double()
    inv_var = 1.0 / (r.var(-1, unbiased=False) + layer_norm.eps)           # 1 / sigma_t^2 per token
    g2 = layer_norm.weight.detach().to(r.device).double() ** 2
    centred = lambda m: m - m.mean(-1, keepdim=True)
    total = float((inv_var[val_tok, None] * centred(r[val_tok]) ** 2 * g2).sum())
    return lambda e, t: float((inv_var[t.to(r.device), None] * centred(e.double().to(r.device)) ** 2 * g2).sum()) / total


@torch.no_grad()
def attention_curve(teacher, inputs, targets, lengths, train_idx, val_idx, head_dims, device, measure=None,
                    keep=None, head_counts=None, order=None):
    """{head dim: held-out error} of the closed-form attention start (fitted on train_idx) at each head dim; 0 is
    the block removed (the training tokens' mean output), the teacher's own head dim 0 exactly (the closed form
    keeps every score and value direction there, so it is not fitted). measure(e, t): the error rows e of the
    flat token positions t in a currency (default: the squared error). keep: a head dim whose fitted block is
    returned too ((curve, block)). head_counts (with `order`, the teacher's heads by importance, head_order):
    the curve is {(heads k, head dim r): error} over every k of head_counts, the first k heads of `order` kept;
    (0, 0) is the block removed."""
    measure = measure or (lambda e, t: _energy(e))
    stats = data_init.mha_statistics(teacher, inputs, lengths, train_idx, device)
    H, nh = teacher.q_lin.in_features, teacher.num_heads
    val_tok = flat_positions(lengths, val_idx).to(targets.device)
    mean = targets[flat_positions(lengths, train_idx).to(targets.device)].double().mean(0)
    curve = {}
    for k in head_counts or [nh]:
        for r in head_dims:
            key = r if head_counts is None else (k, r) if r else (0, 0)
            if key in curve:
                continue
            if r == 0:
                curve[key] = measure(targets[val_tok] - mean.to(targets.dtype), val_tok)
                continue
            if k == nh and r == teacher.head_dim and r != keep:
                curve[key] = 0.0
                continue
            s = fit_attention(teacher, inputs, targets, lengths, train_idx, k, r, order, device, stats)
            pred = data_init.attention_outputs(s, inputs, lengths, val_idx, device)
            curve[key] = measure(pred.to(targets) - targets[val_tok], val_tok)
            if k == nh and r == keep:
                kept = s
    return curve if keep is None else (curve, kept)


@torch.no_grad()
def fit_attention(teacher, inputs, targets, lengths, train_idx, k, r, order, device, stats):
    """The closed-form attention of k heads x head dim r (the first k heads of `order` when k is not all of them):
    fit_mha from the teacher's statistics (mha_statistics on train_idx), then refit_out_lin on train_idx."""
    s = MultiHeadSelfAttention(teacher.q_lin.in_features, k, k * r).to(device)
    data_init.fit_mha(teacher, s, stats, heads=None if k == teacher.num_heads else order[:k])
    s.to(device)
    data_init.refit_out_lin(s, inputs, targets, lengths, train_idx, device)
    return s


@torch.no_grad()
def head_order(teacher, inputs, lengths, index, device, measure=None):
    """The teacher attention's heads, most important first: by the energy (in the currency `measure`) of each
    head's own contribution to the block's output, ctx_h Wo_h^T less its mean, on the sequences `index`."""
    measure = measure or (lambda e, t: _energy(e))
    H, nh, d = teacher.q_lin.in_features, teacher.num_heads, teacher.head_dim
    tok = flat_positions(lengths, index)
    energy = []
    for h in range(nh):
        one = MultiHeadSelfAttention(H, 1, d).to(device)
        t = slice(h * d, (h + 1) * d)
        for n in ("q_lin", "k_lin", "v_lin"):
            getattr(one, n).weight.copy_(getattr(teacher, n).weight[t])
            getattr(one, n).bias.copy_(getattr(teacher, n).bias[t])
        one.out_lin.weight.copy_(teacher.out_lin.weight[:, t])
        one.out_lin.bias.zero_()
        c = data_init.attention_outputs(one.eval(), inputs, lengths, index, device)
        energy.append(measure(c - c.double().mean(0).to(c), tok.to(c.device)))
    return sorted(range(nh), key=lambda h: (-energy[h], h))


@torch.no_grad()
def ffn_curve(teacher, inputs, targets, train_tok, val_tok, widths, device, chunk=8192, ridge=1e-6, measure=None,
              hidden=None):
    """{width: held-out error (measure, as in attention_curve)} of the closed-form FFN start at every width: the units ranked by
    data_init.fit_ffn's score (sum h_j^2 ||W2[:, j]||^2 on train_tok), lin2 and its bias refitted by ridge least
    squares on the leading units. One Gram matrix, one Cholesky factor L of it (bias first, then the units in
    rank order): the fit on the first k columns has held-out predictions Q[:, :k] @ Z[:k], Q = A_val L^-T,
    Z = L^-1 A^T Y, since the leading k x k block of L is the factor of the leading block of the Gram matrix.
    hidden: the teacher's hidden activations of every input row (data_init.ffn_io(hidden=True)), or None."""
    measure = measure or (lambda e, t: _energy(e))
    teacher = teacher.to(device).eval()
    F, H = teacher.lin1.out_features, teacher.lin2.out_features
    ones = lambda n: torch.ones(n, 1, device=device)
    G = torch.zeros(F + 1, F + 1, dtype=torch.float64, device=device)
    B = torch.zeros(F + 1, H, dtype=torch.float64, device=device)
    for s in range(0, len(train_tok), chunk):
        t = train_tok[s:s + chunk]
        a = torch.cat([ones(len(t)), data_init.hidden_rows(teacher, inputs, hidden, t, device)], 1)
        G += (a.T @ a).double()
        B += (a.T @ targets[t].to(device).float()).double()
    score = G.diagonal()[1:] * (teacher.lin2.weight.detach().to(device).double() ** 2).sum(0)
    perm = torch.cat([torch.zeros(1, dtype=torch.long, device=device), 1 + score.argsort(descending=True)])
    G, B = G[perm][:, perm], B[perm]
    lam = ridge * float(G.diagonal().mean().clamp_min(1e-300))
    eye = torch.eye(F + 1, dtype=G.dtype, device=device)
    L, bad = torch.linalg.cholesky_ex(G + lam * eye)
    tries = 0
    while bad:  # fewer fitted tokens than units (or dead units): rank-deficient; more ridge until it factors
        if tries == 30 or not torch.isfinite(G).all():
            raise UserError("the FFN curve's Gram matrix is not finite or cannot be factored (an overflowed capture?)")
        lam, tries = lam * 10, tries + 1
        L, bad = torch.linalg.cholesky_ex(G + lam * eye)
    Z = torch.linalg.solve_triangular(L, B, upper=False)
    curve, pred = {}, None
    for s in range(0, len(val_tok), chunk):
        t = val_tok[s:s + chunk]
        a = torch.cat([ones(len(t)), data_init.hidden_rows(teacher, inputs, hidden, t, device)], 1).double()[:, perm]
        Q = torch.linalg.solve_triangular(L, a.T, upper=False).T         # A_val L^-T
        y = targets[t].to(device).double()
        pred, done = torch.zeros_like(y), 0
        for w in sorted(widths):
            pred += Q[:, done:w + 1] @ Z[done:w + 1]
            done = w + 1
            curve[w] = curve.get(w, 0.0) + measure(y - pred, t)
    return curve


# ------------------------------------------------------------------ the choice
def choose(options, budget, removals=None):
    """Minimum summed error with total cost <= budget, one size per block: an exact dynamic programme.

    options: {block key: {size: (cost, error)}} with integer costs. removals: {name: (member keys, (cost,
    error))}: the members (consecutive keys of options: a layer's blocks) may instead be removed together at that
    cost and error (a layer removed whole). Costs are divided by their greatest common divisor; beyond
    MAX_STATES units they are rounded up (never over the budget). Returns {block key: size}, None for the
    members of a removal taken."""
    keys = list(options)
    removals = removals or {}
    firsts, ends = {}, {}
    for name, (members, _) in removals.items():
        i = keys.index(members[0])
        if list(members) != keys[i:i + len(members)]:
            raise ValueError(f"removal {name!r}: its members must be consecutive keys of options")
        firsts[members[0]], ends[members[-1]] = name, name
    costs = [c for k in keys for c, _ in options[k].values()] + [c for _, (c, _) in removals.values()]
    unit = math.gcd(*[int(c) for c in costs if c]) or 1
    if budget // unit > MAX_STATES:
        unit = -(-int(budget) // MAX_STATES)
    n = int(budget // unit)
    units = lambda c: -(-int(c) // unit)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    picks, starts, taken = [], {}, {}
    for k in keys:
        if k in firsts:
            starts[firsts[k]] = best   # the table before the group's first member
        nxt, pick = np.full(n + 1, np.inf), np.full(n + 1, -1, dtype=np.int64)
        sizes = sorted(options[k])
        for i, s in enumerate(sizes):
            c, e = options[k][s]
            u = units(c)
            if u > n:
                continue
            cand = best[: n + 1 - u] + e
            better = cand < nxt[u:]
            nxt[u:][better], pick[u:][better] = cand[better], i
        best = nxt
        picks.append((sizes, pick))
        if k in ends:   # the group's alternative: removed together
            c, e = removals[ends[k]][1]
            u, alt = units(c), np.full(n + 1, np.inf)
            if u <= n:
                alt[u:] = starts[ends[k]][: n + 1 - u] + e
            taken[ends[k]] = alt < best
            best = np.minimum(best, alt)
    if not np.isfinite(best).any():
        raise UserError(f"no choice of block sizes fits the budget of {budget:,}")
    used = int(np.argmin(best))
    choice, skip = {}, set()
    for k, (sizes, pick) in zip(reversed(keys), reversed(picks)):
        if k in ends and taken[ends[k]][used]:
            members, (c, _) = removals[ends[k]]
            skip |= set(members)
            choice.update({m: None for m in members})
            used -= units(c)
        if k in skip:
            continue
        s = sizes[pick[used]]
        choice[k] = s
        used -= units(options[k][s][0])
    return {k: choice[k] for k in keys}


# ------------------------------------------------------------------ a capture's allocation
def allocate(teacher, store, train_idx, val_idx, compression, device, length=128, curve_tokens=CURVE_TOKENS,
             heldout_tokens=CURVE_HELDOUT_TOKENS, seed=0, currency_name="output", log=print, table=None, rounds=0,
             curve_cache=None):
    """The joint allocation of a capture's teacher at `compression`: {"dims": {layer: [attn inner, ffn width]},
    "budget": ..., "curves": ...}. Every layer of the encoder shares the budget. With a latency `table`
    (latency.load_or_measure) the budget is the encoder's measured latency divided by `compression`, and each
    layer also chooses its number of heads (the most important first: head_order): "heads" {layer: k} and
    "head_order" {layer: teacher heads} come with the dims. rounds (output currency): choose again that many
    times with every block's sensitivity and every layer's removal error measured inside the last choice
    (`_in_context`), and keep the choice whose closed-form blocks, all in place, give the smallest measured
    output error ("rounds" in the result). curve_cache (path, settings): the per-layer curves, head orders and
    layer-removal errors, which do not depend on `compression`, read from that JSON file when it holds these
    settings (the calibration probes are refitted: their size depends on it), else written there, so that a
    sweep over compressions measures them once per capture."""
    config = teacher.config
    layers = range(config.num_hidden_layers)
    full = encoder_macs(config, length)
    budget = int(full // compression)
    nh = config.num_attention_heads
    if compression == 1:
        dims = {l: [config.attn_dims[l], config.ffn_dims[l]] for l in layers}
        out = {"dims": dims, "budget": _budget(config, length, full, budget, dims), "curves": None}
        if table is not None:
            out.update(heads={l: nh for l in layers}, head_order={l: list(range(nh)) for l in layers})
            out["budget"]["latency"] = _latency_budget(table, config, dims, out["heads"], compression)
        return out
    output = currency_name == "output"
    if rounds < 0:
        raise UserError(f"--context_rounds must be >= 0, got {rounds}")
    if rounds and not output:
        raise UserError(f"--context_rounds {rounds}: needs --currency output (the sensitivities it re-measures)")
    # a latency budget may remove whole layers (their fixed cost too) where the output currency measures what
    # that costs: each kept layer then pays its fixed cost, and what no choice removes is the base alone
    whole = table is not None and output
    if table is not None:
        lat = _latency_budget(table, config, None, None, compression)
        floor = lat["base_ms"] if whole else lat["fixed_total_ms"]
        budget = int(round((lat["budget_ms"] - floor) * LATENCY_UNITS))
        if budget <= 0:
            raise UserError(f"a latency budget of 1/{compression:g} ({lat['budget_ms']:.3f} ms of "
                            f"{lat['uncompressed_ms']:.3f} ms on this CPU in {table['key']['runtime']}) is below "
                            f"what the encoder costs with every {'layer' if whole else 'block'} removed "
                            f"({floor:.3f} ms: {'' if whole else 'layer norms, '}embeddings, head): at most "
                            f"{lat['uncompressed_ms'] / floor:.2f}x here")
    seq_lengths = store.sequence_info()[0]
    subset = subsample(seq_lengths, train_idx, curve_tokens, seed)
    held = subsample(seq_lengths, val_idx, heldout_tokens, seed)
    if len(held) == 0:
        held = subset  # --holdout 0: the curves are measured on the fitted tokens
    keep = torch.unique(torch.cat([subset, held]))
    fit_idx, val_idx = torch.searchsorted(keep, subset), torch.searchsorted(keep, held)
    options, curves, sensitivity, orders, removals = {}, {}, {}, {}, {}
    ln_curves, probes, probe_ln = {}, {}, {}   # the curves before scaling; the sensitivity probes and their errors
    if output:  # the teacher's encoder output on the held-out sequences, what each block's error is carried to
        last = config.num_hidden_layers - 1
        out_t = data_init.layer_forward(teacher.layers[last], *select_sequences(*store.load_layer(last), held), device)
        out_energy = _energy(out_t - teacher.layers[last].output_layer_norm.bias.detach().to(out_t))
    cache, fresh = _read_curve_cache(curve_cache), {}
    for l in layers:
        x, lengths = select_sequences(*store.load_layer(l), keep)
        layer = teacher.layers[l]
        d, F = config.attn_dims[l] // nh, config.ffn_dims[l]
        ins, outs = data_init.block_io(layer, "mha", x, lengths, device)
        val_tok = flat_positions(lengths, val_idx)
        measure = currency(currency_name, layer.sa_layer_norm, ins + outs, val_tok)
        heads, known = None, cache.get(l)
        if table is not None:   # which heads a layer keeps first: their own contributions, on the fitted tokens
            from modcomp.latency import head_grid
            heads = head_grid(nh)
            orders[l] = known["order"] if known else head_order(layer.attention, ins, lengths, fit_idx, device,
                                                                measure)
        # a latency budget leaves out head dim 1: ONNX Runtime's attention fusion does not take it (an unfused
        # block would cost more than its table row)
        grid = head_dim_grid(d) if heads is None else [r for r in head_dim_grid(d) if r != 1 or r == d]
        r_cal = _nearest(grid, d / compression)   # (a latency budget's: never head dim 1)
        if known:
            mha = known["mha"]
            if output:
                stats = data_init.mha_statistics(layer.attention, ins, lengths, fit_idx, device)
                mha = (mha, fit_attention(layer.attention, ins, outs, lengths, fit_idx, nh, r_cal, None, device,
                                          stats))
        else:
            mha = attention_curve(layer.attention, ins, outs, lengths, fit_idx, val_idx, grid, device,
                                  measure, keep=r_cal if output else None, head_counts=heads, order=orders.get(l))
        if output:   # the probe's own error measured here, not read from the curve: a cached curve has 0 at the
            mha, cal = mha   # teacher's size, where attention_curve measures a probe of that size (c near 1)
            t = flat_positions(lengths, val_idx).to(outs.device)
            probe = data_init.attention_outputs(cal, ins, lengths, val_idx, device)
            probes[(l, "mha")], probe_ln[(l, "mha")] = cal, measure(probe.to(outs) - outs[t], t)
            mha = {**mha, (d if heads is None else (nh, d)): 0.0}   # the teacher's own block: exact
            sensitivity[l] = {"mha": _carried(teacher, l, "attention", cal, x, lengths, val_idx, out_t, device)
                              / out_energy / max(probe_ln[(l, "mha")], 1e-30)}
        ins, outs, hidden = data_init.ffn_io(layer, ins, outs, hidden=True)
        measure = currency(currency_name, layer.output_layer_norm, ins + outs, val_tok)
        ffn = known["ffn"] if known else ffn_curve(layer.ffn, ins, outs, flat_positions(lengths, fit_idx), val_tok,
                                                   width_grid(F), device, measure=measure, hidden=hidden)
        if not known:
            fresh[l] = {"order": orders.get(l), "mha": mha, "ffn": ffn}
        curves[l] = {"mha": ({r * nh: e for r, e in mha.items()} if heads is None
                             else {(k, k * r): e for (k, r), e in mha.items()}), "ffn": dict(ffn)}
        if output:
            w_cal = _nearest(width_grid(F), F / compression)
            cal = make_block(config, l, "ffn", w_cal).to(device)
            data_init.fit_ffn(layer.ffn, cal, ins, outs, flat_positions(lengths, fit_idx), device, hidden=hidden)
            probes[(l, "ffn")], probe_ln[(l, "ffn")] = cal, ffn[w_cal]
            sensitivity[l]["ffn"] = (_carried(teacher, l, "ffn", cal, x, lengths, val_idx, out_t, device)
                                     / out_energy / max(ffn[w_cal], 1e-30))
            ln_curves[l] = curves[l]
            curves[l] = {k: {s: e * sensitivity[l][k] for s, e in c.items()} for k, c in curves[l].items()}
        del hidden  # not held into the next layer's
        for kind in ("mha", "ffn"):
            options[(l, kind)] = {s: (_cost(config, kind, s, length, table), e) for s, e in curves[l][kind].items()}
        if whole:   # the layer's fixed cost is paid with its attention (any size, 0 too) unless the layer goes
            fixed = int(round(table["fixed_ms"] * LATENCY_UNITS))
            options[(l, "mha")] = {s: (c + fixed, e) for s, (c, e) in options[(l, "mha")].items()}
            gone = known["removal"] if known and known.get("removal") is not None else \
                _carried_removed(teacher, l, x, lengths, val_idx, out_t, device) / out_energy
            removals[l] = (((l, "mha"), (l, "ffn")), (0, gone))
            if l in fresh:
                fresh[l]["removal"] = gone
        if heads is None:
            log(f"layer {l}: error ({currency_name} currency), attention by head dim "
                + " ".join(f"{s // nh}:{e:.2e}" for s, e in curves[l]["mha"].items())
                + "; FFN by width " + " ".join(f"{s}:{e:.1e}" for s, e in list(curves[l]["ffn"].items())[::8]))
        else:
            log(f"layer {l}: heads by importance {orders[l]}; error ({currency_name} currency) of k heads x head dim "
                + " ".join(f"{k}x{a // k}:{e:.1e}" for (k, a), e in curves[l]["mha"].items() if k and a // k in
                           (2, 8, d)) + "; FFN by width "
                + " ".join(f"{s}:{e:.1e}" for s, e in list(curves[l]["ffn"].items())[::16]))
    if fresh and curve_cache:
        _write_curve_cache(curve_cache, {**cache, **fresh}, log)
    elif curve_cache:
        log(f"curves, head orders and layer removals of every layer: {curve_cache[0]} (measured before)")
    pick = choose(options, budget, removals)   # a latency budget's attention sizes are (heads, inner)
    history, first_curves, first_removals = [], {l: dict(c) for l, c in curves.items()}, dict(removals)
    if rounds:
        t0 = time.time()
        x0, lens0 = select_sequences(*store.load_layer(0), held)
        fitted = lambda p: _fit_picked(teacher, store, keep, fit_idx, p, orders, device)
        blocks = fitted(pick)
        measured = _output_error(teacher, blocks, _removed(pick), x0, lens0, out_t, out_energy, device)
        history.append(_round(pick, options, removals, measured, None))
        log(f"round 0 (blocks alone, {time.time() - t0:.0f} s): predicted output error {history[-1]['predicted_error']:.4f}, measured with "
            f"every closed-form block in place {measured:.4f}")
        for r in range(1, rounds + 1):
            sens, removal = _in_context(teacher, blocks, _removed(pick), probes, x0, lens0, out_energy, device)
            for (l, kind), v in sens.items():
                curves[l][kind] = {s: e * v / max(probe_ln[(l, kind)], 1e-30) for s, e in ln_curves[l][kind].items()}
                extra_fixed = fixed if whole and kind == "mha" else 0
                options[(l, kind)] = {s: (_cost(config, kind, s, length, table) + extra_fixed, e)
                                      for s, e in curves[l][kind].items()}
            for l, e in removal.items():
                if l in removals:
                    removals[l] = (removals[l][0], (0, e))
            new = choose(options, budget, removals)
            if new == pick:
                log(f"round {r}: the same choice")
                break
            pick, blocks = new, fitted(new)
            measured = _output_error(teacher, blocks, _removed(pick), x0, lens0, out_t, out_energy, device)
            history.append(_round(pick, options, removals, measured,
                                  {str(l): {k: v / max(probe_ln[(l, k)], 1e-30) for (m, k), v in sens.items()
                                            if m == l} for l in layers}))
            history[-1]["layer_removal_error"] = {str(l): e for l, e in removal.items()} if removals else None
            log(f"round {r} (sensitivities inside the last choice, {time.time() - t0:.0f} s): predicted {history[-1]['predicted_error']:.4f}, "
                f"measured {measured:.4f}")
        best = min(range(len(history)), key=lambda i: history[i]["measured_error"])
        pick = history[best].pop("pick")
        for h in history:
            h.pop("pick", None)
        history[best]["kept"] = True
        log(f"kept round {best}'s choice (the smallest measured output error)")
    removed = [l for l in layers if pick[(l, "mha")] is None]   # removed whole
    for l in removed:
        pick[(l, "mha")], pick[(l, "ffn")] = (0, 0), 0
    head_counts = {l: pick[(l, "mha")][0] for l in layers} if table is not None else None
    dims = {l: [pick[(l, "mha")][1] if table is not None else pick[(l, "mha")], pick[(l, "ffn")]] for l in layers}
    extra = {"heads": head_counts, "head_order": orders, "removed_layers": removed,
             "layer_removal_error": {str(l): e for l, (_, (_, e)) in first_removals.items()} or None} \
        if table is not None else {}
    out = {"dims": dims, "budget": _budget(config, length, full, budget if table is None else None, dims), **extra,
           "predicted_error": sum(removals[l][1][1] if l in removed else
                                  curves[l]["mha"][pick[(l, "mha")]] + curves[l]["ffn"][pick[(l, "ffn")]]
                                  for l in layers),
            "sensitivity": {str(l): v for l, v in sensitivity.items()} or None, "rounds": history or None,
            "curve_tokens": int(torch.as_tensor(seq_lengths)[subset].sum()),
            "curve_heldout_tokens": int(torch.as_tensor(seq_lengths)[held].sum()),
            "curves": {str(l): {k: {(f"{s[0]},{s[1]}" if isinstance(s, tuple) else str(s)): e for s, e in c.items()}
                                for k, c in cs.items()} for l, cs in first_curves.items()}}
    if history:   # the kept round's prediction (the curves above are the first round's: the blocks alone)
        out["predicted_error"] = next(h["predicted_error"] for h in history if h.get("kept"))
    if table is not None:
        out["budget"]["latency"] = _latency_budget(table, config, dims, head_counts, compression, removed)
        b = out["budget"]["latency"]
        log(f"latency budget 1/{compression:g} in {table['key']['runtime']}: {b['budget_ms']:.3f} of "
            f"{b['uncompressed_ms']:.3f} ms; predicted {b['predicted_ms']:.3f} ms ({b['predicted_ratio']:.2f}x); "
            f"heads per layer {[head_counts[l] for l in layers]}"
            + (f"; layers removed whole {removed}" if removed else ""))
    return out


def _key(s):
    return f"{s[0]},{s[1]}" if isinstance(s, tuple) else str(s)


def _unkey(k):
    return tuple(int(v) for v in k.split(",")) if "," in k else int(k)


def _read_curve_cache(curve_cache):
    """{layer: {"order", "mha", "ffn", "removal"}} of a curve cache file holding these settings, else {}."""
    if not curve_cache or not os.path.isfile(curve_cache[0]):
        return {}
    try:
        with open(curve_cache[0]) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}   # unreadable: measured again and written anew
    try:
        if found.get("settings") != curve_cache[1]:
            return {}
        return {int(l): {"order": c.get("order"), "mha": {_unkey(k): v for k, v in c["mha"].items()},
                         "ffn": {int(k): v for k, v in c["ffn"].items()}, "removal": c.get("removal")}
                for l, c in found["layers"].items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        return {}   # not a curve cache's shape: measured again and written anew


def _write_curve_cache(curve_cache, layers, log=print):
    try:
        atomic_write_json(curve_cache[0], {"settings": curve_cache[1], "layers": {
            str(l): {"order": c["order"], "mha": {_key(k): v for k, v in c["mha"].items()},
                     "ffn": {str(k): v for k, v in c["ffn"].items()}, "removal": c.get("removal")}
            for l, c in sorted(layers.items())}})
    except OSError as e:   # a read-only parent: this allocation stands, the next one measures them again
        log(f"warning: cannot write the curve cache {curve_cache[0]} ({e})")


def _removed(pick):
    return sorted({l for (l, _), s in pick.items() if s is None})


def _round(pick, options, removals, measured, sensitivity):
    """One choice of the rounds: its sizes, predicted (the options' errors summed) and measured output error."""
    removed = _removed(pick)
    pred = sum(removals[l][1][1] for l in removed) + sum(options[k][s][1] for k, s in pick.items() if s is not None)
    sizes = {f"{l},{kind}": (list(s) if isinstance(s, tuple) else s) for (l, kind), s in pick.items()}
    return {"pick": dict(pick), "sizes": sizes, "removed_layers": removed, "predicted_error": pred,
            "measured_error": measured, "sensitivity": sensitivity}


@torch.no_grad()
def _fit_picked(teacher, store, keep, fit_idx, pick, orders, device):
    """The closed-form blocks of a choice, fitted as the curves were (on the fitted sequences): {(layer, kind):
    block}; a block at the teacher's size, or of a layer removed whole, is left out (the teacher's own)."""
    config, nh = teacher.config, teacher.config.num_attention_heads
    blocks = {}
    for l in range(config.num_hidden_layers):
        a, w = pick[(l, "mha")], pick[(l, "ffn")]
        if a is None:
            continue
        k, inner = a if isinstance(a, tuple) else (nh, a)
        todo = {"mha": not (k == nh and inner == config.attn_dims[l]), "ffn": w != config.ffn_dims[l]}
        if not any(todo.values()):
            continue
        x, lengths = select_sequences(*store.load_layer(l), keep)
        layer = teacher.layers[l]
        ins, outs = data_init.block_io(layer, "mha", x, lengths, device)
        fit_tok = flat_positions(lengths, fit_idx)
        if todo["mha"]:
            s = make_block(config, l, "mha", inner, heads=k).to(device).eval()
            if inner == 0:
                s.out_lin.bias.copy_(outs[fit_tok.to(outs.device)].double().mean(0).to(s.out_lin.bias))
            else:
                stats = data_init.mha_statistics(layer.attention, ins, lengths, fit_idx, device)
                data_init.fit_mha(layer.attention, s, stats, heads=None if k == nh else orders[l][:k])
                s.to(device)
                data_init.refit_out_lin(s, ins, outs, lengths, fit_idx, device)
            blocks[(l, "mha")] = s.eval()
        if todo["ffn"]:
            ins, outs, hidden = data_init.ffn_io(layer, ins, outs, hidden=True)
            s = make_block(config, l, "ffn", w).to(device).eval()
            if w == 0:
                s.lin2.bias.copy_(outs[fit_tok.to(outs.device)].double().mean(0).to(s.lin2.bias))
            else:
                data_init.fit_ffn(layer.ffn, s, ins, outs, fit_tok, device, hidden=hidden)
            blocks[(l, "ffn")] = s.eval()
            del hidden
    return blocks


class _Swapped:
    """with _Swapped(teacher, blocks): the teacher's layers run `blocks` ({(layer, kind): block}) instead."""

    def __init__(self, teacher, blocks):
        self.teacher, self.blocks, self.old = teacher, blocks, {}

    def __enter__(self):
        for (l, kind), b in self.blocks.items():
            name = "attention" if kind == "mha" else "ffn"
            self.old[(l, name)] = getattr(self.teacher.layers[l], name)
            setattr(self.teacher.layers[l], name, b)

    def __exit__(self, *exc):
        for (l, name), m in self.old.items():
            setattr(self.teacher.layers[l], name, m)


@torch.no_grad()
def _run_from(teacher, start, h, lens, blocks, removed, device, upto=None):
    """The layers start .. upto - 1 (all that follow by default) with `blocks` in place, those in `removed` skipped."""
    with _Swapped(teacher, blocks):
        for j in range(start, len(teacher.layers) if upto is None else upto):
            if j not in removed:
                h = data_init.layer_forward(teacher.layers[j], h, lens, device)
    return h


def _output_error(teacher, blocks, removed, x0, lens, out_t, out_energy, device):
    """The encoder output's squared error (relative to its energy) with every block of `blocks` in place."""
    return _energy(_run_from(teacher, 0, x0, lens, blocks, set(removed), device).to(out_t) - out_t) / out_energy


@torch.no_grad()
def _in_context(teacher, blocks, removed, probes, x0, lens, out_energy, device):
    """Each block's sensitivity probe and each layer's removal measured inside a choice (`blocks` in place, the
    layers `removed` gone), not among the teacher's blocks: ({(layer, kind): squared change of the encoder's
    output when the teacher's block there is replaced by the probe}, {layer: the same when the layer is removed
    whole}), relative to the teacher output's energy. Among the teacher's blocks this is what the sensitivity
    measures; inside a choice the later layers may carry a block's error on very differently (where the other
    layers' attention is gone, the last attention left carries far more of the output). Not the change of the
    output's error: inside a choice that is already wrong, swapping one block changes the error by little either
    way, and its differences are no cost (measured: they made every block look free). A layer removed whole in
    the choice has no blocks to probe: its blocks keep the sensitivities they had."""
    removed = set(removed)
    change = lambda a, b: _energy(a - b.to(a)) / out_energy
    hs, h = [], x0
    for l in range(len(teacher.layers)):   # every layer's input inside the choice
        hs.append(h)
        h = _run_from(teacher, l, h, lens, blocks, removed, device, upto=l + 1)
    sens, removal = {}, {}
    for l in range(len(teacher.layers)):
        own = {k: b for k, b in blocks.items() if k[0] != l}       # layer l as the teacher's
        ref = _run_from(teacher, l, hs[l], lens, own, removed - {l}, device)
        removal[l] = change(_run_from(teacher, l, hs[l], lens, own, removed | {l}, device), ref)
        if l in removed:
            continue
        for kind in ("mha", "ffn"):
            there = {**own, **{k: b for k, b in blocks.items() if k[0] == l and k[1] != kind}}
            sens[(l, kind)] = change(_run_from(teacher, l, hs[l], lens, {**there, (l, kind): probes[(l, kind)]},
                                               removed, device),
                                     _run_from(teacher, l, hs[l], lens, there, removed, device))
    return sens, removal


def _nearest(grid, size):
    """The nonzero grid size nearest `size` (the uniform size at the budget: where the output currency's
    sensitivity is measured)."""
    return min((g for g in grid if g), key=lambda g: (abs(g - size), g))


@torch.no_grad()
def _carried(teacher, l, name, block, x, lengths, index, out_t, device):
    """Squared error of the encoder's output on the sequences `index` (flat teacher inputs x of layer l) when
    layer l's `name` ("attention" or "ffn") is `block` and every other block is the teacher's."""
    layer = teacher.layers[l]
    old = getattr(layer, name)
    setattr(layer, name, block)
    try:
        h, lens = select_sequences(x, lengths, index)
        for j in range(l, len(teacher.layers)):
            h = data_init.layer_forward(teacher.layers[j], h, lens, device)
    finally:
        setattr(layer, name, old)
    return _energy(h - out_t.to(h))


@torch.no_grad()
def _carried_removed(teacher, l, x, lengths, index, out_t, device):
    """Squared error of the encoder's output on the sequences `index` when layer l is removed whole (its input x
    goes on to layer l + 1) and every other layer is the teacher's."""
    h, lens = select_sequences(x, lengths, index)
    for j in range(l + 1, len(teacher.layers)):
        h = data_init.layer_forward(teacher.layers[j], h, lens, device)
    return _energy(h.to(out_t) - out_t)


LATENCY_UNITS = 10_000   # the dynamic programme's cost unit for a latency budget: 0.1 microseconds


def _cost(config, kind, size, length, table):
    """A block's cost in the budget's currency: multiply-adds, or (a table) its measured latency in 0.1 us;
    a latency-budget attention size is (heads, inner)."""
    if table is None:
        return block_macs(config, kind, size, length)
    from modcomp.latency import block_ms
    k, a = size if kind == "mha" else (None, size)
    return int(round(block_ms(table, kind, a, k) * LATENCY_UNITS))


def _latency_budget(table, config, dims, heads, compression, removed=()):
    """What a latency budget spends, from the table (ms): the uncompressed encoder's predicted time, the budget,
    the base (embeddings, head) and what no block can remove (the base and every layer's fixed cost) and, for
    dims (with the layers `removed` whole), their predicted time."""
    from modcomp.latency import encoder_ms
    L, nh = config.num_hidden_layers, config.num_attention_heads
    full = encoder_ms(table, [(nh, config.attn_dims[l], config.ffn_dims[l]) for l in range(L)])
    fixed = table["base_ms"] + L * table["fixed_ms"]
    out = {"runtime": table["key"]["runtime"], "length": table["key"]["length"], "threads": table["key"]["threads"],
           "cpu": table["key"]["cpu"], "uncompressed_ms": full, "budget_ms": full / compression,
           "base_ms": table["base_ms"], "fixed_total_ms": fixed}
    if dims is not None:
        pred = encoder_ms(table, [None if l in removed else (heads[l], dims[l][0], dims[l][1]) for l in range(L)])
        out.update(predicted_ms=pred, predicted_ratio=full / pred)
    return out


def _budget(config, length, full, budget, dims):
    used = encoder_macs(config, length, dims)
    return {"length": length, "uncompressed_macs": full, "budget_macs": budget, "used_macs": used,
            "achieved_compression": full / used if used else float("inf")}


def allocation_id(dims, heads=None, removed=None):
    """The id an allocated block records ({layer: (attention inner, FFN width)} as JSON, with a latency budget's
    {layer: heads} and the layers it removes whole beside them): load_modules refuses a modules dir whose blocks
    name two different ids (they would not keep one budget)."""
    ids = json.dumps({int(l): list(d) for l, d in sorted(dims.items(), key=lambda kv: int(kv[0]))})
    if heads is None:
        return ids
    ids += " heads " + json.dumps({int(l): int(k) for l, k in sorted(heads.items(), key=lambda kv: int(kv[0]))})
    return ids + (" removed " + json.dumps(sorted(int(l) for l in removed)) if removed else "")


def load_or_allocate(path, settings, compute):
    """allocation.json at `path` when it holds `settings`, else compute() written there (under a POSIX lock on
    path + '.lock', so that the MHA and FFN stages started at once compute it once)."""
    with open(path + ".lock", "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            if os.path.exists(path):
                with open(path) as f:
                    found = json.load(f)
                if found.get("settings") == settings:
                    return found
            result = {"settings": settings, **compute()}
            atomic_write_json(path, result)
            return json.loads(json.dumps(result))  # the same types as a reader gets (string keys)
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
