"""Captured teacher activations on disk: ActivationWriter (capture_data.py), ActivationStore (trainers).

What is stored: only each layer's input (the MHA block input, hidden_states[l] for l = 0..L-1), for
real tokens only (no padding), fp16 by default. Everything else is recomputed exactly from the frozen
teacher when the trainers load it: MHA target = attention(x); FFN input = sa_layer_norm(x + attention(x));
FFN target = ffn(FFN input).
Why: the original stored fp32 inputs AND outputs of both blocks padded to 128 tokens, 4*128*H*4 bytes
per sample per layer; one fp16 tensor of real tokens is 2*H*mean_tokens bytes (RTE on MiniLM: mean
66.5 tokens, 1/15 of the original). The recompute is one teacher block forward per sequence at load
time, far less than the student's training.

Layout of a capture dir: shard_00000.safetensors, ... each with `layer{l}` [n_tokens, H], `lengths`
int32 [n_seq], `example_id` int64, `aug_copy` int32, and manifest.json listing only shards that are
completely on disk (write to a temp file, rename, then rewrite the manifest). Sequences are written in
a fixed order, so an interrupted capture with the same settings resumes where it stopped.
"""
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modcomp.utils import UserError, atomic_write_json, file_sha256, written_atomically

FORMAT = "modular-activations/1"
MANIFEST = "manifest.json"
NOTE = ("Only each layer's input (the MHA block input) is stored, real tokens only, no padding. The "
        "trainers recompute the rest exactly from the frozen teacher: MHA target = attention(x); FFN "
        "input = sa_layer_norm(x + attention(x)); FFN target = ffn(FFN input). The original stored fp32 "
        "inputs and outputs of both blocks padded to 128 tokens (4*128*H*4 bytes per sample per layer); "
        "one fp16 tensor of real tokens is 2*H*mean_tokens bytes. storage_ratio = "
        "bytes_per_sample_per_layer / original_bytes_per_sample_per_layer.")


def shard_name(k):
    return f"shard_{k:05d}.safetensors"


def _is_ours(name):
    """Shard or temp files this module writes (the only files it ever deletes)."""
    return name.startswith(".tmp-") or (name.startswith("shard_") and name.endswith(".safetensors"))


def _read_manifest(out_dir):
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"no capture in {out_dir} ({MANIFEST} missing); run capture_data.py")
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: malformed manifest ({e})") from None
    need = ("status", "settings", "shards", "num_layers", "hidden_size", "n_examples")
    if not isinstance(m, dict) or m.get("format") != FORMAT or any(k not in m for k in need):
        raise UserError(f"{path}: malformed manifest (not {FORMAT} or missing {', '.join(need)})")
    for s in m["shards"]:
        if not isinstance(s, dict) or any(k not in s for k in ("file", "n_sequences", "n_tokens", "sha256", "bytes")):
            raise UserError(f"{path}: malformed manifest (bad shard entry {s!r})")
    return m


def _check_shard(out_dir, s):
    """None if the shard on disk matches its manifest entry, else why not."""
    path = os.path.join(out_dir, s["file"])
    if not os.path.isfile(path):
        return "missing"
    if os.path.getsize(path) != s["bytes"] or file_sha256(path) != s["sha256"]:
        return "corrupted (checksum mismatch)"
    return None


