"""The screening engine: rule packs + a small classifier -> a Verdict for a piece of text.

Evidence combines as a noisy-or: each matching rule contributes its weight w (the probability that this
evidence alone means an injection), the classifier contributes its calibrated probability, and
score = 1 - prod(1 - w_i). ``flagged`` is ``score >= threshold``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from otelgate.screening.decode import Decoded, decode_payloads
from otelgate.screening.model import InjectionModel, load_model
from otelgate.screening.normalize import Normalized, normalize

REDACTION = "[otelgate: removed suspected prompt injection]"
MODEL_RULE_ID = "model:injection"
# A longer text is scanned as its first and last MAX_SCAN_CHARS / 2 characters (instructions to a model sit
# near the start or the end of what it reads); the middle is not scanned and the verdict says so with the
# zero-weight rule LIMIT_RULE_ID. Flagging every long text instead would block ordinary large documents
# (a 3 MiB request must pass), and scanning megabytes would stall the request. 256 KiB scans in tens of ms.
MAX_SCAN_CHARS = 256 * 1024
LIMIT_RULE_ID = "limit:partial_scan"
# The classifier's probability p counts as evidence scale * max(0, p - floor) / (1 - floor): below the floor it
# says nothing, above it it rises to scale. floor and scale ship with the model (model/injection.json), chosen by
# k-fold cross-validation on the training rows only, never on held-out data.
# Weight of the evidence "this text carried an encoded payload in which rules matched", and of text hidden in
# Unicode tag characters (invisible to a human reviewer, read by the model).
DECODED_WEIGHT = 0.3
HIDDEN_TAGS_WEIGHT = 0.6
_HIDDEN_MIN_CHARS = 8  # flag emoji (England, Scotland) use a few tag letters legitimately

_RULE_KEYS = {"id", "category", "patterns", "weight", "languages", "keywords", "view", "description"}
_VIEWS = ("words", "folded")
# Keyword windows: a pattern spans at most ~15 words around its keyword, so 300 characters before and 400 after
# cover it; texts shorter than _WINDOW_MIN_CHARS are searched whole.
_WINDOW_BEFORE = 300
_WINDOW_AFTER = 400
_WINDOW_MIN_CHARS = 1500
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?。！？])\s+|\n+")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    category: str
    weight: float
    languages: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    view: str
    # Whole tokens, and 4-character prefixes (from keywords written "stem*"), of which at least one must occur
    # in the words view for the rule to run: a cheap pre-filter that keeps most regexes off most texts.
    keywords: frozenset[str]
    prefixes: frozenset[str]
    source: str
    # The same patterns prepared for fast searching (see _fast_pattern); derived from ``patterns``.
    fast: tuple[tuple[re.Pattern[str], bool], ...] = ()
    # Per pattern: the literal token beginnings a match must start with (None: unknown); see _lead_heads.
    leads: tuple[frozenset[str] | None, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    flagged: bool
    score: float
    rules: tuple[str, ...]
    categories: tuple[str, ...]

    def as_dict(self, action: str) -> dict[str, Any]:
        return {"flagged": self.flagged, "action": action, "rules": list(self.rules), "score": round(self.score, 3)}


# ------------------------------------------------------------------------------------------------ pack loading


def _rule_from_dict(raw: Any, source: str, index: int) -> Rule:
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: rule #{index}: must be a mapping, got {type(raw).__name__}")
    rid = raw.get("id")
    where = f"{source}: rule {rid!r}" if isinstance(rid, str) and rid else f"{source}: rule #{index}"
    if not isinstance(rid, str) or not rid:
        raise ValueError(f"{where}: 'id' must be a non-empty string")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
    category = raw.get("category")
    if not isinstance(category, str) or not category:
        raise ValueError(f"{where}: 'category' must be a non-empty string")
    weight = raw.get("weight", 0.5)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 < weight <= 1.0:
        raise ValueError(f"{where}: 'weight' must be a number in (0, 1], got {weight!r}")
    patterns = raw.get("patterns")
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{where}: 'patterns' must be a non-empty list of regex strings")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise ValueError(f"{where}: bad pattern {p!r}: {exc}") from exc
    languages = raw.get("languages", ["any"])
    if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
        raise ValueError(f"{where}: 'languages' must be a list of language codes")
    view = raw.get("view", "words")
    if view not in _VIEWS:
        raise ValueError(f"{where}: 'view' must be one of {_VIEWS}, got {view!r}")
    keywords = raw.get("keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
        raise ValueError(f"{where}: 'keywords' must be a list of non-empty strings")
    whole = frozenset(k.lower() for k in keywords if not k.endswith("*"))
    prefixes = frozenset(k.lower().rstrip("*")[:4] for k in keywords if k.endswith("*"))
    fast = tuple(_fast_pattern(p) for p in patterns)
    leads = tuple(_lead_heads(p) if view == "words" else _folded_heads(p) for p in patterns)
    return Rule(rid, category, float(weight), tuple(languages), tuple(compiled), view, whole, prefixes, source,
                fast, leads)


def _top_level_alternation(src: str) -> bool:
    return len(_split_top(src)) > 1


# Literal text at the start of a regex: letters and digits of any script, spaces and hyphens.
_LITERAL_RE = re.compile(r"(?:[^\W_]|[ -])*")


def _split_top(src: str) -> list[str]:
    """``src`` split at its top-level ``|``."""
    parts: list[str] = []
    depth = 0
    in_class = False
    cur = 0
    i = 0
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(src[cur:i])
            cur = i + 1
        i += 1
    parts.append(src[cur:])
    return parts


def _branch_heads(branch: str) -> list[str] | None:
    """The literal text a match of ``\\b(?:alt1|alt2...)rest`` or ``\\bword rest`` starts with, per
    alternative, or None when that cannot be read off the branch."""
    if not branch.startswith("\\b"):
        return None
    body = branch[2:]
    if body.startswith("(?:"):
        depth = 0
        end = -1
        i = 0
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                i += 2
                continue
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    end = i
                    break
            i += 1
        if end == -1 or body[end + 1:end + 2] in ("?", "*", "{", "+"):
            return None
        alternatives = _split_top(body[3:end])
    else:
        alternatives = [body]
    out = []
    for alt in alternatives:
        lead = _LITERAL_RE.match(alt).group(0)  # type: ignore[union-attr]
        if alt[len(lead):len(lead) + 1] in ("?", "*", "{"):
            lead = lead[:-1]  # its last letter is optional
        if not lead:
            return None
        out.append(lead)
    return out


def _lead_heads(src: str) -> frozenset[str] | None:
    """For a words-view pattern whose every top-level branch starts ``\\b`` + literal letters (``\\bword ...``,
    ``\\b(?:alt1|alt2...)...``): the literal beginnings a match must start with, or None when that cannot be
    read off the pattern. In the words view a word boundary before a letter is the start of a token, so a match
    can only start at a token beginning with one of these heads: the engine tries the pattern only there
    (``pattern.match`` at each such position), which finds a match exactly when ``pattern.search`` would."""
    heads: set[str] = set()
    for branch in _split_top(src):
        got = _branch_heads(branch)
        if got is None:
            return None
        heads.update(got)
    return frozenset(heads)


# A folded-view pattern is tried at every occurrence of its heads (the regex checks the word boundary); a head of
# one or two letters occurs so often there that the plain search is cheaper.
_FOLDED_MIN_HEAD = 3
# "(?:^|\n)": a match starts at the start of the text or at a newline.
_LINE_START = "(?:^|\\n)"


def _folded_heads(src: str) -> frozenset[str] | None:
    if src.startswith(_LINE_START):
        return frozenset({"\n", ""})  # "" stands for the start of the text; see _starts_at
    heads = _lead_heads(src)
    if heads is None or min(map(len, heads)) < _FOLDED_MIN_HEAD:
        return None
    return heads


def _fast_pattern(src: str) -> tuple[re.Pattern[str], bool]:
    """(pattern, check_boundary). A leading ``\\b`` stops Python's regex engine from skipping ahead to positions
    whose first character can start a match, which makes a search 2-3x slower; so ``\\bX`` is searched as ``X``
    and the word boundary at the match start is checked afterwards (same matches: a boundary is a property of
    the position). Patterns with a top-level ``|`` are left alone (the check would apply to every branch)."""
    if src.startswith("\\b") and not src.startswith("\\b|") and not _top_level_alternation(src):
        return re.compile(src[2:]), True
    return re.compile(src), False


def _search(fast: tuple[re.Pattern[str], bool], text: str, lo: int = 0, hi: int | None = None) -> bool:
    pattern, check = fast
    end = len(text) if hi is None else hi
    pos = lo
    while True:
        m = pattern.search(text, pos, end)
        if m is None:
            return False
        start = m.start()
        if not check or start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            return True
        pos = start + 1


def load_pack_file(path: Path, source: str | None = None) -> list[Rule]:
    source = source or str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{source}: cannot read rule pack: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ValueError(f"{source}: a rule pack is a mapping with a 'rules' list")
    return [_rule_from_dict(r, source, i) for i, r in enumerate(data["rules"])]


def load_packs(packs: Iterable[str]) -> list[Rule]:
    """Rules of the named packs: "builtin" (every YAML shipped in screening/rules) or a path to a YAML file or
    a directory of them. Duplicate rule ids across packs are an error."""
    rules: list[Rule] = []
    for pack in packs:
        if pack == "builtin":
            folder = resources.files("otelgate.screening").joinpath("rules")
            for entry in sorted(folder.iterdir(), key=lambda e: e.name):
                if entry.name.endswith((".yaml", ".yml")):
                    rules.extend(load_pack_file(Path(str(entry)), f"builtin:{entry.name}"))
            continue
        path = Path(pack)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if not files:
                raise ValueError(f"{path}: rule pack directory holds no .yaml files")
            for f in files:
                rules.extend(load_pack_file(f))
        elif path.is_file():
            rules.extend(load_pack_file(path))
        else:
            raise ValueError(f"{pack}: no such rule pack (expected 'builtin' or a YAML file or directory)")
    seen: dict[str, str] = {}
    for r in rules:
        if r.id in seen:
            raise ValueError(f"{r.source}: rule {r.id!r}: duplicate id (also in {seen[r.id]})")
        seen[r.id] = r.source
    return rules


def _keyword_spans(words: str, whole: set[str], prefixes: set[str]) -> list[tuple[int, int]]:
    """Merged (start, end) character windows of ``words`` around each occurrence of the given keywords."""
    starts: list[int] = []
    padded = " " + words
    for kw in whole:
        needle = " " + kw + " "
        i = padded.find(needle)
        while i != -1:
            starts.append(i)
            i = padded.find(needle, i + 1)
        if padded.endswith(" " + kw):
            starts.append(len(padded) - len(kw) - 1)
    for px in prefixes:
        needle = " " + px
        i = padded.find(needle)
        while i != -1:
            starts.append(i)
            i = padded.find(needle, i + 1)
    starts.sort()
    spans: list[tuple[int, int]] = []
    n = len(words)
    for pos in starts:  # pos indexes ``padded``, i.e. pos is the keyword's start in ``words`` minus nothing
        lo = max(0, pos - _WINDOW_BEFORE)
        hi = min(n, pos + _WINDOW_AFTER)
        if spans and lo <= spans[-1][1]:
            spans[-1] = (spans[-1][0], hi)
        else:
            spans.append((lo, hi))
    # Align to word boundaries so that no window starts or ends inside a word.
    aligned = []
    for lo, hi in spans:
        lo = words.rfind(" ", 0, lo) + 1 if lo > 0 else 0
        j = words.find(" ", hi)
        aligned.append((lo, n if j == -1 else j))
    return aligned


class _Starts:
    """Where patterns may start in one text's two views, found once per head and shared by every rule.

    Words view: the tokens beginning with a head (a word boundary before a letter is a token start there).
    Folded view: every occurrence of a head (the pattern's own ``\\b`` is checked by the regex), or, for the
    head pair {"\\n", ""}, the start of the text and each newline. Trying a pattern with ``match`` at each such
    position finds a match exactly when ``search`` over the whole view would: no match can start elsewhere.
    """

    __slots__ = ("_cache", "_folded", "_padded", "_words")

    def __init__(self, words: str, folded: str) -> None:
        self._words = words
        self._padded = " " + words
        self._folded = folded
        self._cache: dict[tuple[bool, str], list[int]] = {}

    def _positions(self, head: str, in_words: bool) -> list[int]:
        key = (in_words, head)
        got = self._cache.get(key)
        if got is not None:
            return got
        if in_words:
            text, needle = self._padded, " " + head  # an index in padded is the token's index in words
        elif head == "":
            text, needle = "", "x"
        else:
            text, needle = self._folded, head
        out = [0] if head == "" else []
        i = text.find(needle)
        while i != -1:
            out.append(i)
            i = text.find(needle, i + 1)
        self._cache[key] = out
        return out

    def match(self, pattern: re.Pattern[str], heads: frozenset[str], in_words: bool, live: set[str]) -> bool:
        """Whether ``pattern`` matches; in the words view only heads in ``live`` (see _HeadIndex) are tried."""
        text = self._words if in_words else self._folded
        match = pattern.match
        for head in (heads & live if in_words else heads):
            for pos in self._positions(head, in_words):
                if match(text, pos):
                    return True
        return False


class _HeadIndex:
    """The words-view heads of every loaded pattern, grouped so that the heads a text can contain are found
    with a few set intersections instead of a string scan per head. A head is *live* when some token of the
    text can begin it: its first word is a token (when a space follows that word in the head), or begins a
    token. Live is a necessary condition; the positions are then found by _Starts."""

    def __init__(self, heads: Iterable[str]) -> None:
        self.whole: dict[str, list[str]] = {}  # first word -> heads whose first word is a whole token
        self.by_prefix: dict[str, list[str]] = {}  # first 4 letters of the first word -> heads
        # Heads whose first word is shorter than 4 letters and not a whole token ("be", "sys"): always live.
        # Gating them needs sets of 2- and 3-letter token prefixes, which cost more than looking for them.
        self.short: set[str] = set()
        for head in set(heads):
            first, space, _ = head.partition(" ")
            if space:
                self.whole.setdefault(first, []).append(head)
            elif len(first) >= 4:
                self.by_prefix.setdefault(first[:4], []).append(head)
            else:
                self.short.add(head)

    def live(self, token_set: set[str], prefix_set: set[str]) -> set[str]:
        out = set(self.short)
        for first in token_set.intersection(self.whole):
            out.update(self.whole[first])
        groups = self.by_prefix
        for key in prefix_set.intersection(groups):
            out.update(groups[key])
        return out


class Screener:
    """Immutable after construction, so one instance is safely shared by every request and thread."""

    def __init__(self, rules: Sequence[Rule], *, threshold: float = 0.5, model: InjectionModel | None = None,
                 languages: Iterable[str] | None = None, max_scan_chars: int = MAX_SCAN_CHARS) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        wanted = None if languages is None else {x.lower() for x in languages}
        self.rules: tuple[Rule, ...] = tuple(
            r for r in rules if wanted is None or "any" in r.languages or wanted & set(r.languages)
        )
        self.threshold = threshold
        self.model = model
        self.max_scan_chars = max_scan_chars
        self._always = tuple(r for r in self.rules if not r.keywords and not r.prefixes)
        self._gated = tuple(r for r in self.rules if r.keywords or r.prefixes)
        self._heads = _HeadIndex(h for r in self.rules if r.view == "words" for hs in r.leads if hs for h in hs)

    @classmethod
    def from_packs(cls, packs: Sequence[str] = ("builtin",), threshold: float = 0.5, *, use_model: bool = True,
                   languages: Iterable[str] | None = None) -> Screener:
        return cls(load_packs(packs), threshold=threshold, model=load_model() if use_model else None,
                   languages=languages)

    # -- matching

    def _matching_rules(self, norm: Normalized, tokens: list[str] | None = None,
                        token_set: set[str] | None = None) -> list[Rule]:
        words = norm.words
        if token_set is None:
            if tokens is None:
                tokens = words.split(" ") if words else []
            token_set = set(tokens)
        prefix_set = {t[:4] for t in token_set}
        at = _Starts(words, norm.folded)
        live = self._heads.live(token_set, prefix_set)
        # Patterns whose heads are unknown: short texts are searched whole; in longer ones only the stretches
        # around the rule's keywords, which keeps a 4 KB message within the latency budget.
        windowed = len(words) > _WINDOW_MIN_CHARS
        hits: list[Rule] = []
        for rule in self._gated:
            found_kw = token_set & rule.keywords
            found_px = prefix_set & rule.prefixes
            if not found_kw and not found_px:
                continue
            spans: list[tuple[int, int]] | None = None
            for pattern, fast, heads in zip(rule.patterns, rule.fast, rule.leads, strict=True):
                if heads is not None:
                    matched = at.match(pattern, heads, rule.view == "words", live)
                elif rule.view == "folded":
                    matched = _search(fast, norm.folded)
                elif not windowed:
                    matched = _search(fast, words)
                else:
                    if spans is None:
                        spans = _keyword_spans(words, found_kw, found_px)
                    matched = any(_search(fast, words, lo, hi) for lo, hi in spans)
                if matched:
                    hits.append(rule)
                    break
        for rule in self._always:
            text = words if rule.view == "words" else norm.folded
            for pattern, fast, heads in zip(rule.patterns, rule.fast, rule.leads, strict=True):
                if at.match(pattern, heads, rule.view == "words", live) if heads is not None \
                        else _search(fast, text):
                    hits.append(rule)
                    break
        return hits

    def _evidence(self, text: str) -> tuple[dict[str, tuple[float, str]], float]:
        """Rule id -> (weight, category) for every piece of evidence, and the model's contribution."""
        evidence: dict[str, tuple[float, str]] = {}
        if len(text) > self.max_scan_chars:
            evidence[LIMIT_RULE_ID] = (0.0, "oversize")
            half = self.max_scan_chars // 2
            text = text[:half] + "\n" + text[-half:]
        norm = normalize(text)
        tokens = norm.words.split(" ") if norm.words else []
        distinct = set(tokens)
        for rule in self._matching_rules(norm, tokens, distinct):
            evidence[rule.id] = (rule.weight, rule.category)
        if len(norm.hidden) >= _HIDDEN_MIN_CHARS:
            evidence["encoding.unicode_tags"] = (HIDDEN_TAGS_WEIGHT, "encoding_evasion")
        payloads = decode_payloads(text, norm.words, distinct)
        if norm.hidden:
            payloads = [*payloads, *decode_payloads(norm.hidden)]
            payloads.insert(0, Decoded("unicode_tags", norm.hidden, 1))
        for payload in payloads:
            sub = normalize(payload.text)
            found = self._matching_rules(sub)
            for rule in found:
                if rule.id not in evidence:
                    evidence[rule.id] = (rule.weight, rule.category)
            if found:
                evidence.setdefault(f"encoding.{payload.kind}", (DECODED_WEIGHT, "encoding_evasion"))
        model_part = 0.0
        if self.model is not None:
            p = self.model.score(tokens, distinct)
            floor = self.model.floor
            model_part = self.model.scale * max(0.0, p - floor) / (1.0 - floor)
            if model_part > 0.0:
                evidence[MODEL_RULE_ID] = (model_part, "classifier")
        return evidence, model_part

    def scan(self, text: str) -> Verdict:
        evidence, _ = self._evidence(text)
        if not evidence:
            return Verdict(False, 0.0, (), ())
        miss = 1.0
        for weight, _cat in evidence.values():
            miss *= 1.0 - weight
        score = 1.0 - miss
        ordered = sorted(evidence.items(), key=lambda kv: -kv[1][0])
        categories: list[str] = []
        for _rid, (_w, cat) in ordered:
            if cat not in categories:
                categories.append(cat)
        return Verdict(score >= self.threshold, min(score, 1.0), tuple(rid for rid, _ in ordered), tuple(categories))

    def redact(self, text: str) -> str:
        """The text with each flagged sentence or line replaced by REDACTION; the whole text when the verdict
        is flagged but no single piece is (the evidence is spread over several sentences)."""
        if not self.scan(text).flagged:
            return text
        pieces: list[str] = []
        pos = 0
        changed = False
        for m in _SENTENCE_SPLIT_RE.finditer(text):
            piece = text[pos:m.start()]
            if piece.strip() and self.scan(piece).flagged:
                pieces.append(REDACTION)
                changed = True
            else:
                pieces.append(piece)
            pieces.append(m.group(0))
            pos = m.end()
        tail = text[pos:]
        if tail.strip() and self.scan(tail).flagged:
            pieces.append(REDACTION)
            changed = True
        else:
            pieces.append(tail)
        if not changed:
            return REDACTION
        redacted = "".join(pieces)
        # A piece may only have been suspicious together with its neighbours: check the result as a whole.
        return redacted if not self.scan(redacted).flagged else REDACTION

