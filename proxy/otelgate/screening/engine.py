"""The screening engine: rule packs + a small classifier -> a Verdict for a piece of text.

Evidence combines as a noisy-or: each matching rule contributes its weight w (the probability that this
evidence alone means an injection), the classifier contributes its calibrated probability, and
score = 1 - prod(1 - w_i). ``flagged`` is ``score >= threshold``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from otelgate.screening.decode import Decoded, decode_payloads
from otelgate.screening.model import WINDOW_WORDS, InjectionModel, load_model
from otelgate.screening.normalize import Normalized, normalize
from otelgate.screening.structure import is_structured

REDACTION = "[otelgate: removed suspected prompt injection]"
MODEL_RULE_ID = "model:injection"
# On a text longer than one classifier window the classifier's evidence is capped at this share of the threshold.
# It can still tip a rule's evidence over the threshold (a 0.3 rule: 1 - 0.7 * 0.65 = 0.545 >= 0.5) but not a bare
# topic mention (0.2: 0.48), which documents are full of. Chosen on bench/screening_benign_docs.py --set tune and
# the dev-tune rows (docs/screening.md, "Long texts").
LONG_TEXT_MODEL_SHARE = 0.7
# Evidence below the threshold combines only within this many words. An injection is a local thing, a paragraph
# planted in a page or a file; a 2 000-line source file read by an agent holds a "new task" here, a "debug mode"
# there and the classifier's most suspicious window somewhere else, and flagging their sum blocked one file in
# thirty (bench/screening_benign_docs.py --size 0). A longer text flagged only by combined weak evidence is
# flagged only if some stretch of LOCAL_WORDS words (overlapping by half) is flagged on its own.
LOCAL_WORDS = 96
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

_RULE_KEYS = {"id", "category", "patterns", "weight", "languages", "keywords", "view", "description", "locations"}
# Where a text sits in a request (the proxy's screening locations); a rule may be limited to some of them.
LOCATIONS = ("user", "tool_result", "system", "documents")
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
    # Where the rule is evidence (None: everywhere). An instruction about the answer ("add emojis to your reply")
    # is the user's to give; planted in an e-mail the agent read, it is an injection.
    locations: frozenset[str] | None = None

    def counts_in(self, location: str | None) -> bool:
        """Whether a match is evidence for a text in ``location`` (None: a text of no known location)."""
        return location is None or self.locations is None or location in self.locations


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
    locations = raw.get("locations")
    if locations is not None and (not isinstance(locations, list) or not locations
                                  or not all(x in LOCATIONS for x in locations)):
        raise ValueError(f"{where}: 'locations' must be a non-empty list of {', '.join(LOCATIONS)}")
    fast = tuple(_fast_pattern(p) for p in patterns)
    leads = tuple(_lead_heads(p) if view == "words" else _folded_heads(p) for p in patterns)
    return Rule(rid, category, float(weight), tuple(languages), tuple(compiled), view, whole, prefixes, source,
                fast, leads, None if locations is None else frozenset(locations))


def _top_level_alternation(src: str) -> bool:
    return len(_split_top(src)) > 1


# Literal text at the start of a regex: letters and digits of any script, spaces, hyphens and commas (a
# folded-view head may end in one: the vocative "assistant,").
_LITERAL_RE = re.compile(r"(?:[^\W_]|[ ,-])*")


def _scan(src: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """Each character of a regex source from ``start`` that is outside escapes and character classes, with the
    group depth before it: the one reading of regex structure the load-time analyses share."""
    depth = 0
    in_class = False
    i = start
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        else:
            yield i, ch, depth
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        i += 1


def _group_end(src: str, start: int) -> int:
    """Index of the ")" that closes the group opening at ``src[start]``, or -1."""
    for i, ch, depth in _scan(src, start):
        if ch == ")" and depth == 1:
            return i
    return -1


def _split_top(src: str) -> list[str]:
    """``src`` split at its top-level ``|``."""
    parts: list[str] = []
    cur = 0
    for i, ch, depth in _scan(src):
        if ch == "|" and depth == 0:
            parts.append(src[cur:i])
            cur = i + 1
    parts.append(src[cur:])
    return parts


def _branch_heads(branch: str) -> list[str] | None:
    """The literal text a match of ``\\b(?:alt1|alt2...)rest`` or ``\\bword rest`` starts with, per
    alternative, or None when that cannot be read off the branch."""
    if not branch.startswith("\\b"):
        return None
    body = _after_lookbehind(branch[2:])
    if body.startswith("(?:"):
        end = _group_end(body, 0)
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
        if not lead or not lead[0].isalnum():
            return None  # a match starting at a space or hyphen is not at a token start
        out.append(lead)
    return out


def _after_lookbehind(body: str) -> str:
    """``body`` without its leading lookbehinds (``(?<=x)``, ``(?<!x)``, or a group of them as alternatives): they
    say what comes before a match, not what the match starts with."""
    while True:
        end = _group_end(body, 0) if body.startswith("(?") else -1
        if end == -1:
            return body
        if body.startswith(("(?<=", "(?<!")):
            body = body[end + 1:]
            continue
        if not body.startswith("(?:") or body[end + 1:end + 2] in ("?", "*", "{", "+"):
            return body
        alternatives = _split_top(body[3:end])
        if not all(a.startswith(("(?<=", "(?<!")) and _group_end(a, 0) == len(a) - 1 for a in alternatives):
            return body
        body = body[end + 1:]


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


# A quantifier after an atom: its minimum is what matters (0: the atom is optional).
_QUANTIFIER_RE = re.compile(r"(?:[*+?]|\{(\d*)(?:,\d*)?\})[?+]?")
_SPECIAL = set(".^$*+?{}[]\\|()")


def _atoms(src: str) -> list[tuple[str, str, bool]] | None:
    """The top-level atoms of a regex without top-level ``|``: (kind, text, optional) with kind "char" (a
    literal character; text is the character), "group" (``(...)``; text is the whole group), or "other" (a
    class, an escape such as ``\\w`` or ``\\b``, an anchor or ``.``), and optional telling whether the
    quantifier after it allows zero repetitions. None when the source is not understood."""
    out: list[tuple[str, str, bool]] = []
    i = 0
    n = len(src)
    while i < n:
        ch = src[i]
        if ch == "\\":
            if i + 1 >= n:
                return None
            nxt = src[i + 1]
            kind, text, i = ("other", src[i:i + 2], i + 2) if nxt.isalnum() else ("char", nxt, i + 2)
            if nxt in "xuUN0" or nxt.isdigit():
                return None  # escapes of several characters: not worth reading
        elif ch == "[":
            j = i + 1
            if j < n and src[j] == "^":
                j += 1
            if j < n and src[j] == "]":
                j += 1  # a "]" right after the opening bracket is a literal
            while j < n and src[j] != "]":
                j += 2 if src[j] == "\\" else 1
            if j >= n:
                return None
            kind, text, i = "other", src[i:j + 1], j + 1
        elif ch == "(":
            j = _group_end(src, i)
            if j < 0:
                return None
            kind, text, i = "group", src[i:j + 1], j + 1
        elif ch in _SPECIAL:
            if ch in "*+?{}|)":
                return None  # a quantifier without an atom, "{" as a literal, or a stray bar: not read
            kind, text, i = "other", ch, i + 1
        else:
            kind, text, i = "char", ch, i + 1
        optional = False
        q = _QUANTIFIER_RE.match(src, i)
        if q is not None:
            optional = q.group(0)[0] in "*?" or (q.group(0)[0] == "{" and int(q.group(1) or 0) == 0)
            i = q.end()
        elif i < n and src[i] == "{":
            return None
        out.append((kind, text, optional))
    return out


def _plain(src: str) -> bool:
    """Whether ``src`` compiles without flags that change what a literal character matches."""
    try:
        return not re.compile(src).flags & (re.IGNORECASE | re.VERBOSE)
    except re.error:
        return False


def _required_chars(src: str) -> frozenset[str]:
    """ASCII punctuation that every match contains: literal characters at the top level of a pattern without a
    top-level ``|`` and not made optional by a quantifier. A text (or the part of it after a candidate start)
    without one of them cannot match. Conservative: anything not understood gives no requirement."""
    if not _plain(src) or _top_level_alternation(src):
        return frozenset()
    atoms = _atoms(src)
    if atoms is None:
        return frozenset()
    return frozenset(text for kind, text, optional in atoms
                     if kind == "char" and not optional and text.isascii() and not text.isalnum() and text != " ")


def _first_chars(src: str) -> frozenset[str] | None:
    """The characters a match of ``src`` can start with, or None when they cannot be read off the source (or a
    match can be empty or start with a zero-width assertion)."""
    branches = _split_top(src)
    if len(branches) > 1:
        out: set[str] = set()
        for branch in branches:
            got = _first_chars(branch)
            if got is None:
                return None
            out |= got
        return frozenset(out)
    atoms = _atoms(src)
    if not atoms:
        return None
    kind, text, optional = atoms[0]
    if optional:
        return None
    if kind == "char":
        return frozenset(text)
    if kind == "group":
        if text.startswith("(?:"):
            body = text[3:-1]
        elif text.startswith("(?P<"):
            body = text[text.index(">") + 1:-1]
        elif not text.startswith("(?"):
            body = text[1:-1]
        else:
            return None  # a look-around, a conditional, scoped flags, ...
        return _first_chars(body)
    return None


def _fast_pattern(src: str) -> tuple[re.Pattern[str], bool]:
    """(pattern, check_boundary), for a yes/no search. A leading ``\\b`` stops Python's regex engine from skipping
    ahead to positions whose first character can start a match, which makes a search 2-3x slower; so ``\\bX`` is
    searched as ``X`` and the word boundary at the match start is checked afterwards (same matches: a boundary
    is a property of the position). Patterns with a top-level ``|`` are left alone (the check would apply to
    every branch). A pattern that starts with one of several characters (``(?:#{2,}|\\[|<)...``) is searched
    as ``[C](?<=(?=P)[C])``: the engine skips to the next character of the class C (it only does that for a
    pattern that begins with a class) and then tries P where that character is; a match exists exactly when
    one of P exists, since every match of P starts with a character of C."""
    if src.startswith("\\b") and not src.startswith("\\b|") and not _top_level_alternation(src):
        return re.compile(src[2:]), True
    first = _first_chars(src) if _plain(src) else None
    if first is not None and len(first) > 1:
        cls = "[" + "".join(re.escape(c) for c in sorted(first)) + "]"
        try:
            return re.compile(f"{cls}(?<=(?={src}){cls})"), False
        except re.error:  # a look-behind may reject some patterns; then the plain search
            pass
    return re.compile(src), False


def _search(fast: tuple[re.Pattern[str], bool], text: str, lo: int = 0, hi: int | None = None) -> bool:
    pattern, check = fast
    end = len(text) if hi is None else hi
    pos = lo
    while True:
        m = pattern.search(text, pos, end)
        if m is None:
            return False
        if not check:
            return True
        start = m.start()
        # \b holds where exactly one of the two neighbouring characters is a word character (the match may
        # start with a non-word character: "\\b foo" after a word).
        before = start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_")
        after = start < len(text) and (text[start].isalnum() or text[start] == "_")
        if before != after:
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


class _FoldedStarts:
    """Where folded-view patterns may start, found once per head and shared by every rule: every occurrence of a
    head (the pattern's own ``\\b`` is checked by the regex), or, for the head pair {"\\n", ""}, the start of
    the text and each newline. Trying a pattern with ``match`` at each such position finds a match exactly when
    ``search`` over the whole view would: no match can start elsewhere."""

    __slots__ = ("_cache", "_folded")

    def __init__(self, folded: str) -> None:
        self._folded = folded
        self._cache: dict[str, list[int]] = {}

    def _positions(self, head: str) -> list[int]:
        got = self._cache.get(head)
        if got is not None:
            return got
        if head == "":
            out = [0]  # "" stands for the start of the text
        else:
            text = self._folded
            out = []
            i = text.find(head)
            while i != -1:
                out.append(i)
                i = text.find(head, i + 1)
        self._cache[head] = out
        return out

    def match(self, pattern: re.Pattern[str], heads: frozenset[str], limit: int = -1) -> bool:
        """Whether ``pattern`` matches; only starts up to ``limit`` are tried when it is not negative."""
        text = self._folded
        match = pattern.match
        for head in heads:
            for pos in self._positions(head):
                if (limit < 0 or pos <= limit) and match(text, pos):
                    return True
        return False


_WORD_START_RE = re.compile(r"(?:^|(?<=\s))\S")


def _stretch_spans(text: str) -> list[tuple[int, int]] | None:
    """(start, end) of the text's overlapping stretches of LOCAL_WORDS words (each starting half a stretch after
    the one before, the last one ending at the text's end), or None when it is no longer than one stretch."""
    starts = [m.start() for m in _WORD_START_RE.finditer(text)]
    if len(starts) <= LOCAL_WORDS:
        return None
    step = LOCAL_WORDS // 2
    firsts = [*range(0, len(starts) - LOCAL_WORDS, step), len(starts) - LOCAL_WORDS]
    return [(starts[i], starts[i + LOCAL_WORDS] if i + LOCAL_WORDS < len(starts) else len(text)) for i in firsts]


def is_long(text: str) -> bool:
    """Longer than one stretch (LOCAL_WORDS words): a file or a page rather than a message. Stops counting there."""
    return len(text.split(None, LOCAL_WORDS)) > LOCAL_WORDS


def _trie_regex(items: Iterable[str]) -> str:
    """A regex matching the longest of ``items`` that the text at the current position starts with: a trie, so
    at each step at most one branch can go on (they start with different characters), and the greedy ``?``
    prefers going on to stopping at an item that is a prefix of a longer one."""
    trie: dict[str, Any] = {}
    for item in items:
        node = trie
        for ch in item:
            node = node.setdefault(ch, {})
        node[""] = {}  # "" is no character: it marks the end of an item

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + emit(sub) for ch, sub in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie)


class _TokenIndex:
    """Finds, in one regex pass over the words view, every token start at which one of a fixed set of literal
    *items* begins: rule heads (``ignor``, ``do not``), whole keywords (written ``kw + " "``) and keyword
    prefixes. The regex reports the longest item at each token start; the items that begin there are exactly
    that item's prefixes among the items (they all are prefixes of the same text), a set computed at load time.
    So the result is exact, not a pre-filter: ``expand(L)`` is the set of items present at a position whose
    longest item is L."""

    def __init__(self, items: Iterable[str]) -> None:
        self.items = frozenset(items)
        ordered = sorted(self.items)
        # For each item: the items it is a prefix of (itself included), i.e. the longest items whose positions
        # are positions of this item. Sorted order puts them right after it.
        self.extensions: dict[str, frozenset[str]] = {}
        for i, item in enumerate(ordered):
            j = i
            while j < len(ordered) and ordered[j].startswith(item):
                j += 1
            self.extensions[item] = frozenset(ordered[i:j])
        # In " " + words + " " a token starts right after a space; the lookahead captures the longest item
        # there without consuming it, so every token start is tried.
        self._regex = re.compile(" (?=(" + _trie_regex(self.items) + "))") if self.items else None

    def positions(self, words: str) -> dict[str, list[int]]:
        """Longest item -> the positions in ``words`` of the tokens where it begins."""
        out: dict[str, list[int]] = {}
        if self._regex is None:
            return out
        for m in self._regex.finditer(" " + words + " "):
            item = m[1]
            if item:
                got = out.get(item)
                if got is None:
                    out[item] = [m.start()]
                else:
                    got.append(m.start())
        return out

    def closure(self, wanted: Iterable[str]) -> frozenset[str]:
        """The longest items whose presence means one of ``wanted`` is present."""
        out: set[str] = set()
        for item in wanted:
            out |= self.extensions[item]
        return frozenset(out)


def _keyword_items(rule: Rule) -> list[str] | None:
    """The rule's keyword gate as token-start items for _TokenIndex, or None for a rule without keywords. A
    whole keyword k is the item ``k + " "`` (the token is exactly k); a prefix p of 4 letters is ``p`` (a token
    starts with p), a shorter one ``p + " "`` (``token[:4] == p`` holds only for the token p itself). A keyword
    with a space can never be a token and is left out."""
    if not rule.keywords and not rule.prefixes:
        return None
    items = [k + " " for k in rule.keywords if " " not in k]
    items += [p if len(p) >= 4 else p + " " for p in rule.prefixes if p and " " not in p]
    return items


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one pattern is tried. ``kind``: "words" (match at the token starts of ``items``), "folded" (match at
    the occurrences of ``heads`` in the folded view), "search" (search the whole view) or "windowed" (words
    view without heads: search the whole view, or in long texts the stretches around the keywords)."""

    pattern: re.Pattern[str]
    fast: tuple[re.Pattern[str], bool]
    kind: str
    heads: frozenset[str] | None
    items: frozenset[str]
    # Characters every match contains (see _required_chars): a view without one of them is not searched, and
    # a start after the last occurrence of one of them is not tried.
    needs: tuple[str, ...] = ()


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
        gates = [_keyword_items(r) for r in self.rules]
        heads = [h for r in self.rules if r.view == "words" for hs in r.leads if hs for h in hs]
        self._index = _TokenIndex([*heads, *(i for g in gates if g for i in g)])
        # Per rule: its gate (the longest items whose presence lets the rule run; None: no keywords) and how
        # each of its patterns is tried. Rules without keywords run last, as before (order of evidence).
        plans = []
        for rule, gate in zip(self.rules, gates, strict=True):
            steps = []
            for pattern, fast, hs in zip(rule.patterns, rule.fast, rule.leads, strict=True):
                needs = tuple(sorted(_required_chars(pattern.pattern)))
                if hs is None:
                    kind = "search" if rule.view == "folded" else "windowed"
                    steps.append(_Plan(pattern, fast, kind, None, frozenset(), needs))
                elif rule.view == "folded":
                    steps.append(_Plan(pattern, fast, "folded", hs, frozenset(), needs))
                else:
                    steps.append(_Plan(pattern, fast, "words", hs, self._index.closure(hs), needs))
            plans.append((rule, None if gate is None else self._index.closure(gate), tuple(steps)))
        self._plans = tuple([p for p in plans if p[1] is not None] + [p for p in plans if p[1] is None])
        # The gates inverted: for each index item, the plans its presence lets run. A scan then visits only the
        # plans some found item opens (and those without keywords), not every plan to test its gate (~8 µs of a
        # 220-character scan with 106 rules). Same plans, same order: exactly what testing each gate gives.
        opened: dict[str, list[int]] = {}
        for number, (_rule, gate, _steps) in enumerate(self._plans):
            for item in gate or ():
                opened.setdefault(item, []).append(number)
        self._opened = {item: tuple(numbers) for item, numbers in opened.items()}
        self._ungated = tuple(n for n, (_r, gate, _s) in enumerate(self._plans) if gate is None)

    @classmethod
    def from_packs(cls, packs: Sequence[str] = ("builtin",), threshold: float = 0.5, *, use_model: bool = True,
                   languages: Iterable[str] | None = None) -> Screener:
        return cls(load_packs(packs), threshold=threshold, model=load_model() if use_model else None,
                   languages=languages)

    # -- matching

    def _matching_rules(self, norm: Normalized, tokens: list[str] | None = None,
                        token_set: set[str] | None = None) -> list[Rule]:
        words = norm.words
        at = self._index.positions(words)
        found = set(at)
        folded: _FoldedStarts | None = None
        # Patterns whose heads are unknown: short texts are searched whole; in longer ones only the stretches
        # around the rule's keywords, which keeps a 4 KB message within the latency budget.
        windowed = len(words) > _WINDOW_MIN_CHARS
        hits: list[Rule] = []
        opened = self._opened
        numbers = set(self._ungated)
        for item in found:
            more = opened.get(item)
            if more is not None:
                numbers.update(more)
        plans = self._plans
        for number in sorted(numbers):
            rule, gate, steps = plans[number]
            spans: list[tuple[int, int]] | None = None
            for step in steps:
                kind = step.kind
                limit = -1  # no limit
                if step.needs:
                    view = norm.folded if kind in ("folded", "search") else words
                    limit = min(view.rfind(c) for c in step.needs)
                    if limit < 0:
                        continue  # a character every match needs is missing
                if kind == "words":
                    matched = False
                    match = step.pattern.match
                    for item in step.items.intersection(found):
                        for pos in at[item]:
                            if (limit < 0 or pos <= limit) and match(words, pos):
                                matched = True
                                break
                        if matched:
                            break
                elif kind == "folded":
                    if folded is None:
                        folded = _FoldedStarts(norm.folded)
                    matched = folded.match(step.pattern, step.heads, limit)  # type: ignore[arg-type]
                elif kind == "search":
                    matched = _search(step.fast, norm.folded)
                elif not windowed or gate is None:
                    matched = _search(step.fast, words)
                else:
                    if spans is None:
                        if token_set is None:
                            token_set = set(words.split(" ")) if words else set()
                        found_px = {t[:4] for t in token_set} & rule.prefixes
                        spans = _keyword_spans(words, token_set & rule.keywords, found_px)
                    matched = any(_search(step.fast, words, lo, hi) for lo, hi in spans)
                if matched:
                    hits.append(rule)
                    break
        return hits

    def _evidence(self, text: str, *, long: bool = False,
                  location: str | None = None) -> tuple[dict[str, tuple[float, str]], float]:
        """Rule id -> (weight, category) for every piece of evidence, and the model's contribution. ``long``: the
        text is a stretch of a longer one (the long-text cap on the classifier applies whatever its length)."""
        evidence: dict[str, tuple[float, str]] = {}
        if len(text) > self.max_scan_chars:
            evidence[LIMIT_RULE_ID] = (0.0, "oversize")
            text = self._scanned(text)
        norm = normalize(text)
        tokens = norm.tokens if norm.tokens is not None else norm.words.split(" ") if norm.words else []
        distinct = set(tokens)
        for rule in self._matching_rules(norm, tokens, distinct):
            if rule.counts_in(location):
                evidence[rule.id] = (rule.weight, rule.category)
        if len(norm.hidden) >= _HIDDEN_MIN_CHARS:
            evidence["encoding.unicode_tags"] = (HIDDEN_TAGS_WEIGHT, "encoding_evasion")
        payloads = decode_payloads(text, norm.words, distinct)
        if norm.hidden:
            payloads = [*payloads, *decode_payloads(norm.hidden)]
            payloads.insert(0, Decoded("unicode_tags", norm.hidden, 1))
        for payload in payloads:
            sub = normalize(payload.text)
            found = [rule for rule in self._matching_rules(sub) if rule.counts_in(location)]
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
            cap = LONG_TEXT_MODEL_SHARE * self.threshold
            if model_part > cap and (long or len(tokens) > WINDOW_WORDS or is_structured(text)):
                # Longer than one window (a document, a tool result): the classifier, trained mostly on prompts,
                # may tip rule evidence over the threshold but not flag alone. Alone it flagged 15-30 % of
                # ordinary source files, READMEs and package metadata (bench/screening_benign_docs.py): the most
                # suspicious of many windows of unfamiliar text is too often "confident". The same for structured
                # data (configuration files, JSON): keys without the sentences around them (structure.py).
                model_part = cap
            if model_part > 0.0:
                evidence[MODEL_RULE_ID] = (model_part, "classifier")
        return evidence, model_part

    def scan(self, text: str, location: str | None = None) -> Verdict:
        """The verdict on ``text``; ``location`` (user, tool_result, system, documents) leaves out the rules that
        are not evidence there (None: every rule)."""
        evidence, _ = self._evidence(text, location=location)
        verdict = self._verdict(evidence)
        if verdict.flagged and max(w for w, _c in evidence.values()) < self.threshold:
            scanned = self._scanned(text)
            spans = _stretch_spans(scanned)
            if spans is not None:
                # Only combined weak evidence flagged this long text: it counts if it sits together somewhere.
                best = Verdict(False, 0.0, (), ())
                for start, end in spans:
                    local = self._verdict(self._evidence(scanned[start:end], long=True, location=location)[0])
                    if local.flagged:
                        best = local
                        break
                    if local.score > best.score:
                        best = local
                if LIMIT_RULE_ID in evidence and LIMIT_RULE_ID not in best.rules:
                    best = Verdict(best.flagged, best.score, (*best.rules, LIMIT_RULE_ID), best.categories)
                return best
        return verdict

    def _redact_stretches(self, text: str, spans: list[tuple[int, int]], location: str | None) -> str:
        """A long text (a file, a page an agent read) with each stretch that is flagged on its own replaced by
        REDACTION (overlapping ones merged): an instruction planted in a document goes, the rest of it stays."""
        cut: list[tuple[int, int]] = []
        for start, end in spans:
            if self._verdict(self._evidence(text[start:end], long=True, location=location)[0]).flagged:
                if cut and start <= cut[-1][1]:
                    cut[-1] = (cut[-1][0], end)
                else:
                    cut.append((start, end))
        if not cut:
            return REDACTION  # flagged as a whole, by nothing that sits in one place
        pieces: list[str] = []
        pos = 0
        for start, end in cut:
            pieces += [text[pos:start], REDACTION, " "]
            pos = end
        pieces.append(text[pos:])
        redacted = "".join(pieces)
        return redacted if not self.scan(redacted, location).flagged else REDACTION

    def _scanned(self, text: str) -> str:
        """What is scanned of a text: all of it, or its first and last max_scan_chars / 2 characters."""
        if len(text) <= self.max_scan_chars:
            return text
        half = self.max_scan_chars // 2
        return text[:half] + "\n" + text[-half:]

    def _verdict(self, evidence: dict[str, tuple[float, str]]) -> Verdict:
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

    def redact(self, text: str, location: str | None = None) -> str:
        """The text with each flagged sentence or line replaced by REDACTION; the whole text when the verdict
        is flagged but no single piece is (the evidence is spread over several sentences). A text longer than
        LOCAL_WORDS words loses its flagged stretches instead (see _redact_stretches)."""
        if not self.scan(text, location).flagged:
            return text
        if len(text) <= self.max_scan_chars:
            spans = _stretch_spans(text)
            if spans is not None:
                return self._redact_stretches(text, spans, location)
        pieces: list[str] = []
        pos = 0
        changed = False
        for m in _SENTENCE_SPLIT_RE.finditer(text):
            piece = text[pos:m.start()]
            if piece.strip() and self.scan(piece, location).flagged:
                pieces.append(REDACTION)
                changed = True
            else:
                pieces.append(piece)
            pieces.append(m.group(0))
            pos = m.end()
        tail = text[pos:]
        if tail.strip() and self.scan(tail, location).flagged:
            pieces.append(REDACTION)
            changed = True
        else:
            pieces.append(tail)
        if not changed:
            return REDACTION
        redacted = "".join(pieces)
        # A piece may only have been suspicious together with its neighbours: check the result as a whole.
        return redacted if not self.scan(redacted, location).flagged else REDACTION

