"""A tiny linear classifier over word n-grams of the normalised text.

The weights are a sparse vocabulary (n-gram -> weight) trained by bench/train_screening_model.py and shipped in
``injection.json.gz`` beside this file: no download, no numpy at run time, a dictionary look-up per n-gram.

Long texts are scored as sliding windows of words and the most suspicious window wins, so an instruction hidden in
the middle of a long e-mail or tool result is not diluted by the benign text around it.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import accumulate, pairwise

WINDOW_WORDS = 48
WINDOW_STRIDE = 24
MODEL_FILE = "injection.json.gz"


def token_features(tokens: list[str]) -> list[list[str]]:
    """The n-grams starting at each token position: unigram, bigram and prefix-of-long-word.

    Returned per position so the scorer can sum them over sliding windows. Shared with training so that both
    see exactly the same features.
    """
    out: list[list[str]] = []
    n = len(tokens)
    for i, tok in enumerate(tokens):
        feats = [tok]
        if i + 1 < n:
            feats.append(tok + " " + tokens[i + 1])
        if len(tok) > 7:
            # German-style compounds and inflections share a stem: "anweisungen" ~ "anweisung".
            feats.append(tok[:6] + "*")
        out.append(feats)
    return out


@dataclass(frozen=True, slots=True)
class InjectionModel:
    bias: float
    weights: dict[str, float]
    version: str

    def window_logits(self, tokens: list[str]) -> list[float]:
        # Same features as token_features(), computed with list comprehensions: this is the hot path.
        get = self.weights.get
        uni = [get(t, 0.0) for t in tokens]
        bi = [get(a + " " + b, 0.0) for a, b in pairwise(tokens)]
        stem = [get(t[:6] + "*", 0.0) if len(t) > 7 else 0.0 for t in tokens]
        bi.append(0.0)
        contrib = list(map(_add3, uni, bi, stem))
        n = len(contrib)
        if n <= WINDOW_WORDS:
            return [self.bias + sum(contrib)]
        prefix = [0.0, *accumulate(contrib)]
        starts = list(range(0, n - WINDOW_WORDS + 1, WINDOW_STRIDE))
        if starts[-1] != n - WINDOW_WORDS:
            starts.append(n - WINDOW_WORDS)
        return [self.bias + prefix[s + WINDOW_WORDS] - prefix[s] for s in starts]

    def score(self, tokens: list[str]) -> float:
        """Probability (0..1) that the text is a prompt injection."""
        if not tokens:
            return 0.0
        return _sigmoid(max(self.window_logits(tokens)))


def _add3(a: float, b: float, c: float) -> float:
    return a + b + c


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def model_from_dict(data: dict[str, object]) -> InjectionModel:
    weights = data.get("weights")
    bias = data.get("bias")
    if not isinstance(weights, dict) or not isinstance(bias, (int, float)):
        raise ValueError("screening model file lacks 'weights' or 'bias'")
    return InjectionModel(bias=float(bias), weights={str(k): float(v) for k, v in weights.items()},
                          version=str(data.get("version", "")))


@lru_cache(maxsize=1)
def load_model() -> InjectionModel | None:
    """The shipped model, or None when the package was built without it (rules still work)."""
    try:
        raw = resources.files(__name__).joinpath(MODEL_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return model_from_dict(json.loads(gzip.decompress(raw)))