class ActivationWriter:
    """Buffers real-token layer inputs and writes them in shards of `shard_sequences` sequences.

    manifest_fields: "model", "task", "split", "num_layers", "hidden_size", "max_length", "augment",
    "seed", "n_examples" (original examples), "settings" (every flag that affects content) and any
    extras. On an existing dir: same settings and complete -> `.already_complete`; same settings and
    incomplete -> resume (`.n_stored` sequences kept); other settings -> UserError (or wipe if overwrite).
    """

    def __init__(self, out_dir, manifest_fields: dict, shard_sequences=2048, dtype=torch.float16,
                 overwrite=False):
        if shard_sequences < 1:
            raise UserError(f"--shard_sequences must be >= 1, got {shard_sequences}")
        self.out_dir, self.shard_sequences, self.dtype = out_dir, shard_sequences, dtype
        self.fields = json.loads(json.dumps(manifest_fields))  # JSON-normalised, comparable to a reread
        self.num_layers, self.hidden_size = self.fields["num_layers"], self.fields["hidden_size"]
        self.shards, self.already_complete = [], False
        os.makedirs(out_dir, exist_ok=True)
        names = os.listdir(out_dir)
        if overwrite:
            for n in names:
                if _is_ours(n) or n == MANIFEST:
                    os.unlink(os.path.join(out_dir, n))
        elif MANIFEST in names:
            self._resume(_read_manifest(out_dir))
        self._clean_strays()
        self.n_stored = sum(s["n_sequences"] for s in self.shards)
        self._buf = []          # (layers: list of [n_tok, H], lengths, ids, copies) chunks
        self._n_buf = 0
        if not self.already_complete:
            self._write_manifest("incomplete")

    def _resume(self, old):
        new = self.fields["settings"]
        diff = sorted(k for k in set(old["settings"]) | set(new) if old["settings"].get(k) != new.get(k))
        if diff:
            raise UserError(f"{self.out_dir} holds a capture with other settings (differing: "
                            f"{', '.join(diff)}); use a new --output_dir or --overwrite")
        for s in old["shards"]:  # keep the verified prefix; anything after a bad shard is recaptured
            why = _check_shard(self.out_dir, s)
            if why:
                print(f"{s['file']} is {why}; recapturing from there")
                break
            self.shards.append(s)
        if old["status"] == "complete" and len(self.shards) == len(old["shards"]):
            self.already_complete = True
            self.manifest = old

    def _clean_strays(self):
        listed = {s["file"] for s in self.shards}
        for n in os.listdir(self.out_dir):
            if _is_ours(n) and n not in listed:
                os.unlink(os.path.join(self.out_dir, n))

    @property
    def n_next(self):
        """Global index (in the capture order) of the next sequence the writer expects."""
        return self.n_stored + self._n_buf

    def add(self, hidden_states_per_layer, lengths, example_ids, copies, start=None):
        """Buffer a batch: row i's first lengths[i] tokens of every layer input.

        start: global index of row 0 in the capture order (default: n_next). Rows before n_next are
        already stored (a resumed capture restarting mid-batch) and are skipped."""
        if len(hidden_states_per_layer) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} layer inputs, got {len(hidden_states_per_layer)}")
        start = self.n_next if start is None else start
        skip = self.n_next - start
        if skip < 0:
            raise ValueError(f"sequence {start} given but the next one expected is {self.n_next}")
        lengths = torch.as_tensor(lengths).long().cpu()[skip:]
        if len(lengths) == 0:
            return
        T = hidden_states_per_layer[0].shape[1]
        mask = torch.arange(T)[None, :] < lengths[:, None]
        layers = [h[skip:].detach().cpu()[mask].to(self.dtype).contiguous() for h in hidden_states_per_layer]
        self._buf.append((layers, lengths.to(torch.int32),
                          torch.as_tensor(example_ids).long().cpu()[skip:],
                          torch.as_tensor(copies).cpu().to(torch.int32)[skip:]))
        self._n_buf += len(lengths)
        while self._n_buf >= self.shard_sequences:
            self._flush(self.shard_sequences)

    def _flush(self, n):
        """Write the first n buffered sequences as the next shard; keep the rest buffered."""
        layers = [torch.cat([c[0][l] for c in self._buf]) for l in range(self.num_layers)]
        lengths, ids, copies = (torch.cat([c[i] for c in self._buf]) for i in (1, 2, 3))
        n_tok = int(lengths[:n].sum())
        tensors = {f"layer{l}": x[:n_tok].contiguous() for l, x in enumerate(layers)}
        tensors.update(lengths=lengths[:n].contiguous(), example_id=ids[:n].contiguous(),
                       aug_copy=copies[:n].contiguous())
        self._write_shard(tensors, n, n_tok)
        rest = len(lengths) - n
        self._buf = [([x[n_tok:] for x in layers], lengths[n:], ids[n:], copies[n:])] if rest else []
        self._n_buf = rest

    def _write_shard(self, tensors, n_seq, n_tok):
        name = shard_name(len(self.shards))
        path = os.path.join(self.out_dir, name)
        with written_atomically(path) as tmp:
            save_file(tensors, tmp)
            sha = file_sha256(tmp)
        self.shards.append({"file": name, "n_sequences": n_seq, "n_tokens": n_tok, "sha256": sha,
                            "bytes": os.path.getsize(path)})
        self.n_stored += n_seq
        self._write_manifest("incomplete")

    def _write_manifest(self, status):
        total = sum(s["bytes"] for s in self.shards)
        H, L, n_ex = self.hidden_size, self.num_layers, self.fields["n_examples"]
        per = total / (n_ex * L) if status == "complete" and n_ex else None
        orig = 4 * 128 * H * 4
        m = {"format": FORMAT, "status": status, "dtype": str(self.dtype).replace("torch.", ""),
             "stored": ["mha_in"], "note": NOTE, **self.fields,
             "n_sequences": self.n_stored, "n_tokens": sum(s["n_tokens"] for s in self.shards),
             "shards": self.shards, "bytes_per_sample_per_layer": per,
             "original_bytes_per_sample_per_layer": orig,
             "storage_ratio": per / orig if per is not None else None}
        atomic_write_json(os.path.join(self.out_dir, MANIFEST), m)
        self.manifest = m

    def close(self):
        """Write the last shard and the final manifest (status complete); print the storage figure."""
        if self.already_complete:
            return self.manifest
        if self._n_buf:
            self._flush(self._n_buf)
        self._write_manifest("complete")
        m = self.manifest
        if m["bytes_per_sample_per_layer"] is not None:
            print(f"stored {m['n_examples']} examples ({m['n_sequences']} sequences, {m['n_tokens']} tokens) "
                  f"in {len(self.shards)} shards: {m['bytes_per_sample_per_layer']:,.0f} bytes per sample "
                  f"per layer ({m['dtype']}) vs {m['original_bytes_per_sample_per_layer']:,} in the original "
                  f"= 1/{1 / m['storage_ratio']:.1f}")
        return m


