"""A small linear classifier over hashed word and character n-grams of the normalised text.

Features of a window of words (binary: a token or bigram repeated in the window counts once, so repetition
or sheer length never adds evidence):

* each distinct token: its own hash, and the hashes of its character 3-, 4- and 5-grams with boundary marks
  (``<ign``, ``nore>``) — these catch inflections, compounds and obfuscations the word list never saw;
* each distinct pair of neighbouring tokens (word bigram).

Every feature hashes (CRC-32, stable across processes, unlike ``hash()``) into a fixed array of ``2**DIM_BITS``
float32 weights shipped as ``injection.f32.gz`` beside this file, with the bias and settings in
``injection.json``. Inference is pure Python: a token's summed weight is cached, so a 4 KB message costs one
dictionary look-up per token plus one array read per bigram.

Long texts are scored as sliding windows of words and the most suspicious window wins, so an instruction hidden
in the middle of a long e-mail or tool result is not diluted by the benign text around it.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from itertools import pairwise
from operator import xor

WINDOW_WORDS = 48
WINDOW_STRIDE = 24
DIM_BITS = 18
MODEL_META = "injection.json"
MODEL_WEIGHTS = "injection.f32.gz"
# Character n-grams are taken from the first MAX_GRAM_CHARS characters of a token only: a 2 000-character
# base64 blob should not cost 6 000 hash computations (the decoders look at such blobs separately).
MAX_GRAM_CHARS = 24
GRAM_SIZES = (3, 4, 5)
_BIGRAM_MUL = 0x9E3779B1
_BIGRAM_ADD = 0x7F4A7C15
_TOKEN_CACHE_MAX = 100_000


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8"))


def token_hashes(token: str, mask: int) -> list[int]:
    """Feature indices of one token: its unigram and its distinct boundary-marked character n-grams."""
    out = [_crc("w:" + token) & mask]
    marked = "<" + token[:MAX_GRAM_CHARS] + ">"
    grams = {marked[i:i + n] for n in GRAM_SIZES for i in range(len(marked) - n + 1)}
    out.extend(_crc(g) & mask for g in grams)
    return out


def bigram_index(h_a: int, h_b: int, mask: int) -> int:
    """Index of the bigram (a, b) from the tokens' own CRCs: arithmetic, not another hash of a joined string."""
    return ((h_a * _BIGRAM_MUL) & mask) ^ ((h_b + _BIGRAM_ADD) & mask)


def window_features(tokens: list[str], mask: int) -> list[int]:
    """Feature indices of one window (with repeats where distinct tokens share a character n-gram): the exact
    feature definition the scorer uses, exported for training."""
    out: list[int] = []
    for t in set(tokens):
        out.extend(token_hashes(t, mask))
    crcs = [_crc(t) for t in tokens]
    out.extend({bigram_index(a, b, mask) for a, b in pairwise(crcs)})
    return out


def windows(n: int) -> list[tuple[int, int]]:
    """(start, end) token ranges scored for a text of n tokens."""
    if n <= WINDOW_WORDS:
        return [(0, n)]
    starts = list(range(0, n - WINDOW_WORDS + 1, WINDOW_STRIDE))
    if starts[-1] != n - WINDOW_WORDS:
        starts.append(n - WINDOW_WORDS)
    return [(s, s + WINDOW_WORDS) for s in starts]


@dataclass(slots=True, eq=False)
class InjectionModel:
    bias: float
    weights: array  # array('f') of 2**bits weights
    version: str
    bits: int = DIM_BITS
    # How the engine weighs p: evidence scale * max(0, p - floor) / (1 - floor), chosen at training time by
    # cross-validation on training rows only (bench/train_screening_model.py).
    floor: float = 0.5
    scale: float = 0.55
    # Per token: the summed weight of its unigram and character n-grams, and the two halves of its bigram index
    # (see bigram_index). Three plain dicts so the hot path can map over them at C speed. Dict operations are
    # atomic under the GIL; when they grow too big they are replaced (not cleared), so a scan running in another
    # thread keeps the dicts it started with.
    _contrib: dict[str, float] = field(default_factory=dict, repr=False)
    _left: dict[str, int] = field(default_factory=dict, repr=False)
    _right: dict[str, int] = field(default_factory=dict, repr=False)

    def clear_cache(self) -> None:
        """Forget every cached token (the bench's "cold" state)."""
        self._contrib, self._left, self._right = {}, {}, {}

    def _learn(self, missing: Iterable[str], contrib: dict[str, float], left: dict[str, int],
               right: dict[str, int]) -> None:
        w = self.weights
        mask = (1 << self.bits) - 1
        for t in missing:
            h = _crc(t)
            contrib[t] = sum(w[i] for i in token_hashes(t, mask))
            left[t] = (h * _BIGRAM_MUL) & mask
            right[t] = (h + _BIGRAM_ADD) & mask

    def window_logits(self, tokens: list[str], distinct: set[str] | None = None) -> list[float]:
        """Logit of each window (see windows). ``distinct``: set(tokens), if the caller has it."""
        # The hot path: C-level map/set/sum over cached per-token numbers, no Python-level loop per token.
        if distinct is None:
            distinct = set(tokens)
        contrib, left, right = self._contrib, self._left, self._right
        missing = distinct.difference(contrib)
        if missing:
            if len(contrib) + len(missing) > _TOKEN_CACHE_MAX:
                contrib, left, right = {}, {}, {}
                self._contrib, self._left, self._right = contrib, left, right
                missing = distinct
            self._learn(missing, contrib, left, right)
        lefts = list(map(left.__getitem__, tokens))
        rights = list(map(right.__getitem__, tokens))
        bigrams = list(map(xor, lefts, rights[1:]))  # == bigram_index(crc(a), crc(b), mask)
        uni_of = contrib.__getitem__
        bi_of = self.weights.__getitem__
        bias = self.bias
        return [bias + sum(map(uni_of, set(tokens[s:e]))) + sum(map(bi_of, set(bigrams[s:e - 1])))
                for s, e in windows(len(tokens))]

    def score(self, tokens: list[str], distinct: set[str] | None = None) -> float:
        """Probability (0..1) that the text is a prompt injection (its most suspicious window).
        ``distinct``: set(tokens), if the caller has it."""
        if not tokens:
            return 0.0
        return _sigmoid(max(self.window_logits(tokens, distinct)))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def model_from_parts(meta: dict[str, object], raw_weights: bytes) -> InjectionModel:
    bias = meta.get("bias")
    bits = meta.get("dim_bits")
    if not isinstance(bias, (int, float)) or not isinstance(bits, int):
        raise ValueError("screening model metadata lacks 'bias' or 'dim_bits'")
    weights = array("f")
    weights.frombytes(raw_weights)
    if sys.byteorder == "big":  # the file is little-endian float32
        weights.byteswap()
    if len(weights) != 1 << bits:
        raise ValueError(f"screening model has {len(weights)} weights, expected {1 << bits}")
    return InjectionModel(bias=float(bias), weights=weights, version=str(meta.get("version", "")), bits=bits,
                          floor=float(meta.get("floor", 0.5)), scale=float(meta.get("scale", 0.55)))  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def load_model() -> InjectionModel | None:
    """The shipped model, or None when the package was built without it (rules still work)."""
    folder = resources.files(__name__)
    try:
        meta = json.loads(folder.joinpath(MODEL_META).read_text(encoding="utf-8"))
        raw = gzip.decompress(folder.joinpath(MODEL_WEIGHTS).read_bytes())
    except FileNotFoundError:
        return None
    return model_from_parts(meta, raw)
