"""Find encoded payloads (base64, hex, URL encoding, rot13) inside a text and decode them so the rules can
scan what the model would read. Bounded: at most MAX_DEPTH levels of nesting, MAX_SEGMENTS payloads and
MAX_DECODED_CHARS decoded characters per message, so a crafted input cannot make screening expensive.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass
from itertools import compress, repeat
from operator import contains, eq, le
from urllib.parse import unquote_plus

MAX_DEPTH = 3
MAX_SEGMENTS = 16
MAX_DECODED_CHARS = 16384

# Encoded payloads are long runs without spaces, so only whitespace-separated tokens of 16+ characters are
# examined (a split is far cheaper than running these regexes over the whole text); hex written as "49 67 6e"
# is looked for only when the text has many two-character tokens.
_MIN_TOKEN = 16
_B64_RE = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_RE = re.compile(r"(?:\\x[0-9a-fA-F]{2}){6,}|(?<![0-9a-fA-F])(?:[0-9a-fA-F]{2}[ :]?){8,}(?![0-9a-fA-F])")
_URL_RE = re.compile(r"\S*(?:%[0-9a-fA-F]{2}\S*){3,}")
# The regex above, run over a whole text, backtracks through every long run of non-space characters (a 4 KB
# document costs ~1 ms). A match cannot cross whitespace and, when a token holds 3 or more escapes, is that whole
# token; so each token holding "%" is tested by counting its escapes instead (same payloads, checked in tests).
_PCT_RE = re.compile(r"%[0-9a-fA-F]{2}")
_HEX_RUN_RE = re.compile(r"[0-9a-fA-F :\\x]{16,}")
_HEX_PAIRS = frozenset(a + b for a in "0123456789abcdefABCDEF" for b in "0123456789abcdefABCDEF")
# rot13 of words that carry injections (ignore, previous, instructions, system, prompt, disregard, forget,
# reveal, password, secret) — spotting one is what justifies decoding the whole text.
_ROT13_HINTS = frozenset(
    {"vtaber", "cerivbhf", "vafgehpgvba", "vafgehpgvbaf", "flfgrz", "cebzcg", "qvfertneq", "sbetrg", "erirny",
     "cnffjbeq", "frperg", "rot13", "ebg13"}
)


@dataclass(frozen=True, slots=True)
class Decoded:
    kind: str  # base64 | hex | url | rot13
    text: str
    depth: int


def _printable_text(data: bytes) -> str | None:
    """The bytes as text if they look like language, not binary noise (hashes and ids decode to noise)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 4:
        return None
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
    if printable < 0.95 * len(text):
        return None
    if " " not in text.strip():
        # One more encoded layer (base64 of base64) is decoded further; any other single token is noise.
        return text if _B64_RE.fullmatch(text) or _HEX_RE.fullmatch(text) else None
    letters = sum(ch.isalpha() for ch in text)
    return text if letters >= 0.5 * len(text) else None


def _b64(segment: str) -> str | None:
    s = segment.rstrip("=")
    if len(s) % 4 == 1:
        return None
    # Mixed-case letters and/or digits: plain words and snake_case identifiers are not base64.
    if s.isalpha() and (s.islower() or s.isupper()):
        return None
    padded = s + "=" * (-len(s) % 4)
    try:
        if "-" in s or "_" in s:
            data = base64.urlsafe_b64decode(padded)
        else:
            data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable_text(data)


def _hex(segment: str) -> str | None:
    digits = re.sub(r"\\x|[ :]", "", segment)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        return _printable_text(bytes.fromhex(digits))
    except ValueError:
        return None


def _candidates(text: str, words: str, word_set: set[str] | None = None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    # Token filters run as C-level map/compress over the split: a Python loop over every token of a 4 KB text
    # costs more than all the decoding that usually follows.
    tokens = text.split()
    lengths = list(map(len, tokens))
    long_tokens = list(compress(tokens, map(le, repeat(_MIN_TOKEN), lengths)))
    for tok in long_tokens:
        for m in _B64_RE.finditer(tok):
            decoded = _b64(m.group(0))
            if decoded:
                found.append(("base64", decoded))
    hex_sources = long_tokens
    if sum(map(_HEX_PAIRS.__contains__, compress(tokens, map(eq, lengths, repeat(2))))) >= 8:
        # Every hex match consists of hex digits, " ", ":", "\\" and "x" only, and its look-arounds only test for
        # hex digits, which never sit next to such a run; so searching the runs of 16+ of these characters finds
        # exactly the matches a search of the whole text finds, without trying every position of the prose.
        hex_sources = _HEX_RUN_RE.findall(text)
    for src in hex_sources:
        for m in _HEX_RE.finditer(src):
            decoded = _hex(m.group(0))
            if decoded:
                found.append(("hex", decoded))
    if "%" in text:
        for tok in compress(tokens, map(contains, tokens, repeat("%"))):
            if len(_PCT_RE.findall(tok)) >= 3:
                decoded = unquote_plus(tok)
                if decoded != tok:
                    found.append(("url", decoded))
    if "rot 13" in words or not _ROT13_HINTS.isdisjoint(word_set if word_set is not None else words.split()):
        found.append(("rot13", codecs.encode(text, "rot13")))
    return found


def decode_payloads(text: str, words: str | None = None, word_set: set[str] | None = None) -> list[Decoded]:
    """Every decodable payload in ``text``, nested ones included (breadth first, bounded).

    ``words`` is the normalised words view of ``text`` if the caller has it (saves recomputing it); it is only
    used to spot rot13 hints; ``word_set`` is the set of its tokens if the caller has it.
    """
    from otelgate.screening.normalize import normalize

    out: list[Decoded] = []
    budget = MAX_DECODED_CHARS
    frontier: list[tuple[str, str]] = [(text, words if words is not None else normalize(text).words)]
    for depth in range(1, MAX_DEPTH + 1):
        nxt: list[tuple[str, str]] = []
        for src, src_words in frontier:
            for kind, decoded in _candidates(src, src_words, word_set if depth == 1 else None):
                if len(out) >= MAX_SEGMENTS or budget <= 0:
                    return out
                decoded = decoded[:budget]
                budget -= len(decoded)
                out.append(Decoded(kind, decoded, depth))
                if kind != "rot13":  # rot13 of rot13 is the original text
                    nxt.append((decoded, normalize(decoded).words))
        frontier = nxt
        if not frontier:
            break
    return out