class ActivationStore:
    """A complete capture dir, read by the trainers."""

    def __init__(self, dir, verify=True):
        self.dir = dir
        self.manifest = m = _read_manifest(dir)
        if m["status"] != "complete":
            raise UserError(f"capture in {dir} is incomplete; rerun capture_data.py to resume")
        self.num_layers, self.hidden_size = m["num_layers"], m["hidden_size"]
        self.model, self.n_sequences = m.get("model"), m.get("n_sequences")
        if verify:
            self.verify()

    def verify(self):
        for s in self.manifest["shards"]:
            why = _check_shard(self.dir, s)
            if why:
                raise UserError(f"{os.path.join(self.dir, s['file'])}: shard {why}; "
                                "rerun capture_data.py to recapture it")

    def _read(self, names):
        out = {k: [] for k in names}
        for s in self.manifest["shards"]:
            path = os.path.join(self.dir, s["file"])
            try:
                with safe_open(path, framework="pt") as f:
                    for k in names:
                        out[k].append(f.get_tensor(k))
            except Exception as e:  # unreadable although the checksum was fine: not a capture shard
                raise UserError(f"{path}: cannot read {', '.join(names)} ({e})") from None
        return out

    def load_layer(self, l):
        """(x float32 [total_tokens, H], lengths long [n_seq]) of layer l's input, all shards in order."""
        if not isinstance(l, int) or not 0 <= l < self.num_layers:
            raise UserError(f"layer {l} out of range: capture in {self.dir} has layers 0..{self.num_layers - 1}")
        t = self._read([f"layer{l}", "lengths"])
        for s, x, n in zip(self.manifest["shards"], t[f"layer{l}"], t["lengths"]):
            if x.shape != (int(n.sum()), self.hidden_size):
                raise UserError(f"{os.path.join(self.dir, s['file'])}: layer{l} has shape {tuple(x.shape)}, "
                                f"expected ({int(n.sum())}, {self.hidden_size})")
        x = torch.cat(t[f"layer{l}"]).float() if t["lengths"] else torch.zeros(0, self.hidden_size)
        lengths = torch.cat(t["lengths"]).long() if t["lengths"] else torch.zeros(0, dtype=torch.long)
        return x, lengths

    def sequence_info(self):
        """(lengths, example_id, aug_copy) long tensors [n_seq], in storage order."""
        t = self._read(["lengths", "example_id", "aug_copy"])
        return tuple(torch.cat(t[k]).long() for k in ("lengths", "example_id", "aug_copy"))


