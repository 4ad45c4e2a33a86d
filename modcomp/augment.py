"""Offline data augmentation by word substitution (the paper uses nlpaug's GloVe substitution).

A word is replaced by one of its nearest neighbours in an embedding space: either a GloVe text file
(`WordNeighbours.from_glove`) or, with no GloVe file at hand, the teacher's own input word embeddings
(`WordNeighbours.from_embeddings`). `augment_examples` appends up to `n_copies` augmented copies of each row.

Rows addressed by position stay consistent: WSC rows (with 'span1_index') keep the words at the span
indices, and the word count of every text is preserved, so the indices still point at the same words;
WiC rows (with 'start1') carry character offsets into sentence1/sentence2, so their copies equal the
originals (nothing in them is augmented).
"""
import random
import re

import numpy as np
from tqdm import tqdm

from modcomp.utils import UserError

STOPWORDS = frozenset("""
a an the of to and or but nor in on at by for from with about as into onto than then so if is
was are were be been being am do does did has have had it its this that these those not no i
he she they we you me him her us them his hers our their my your
""".split())

# String fields that are labels, ids or spans rather than free text: never augmented by default.
NON_TEXT_KEYS = frozenset({"idx", "label", "question", "word", "span1_text", "span2_text"})


class WordNeighbours:
    """Nearest-neighbour words in an embedding space; candidates are whole alphabetic words."""

    def __init__(self, words, vectors, k=10):
        if not words:
            raise UserError("no candidate words for word substitution")
        if int(k) < 1:
            raise UserError(f"k must be >= 1, got {k}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        v = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        self.unit = v / np.maximum(norms, 1e-12)    # normalised once
        self.k = int(k)
        self._cache = {}

    @classmethod
    def from_embeddings(cls, tokenizer, embedding_matrix, k=10):
        """Space = a teacher's input word-embedding matrix (vocab x H) with its tokenizer's vocab."""
        if hasattr(embedding_matrix, "detach"):
            embedding_matrix = embedding_matrix.detach().float().cpu().numpy()
        m = np.asarray(embedding_matrix, dtype=np.float32)
        special = set(getattr(tokenizer, "all_special_tokens", []) or [])
        pairs = sorted((i, t) for t, i in tokenizer.get_vocab().items()
                       if i < m.shape[0] and len(t) >= 2 and t.isalpha() and t not in special)
        return cls([t for _, t in pairs], m[[i for i, _ in pairs]], k=k)

    @classmethod
    def from_glove(cls, path, k=10, max_words=100_000):
        """A GloVe text file ("word v1 ... vD" per line; an optional word2vec header "N D" is skipped).
        Keeps the first `max_words` alphabetic words."""
        words, vecs, seen, dim = [], [], set(), None
        try:
            f = open(path, encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read GloVe file {path}: {e.strerror}") from None
        with f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if not line.strip():
                    continue
                if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue                        # word2vec-style header "N D"
                if dim is None:
                    dim = len(parts) - 1
                    if dim < 1:
                        raise UserError(f"{path}:{lineno}: malformed GloVe line (no vector)")
                if len(parts) < dim + 1:
                    raise UserError(f"{path}:{lineno}: malformed GloVe line "
                                    f"(expected a word and {dim} numbers, got {len(parts)} fields)")
                word = " ".join(parts[:len(parts) - dim])  # a few GloVe releases have words with spaces
                if not word.isalpha() or word in seen:
                    continue
                try:
                    vec = [float(x) for x in parts[len(parts) - dim:]]
                except ValueError:
                    raise UserError(f"{path}:{lineno}: malformed GloVe line (non-numeric value)") from None
                seen.add(word)
                words.append(word)
                vecs.append(vec)
                if len(words) >= max_words:
                    break
        if not words:
            raise UserError(f"{path}: no alphabetic words in GloVe file")
        return cls(words, np.array(vecs, dtype=np.float32), k=k)

    def _lookup(self, word):
        i = self.index.get(word)
        return self.index.get(word.lower()) if i is None else i

    def neighbours(self, word):
        """Top-k words by cosine similarity, excluding the word itself (any case); [] if unknown."""
        if word in self._cache:
            return self._cache[word]
        i = self._lookup(word)
        out = []
        if i is not None:
            sims = self.unit @ self.unit[i]
            n, own = len(sims), self.words[i].lower()
            m = min(n, self.k + 8)
            while True:
                top = np.argpartition(-sims, m - 1)[:m] if m < n else np.arange(n)
                top = top[np.lexsort((top, -sims[top]))]     # by similarity, ties by index
                out = [self.words[j] for j in top if self.words[j].lower() != own][:self.k]
                if len(out) >= self.k or m >= n:
                    break
                m = n
        self._cache[word] = out
        return out


def _match_case(word, template):
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:].lower()
    return word.lower()


def _split_word(token):
    """'*table,' -> ('*', 'table', ','): leading/trailing non-letters around the core."""
    alpha = [i for i, ch in enumerate(token) if ch.isalpha()]
    if not alpha:
        return token, "", ""
    return token[:alpha[0]], token[alpha[0]:alpha[-1] + 1], token[alpha[-1] + 1:]


def augment_text(text, neighbours, rng: random.Random, p=0.3, *, keep=()):
    """Replace each non-stopword alphabetic word that has neighbours with probability p by a random
    neighbour, keeping punctuation, capitalisation, whitespace and the word count. Words whose
    whitespace-split index is in `keep` are left alone."""
    if not 0.0 <= p <= 1.0:
        raise UserError(f"substitution probability must be in [0, 1], got {p}")
    pieces = re.split(r"(\s+)", text)
    wi = -1
    for n, tok in enumerate(pieces):
        if not tok or tok.isspace():
            continue
        wi += 1
        if wi in keep:
            continue
        lead, core, trail = _split_word(tok)
        if not core.isalpha() or core.lower() in STOPWORDS:
            continue
        cands = [w for w in neighbours.neighbours(core.lower()) if len(w.split()) == 1]
        if not cands or rng.random() >= p:
            continue
        pieces[n] = lead + _match_case(rng.choice(cands), core) + trail
    return "".join(pieces)


def _wsc_keep(row):
    keep = set()
    for s in ("1", "2"):
        i = row.get(f"span{s}_index")
        if isinstance(i, int):
            span = row.get(f"span{s}_text")
            keep.update(range(i, i + max(1, len(span.split()) if isinstance(span, str) else 1)))
    return keep


def augment_examples(examples, n_copies, neighbours, seed, p=0.3, text_keys=None):
    """Originals (aug_copy=0) followed by, for each copy c=1..n_copies, an augmented copy of every row
    (aug_copy=c). Labels and other non-text fields are unchanged; rows are shallow-copied.

    WSC rows ('span1_index'): the span words stay unchanged at their indices (word counts are preserved).
    WiC rows ('start1'): character offsets into sentence1/sentence2 -> nothing is augmented; copies equal
    the originals apart from aug_copy."""
    if not isinstance(n_copies, int) or n_copies < 0:
        raise UserError(f"number of augmented copies must be an integer >= 0, got {n_copies!r}")
    for i, row in enumerate(examples):
        if not isinstance(row, dict):
            raise UserError(f"example {i} is not a dict")
    rng = random.Random(seed)
    out = [dict(row, aug_copy=0) for row in examples]
    with tqdm(total=n_copies * len(examples), desc="augment", disable=None) as bar:
        for c in range(1, n_copies + 1):
            for row in examples:
                new = dict(row, aug_copy=c)
                if "start1" not in row:
                    keep = _wsc_keep(row) if "span1_index" in row else ()
                    keys = text_keys if text_keys is not None else [k for k in row if k not in NON_TEXT_KEYS]
                    for k in keys:
                        if isinstance(row.get(k), str):
                            new[k] = augment_text(row[k], neighbours, rng, p, keep=keep)
                out.append(new)
                bar.update()
    return out


def neighbours_for(model_name_or_path, glove=None, k=10):
    """GloVe file given -> its space; else the teacher's tokenizer vocab and input word embeddings."""
    if glove:
        return WordNeighbours.from_glove(glove, k=k)
    from transformers import AutoModel, AutoTokenizer
    from modeling_moddistilbert import resolve_model_path
    path = resolve_model_path(model_name_or_path)
    tok = AutoTokenizer.from_pretrained(path)
    emb = AutoModel.from_pretrained(path).get_input_embeddings().weight
    return WordNeighbours.from_embeddings(tok, emb, k=k)