def sequence_offsets(lengths):
    """Start of each sequence in the flat token tensor."""
    lengths = torch.as_tensor(lengths).long()
    return torch.cumsum(lengths, 0) - lengths


def _token_grid(lengths, index, offsets):
    """(start + position grid [b, Tmax], mask [b, Tmax]) of the sequences `index` in the flat token tensor."""
    lengths = torch.as_tensor(lengths).long()
    offsets = sequence_offsets(lengths) if offsets is None else offsets
    index = torch.as_tensor(index).long().to(lengths.device)
    L, start = lengths[index], offsets.to(lengths.device)[index]
    pos = torch.arange(int(L.max()) if len(L) else 0, device=lengths.device)
    return start[:, None] + pos[None, :], pos[None, :] < L[:, None]


def flat_positions(lengths, index, offsets=None):
    """Positions in the flat token tensor of the real tokens of sequences `index`, in the order
    pad_sequences(...)[0][mask] lists them."""
    grid, mask = _token_grid(lengths, index, offsets)
    return grid[mask]


def select_sequences(x, lengths, index):
    """(flat tokens, lengths) of the sequences `index` only, in that order."""
    lengths = torch.as_tensor(lengths).long()
    index = torch.as_tensor(index).long()
    return x[flat_positions(lengths, index).to(x.device)], lengths[index]


def pad_sequences(x, lengths, index, offsets=None):
    """Gather sequences `index` from the flat [total_tokens, H] x and right-pad them.

    Returns (batch (b, Tmax, H) with zeros at padding, mask (b, Tmax) bool, True = real token).
    Pass offsets = sequence_offsets(lengths) to avoid recomputing the cumsum per batch."""
    grid, mask = _token_grid(lengths, index, offsets)
    batch = x.new_zeros(mask.shape[0], mask.shape[1], x.shape[-1])
    batch[mask.to(x.device)] = x[grid[mask].to(x.device)]
    return batch, mask.to(x.device)


def subsample(lengths, index, max_tokens, seed=0):
    """A seeded random subset of the sequences `index` holding at most `max_tokens` tokens (all if None)."""
    index = torch.as_tensor(index).long()
    if max_tokens is None or int(torch.as_tensor(lengths)[index].sum()) <= max_tokens:
        return index
    perm = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))]
    keep = torch.cumsum(torch.as_tensor(lengths)[perm], 0) <= max_tokens
    keep[0] = True
    return perm[keep].sort().values


def by_length(lengths, index):
    """The sequences `index` ordered by length, longest first: batches of neighbours pad little. (For sums over
    sequences, which do not depend on the order; training batches stay shuffled.)"""
    index = torch.as_tensor(index).long()
    return index[torch.argsort(torch.as_tensor(lengths)[index], descending=True, stable=True)]
