"""Text normalisation that undoes the cheap evasions attackers use against pattern matching.

Two views come out of one pass:

* ``folded`` — NFKC, case-folded, look-alike letters folded to Latin, invisible characters dropped,
  whitespace collapsed; punctuation kept (role markers such as ``<|im_start|>`` or ``### system`` live here).
* ``words`` — ``folded`` with leetspeak folded, s p a c e d letters joined and every run of punctuation or
  whitespace collapsed to one space. Rule patterns are written against this view by default.

Pure-ASCII input (the common case) skips the Unicode steps entirely, which keeps a 4 KB message well under the
latency budget.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Zero-width and formatting characters that render as nothing but split words for a regex.
_INVISIBLE = dict.fromkeys(
    [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F,
     0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0x2066, 0x2067, 0x2068,
     0x2069, 0x206A, 0x206B, 0x206C, 0x206D, 0x206E, 0x206F, 0x3164, 0xFEFF, 0xFFA0]
)
_INVISIBLE.update(dict.fromkeys(range(0xFE00, 0xFE10)))  # variation selectors
_INVISIBLE.update(dict.fromkeys(range(0xE0000, 0xE0080)))  # Unicode tag block ("ASCII smuggling")
_INVISIBLE.update(dict.fromkeys(range(0xE0100, 0xE01F0)))  # variation selectors supplement

_TAG_RE = re.compile("[\U000e0020-\U000e007e]+")
# Gate for the translate() below: translating a 4 KB text through a 400-entry table is slow, and a regex class of
# 400 scattered code points is slower still; a set test runs at C speed and stops at the first hit.
_INVISIBLE_CHARS = frozenset(map(chr, _INVISIBLE))

# Cyrillic and Greek letters (after case folding) that look like Latin ones. Only applied inside words that
# mix scripts or consist solely of look-alikes, so genuine Russian or Greek prose keeps its letters.
_HOMOGLYPHS: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "е": "e", "ё": "e", "з": "3", "і": "i", "ї": "i", "ј": "j", "к": "k",
    "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ү": "y", "ь": "b", "ɡ": "g", "ꞵ": "b",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "s", "σ": "o", "μ": "u", "ϲ": "c", "ϳ": "j",
    # Latin extensions and IPA letters used as look-alikes
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɩ": "i", "ʏ": "y", "ɪ": "i", "ʟ": "l", "ɴ": "n", "ʀ": "r", "ᴀ": "a",
    "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴊ": "j", "ᴋ": "k", "ᴍ": "m", "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u",
    "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ʙ": "b", "ɢ": "g", "ʜ": "h",
}
_HOMOGLYPH_TABLE = str.maketrans(_HOMOGLYPHS)
_CONFUSABLE_CLASS = "".join(sorted(_HOMOGLYPHS))
_CONFUSABLE_WORD_RE = re.compile(rf"\w*[{_CONFUSABLE_CLASS}]\w*")
_CONFUSABLE_CHARS = frozenset(_HOMOGLYPHS)  # gate: the word regex above tries every position
_CONFUSABLE_ONLY_RE = re.compile(rf"[{_CONFUSABLE_CLASS}a-z0-9_]+")

# Leetspeak inside a token that also has letters: "1gn0r3" -> "ignore", "$y$tem" -> "system".
_LEET_TABLE = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                             "!": "i", "|": "l"})
_LEET_TOKEN_RE = re.compile(r"(?<![\w@$!|])(?=[\w@$!|]*[a-z])(?=[\w@$!|]*[0-9@$|])[\w@$!|]*[a-z0-9][\w@$!|]*")
_LEET_STRIP_TRAIL = re.compile(r"[!|]+$")
# Cheap gate: most texts have no letter touching a digit or symbol, and the token regex above is the costliest
# step of normalisation.
_LEET_GATE_RE = re.compile(r"[a-z][0-9@$|]|[0-9@$|][a-z]")
# Runs of the rarer side of a junction: searching for these lets the regex engine skip ahead (a pattern that
# starts with [a-z] tries nearly every position).
_LEET_RUN_RE = re.compile(r"[0-9@$|]+")
# A character of such a run that touches a letter (a letter before it or after it): most texts have numbers but
# few junctions, so these are what the loop below visits. Starts with the class, so the engine skips ahead.
_LEET_JUNCTION_RE = re.compile(r"[0-9@$|](?:(?<=[a-z].)|(?=[a-z]))")
_LEET_RUN_CHARS = frozenset("0123456789@$|")

# Letters spaced out to dodge word patterns: "i g n o r e" or "i.g.n.o.r.e" (one separator between letters;
# a wider gap still separates words).
_SPACED_RE = re.compile(r"(?<![\w])(?:\w[ .\-_*/]){2,}\w(?![\w])")
_SPACED_SEP_RE = re.compile(r"[ .\-_*/]")
# Cheap gate for the above (three single characters with separators between them), searched with a leading
# space so that a spaced word at the very start is seen too.
_SPACED_GATE_RE = re.compile(r"\W\w[ .\-_*/]\w[ .\-_*/]\w(?!\w)")
# The same gate written to start at its first separator, which the regex engine can skip to (it only skips ahead
# for a pattern that begins with a character class; the gate itself starts with \W and tries every position):
# a separator followed by "\w sep \w" and preceded by "\W \w". Matches exactly where the gate matches, one
# character later.
_SPACED_FAST_GATE_RE = re.compile(r"[ .\-_*/](?=\w[ .\-_*/]\w(?!\w))(?<=\W\w[ .\-_*/])")


def _has_spaced_letters(padded: str) -> bool:
    """``_SPACED_GATE_RE.search(padded)``."""
    return _SPACED_FAST_GATE_RE.search(padded) is not None
_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]")
_ASCII_PUNCT = "".join(chr(c) for c in range(128) if not chr(c).isalnum())
_ASCII_PUNCT_TO_SPACE = str.maketrans(_ASCII_PUNCT, " " * len(_ASCII_PUNCT))

_WS_RE = re.compile(r"\s+")
_NON_WORD_RE = re.compile(r"[\W_]+")


@dataclass(frozen=True, slots=True)
class Normalized:
    folded: str
    words: str
    # Text hidden in Unicode tag characters, decoded to ASCII ("" when none): scanned as its own payload.
    hidden: str
    # words.split(" ") (no tokens for empty words) when normalisation produced it anyway, else None. Shared
    # with the engine so a 4 KB text is not split twice; not to be modified.
    tokens: list[str] | None = None


def _fold_mixed_word(m: re.Match[str]) -> str:
    word = m.group(0)
    if any("a" <= ch <= "z" for ch in word):
        return word.translate(_HOMOGLYPH_TABLE)
    return word


def _fold_confusable_word(m: re.Match[str]) -> str:
    word = m.group(0)
    if any("a" <= ch <= "z" for ch in word) or _CONFUSABLE_ONLY_RE.fullmatch(word):
        return word.translate(_HOMOGLYPH_TABLE)
    return word


def _fold_leet(m: re.Match[str]) -> str:
    token = m.group(0)
    # Trailing "!" or "|" is punctuation, not a letter.
    core = _LEET_STRIP_TRAIL.sub("", token)
    return core.translate(_LEET_TABLE) + token[len(core):]


_LEET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_@$!|")
_TOKEN_END_RE = re.compile(r"[\w@$!|]*")


def _fold_leet_text(text: str) -> str:
    """Fold leetspeak in the tokens around each letter/digit junction (few in ordinary text), leaving the rest
    of the text untouched: cheaper than running the token regex over everything."""
    out: list[str] = []
    last = 0
    n = len(text)
    for m in _LEET_JUNCTION_RE.finditer(text):
        # The run [a, b) of junction characters holding this one; the runs are visited in order, each once
        # (a second junction of the same run lies before ``last``), as a scan over all runs would.
        a = m.start()
        if a < last:
            continue
        while a > 0 and text[a - 1] in _LEET_RUN_CHARS:
            a -= 1
        if a < last:
            continue
        b = _LEET_RUN_RE.match(text, a).end()  # type: ignore[union-attr]
        if a > 0 and "a" <= text[a - 1] <= "z":
            start = a - 1
        elif b < n and "a" <= text[b] <= "z":
            start = a
        else:
            continue
        while start > last and text[start - 1] in _LEET_CHARS:
            start -= 1
        end = _TOKEN_END_RE.match(text, start).end()  # type: ignore[union-attr]
        out.append(text[last:start])
        out.append(_LEET_TOKEN_RE.sub(_fold_leet, text[start:end]))
        last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _join_spaced(m: re.Match[str]) -> str:
    return _SPACED_SEP_RE.sub("", m.group(0))


def _fold_with_chars(text: str) -> tuple[str, str, frozenset[str] | None]:
    """(folded text with whitespace as it was, hidden tag-character text, the distinct non-ASCII characters of
    the folded text or None for ASCII text). The character set is computed once and reused by every gate:
    a set of a 4 KB text costs about as much as one membership scan, and the gates then test a few dozen
    distinct characters instead of 4 000."""
    hidden = ""
    if text.isascii():
        return text.lower(), hidden, None
    wide = frozenset(_NON_ASCII_RE.findall(text))  # a C-speed scan; set(text) hashes every character
    if any("\U000e0020" <= c <= "\U000e007e" for c in wide):
        tags = _TAG_RE.findall(text)
        hidden = "".join(chr(ord(ch) - 0xE0000) for chunk in tags for ch in chunk)
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
        wide = frozenset(_NON_ASCII_RE.findall(text))
    if not _INVISIBLE_CHARS.isdisjoint(wide):
        text = text.translate(_INVISIBLE)
        wide = wide - _INVISIBLE_CHARS
    text = text.casefold()
    # casefold maps each character on its own (no context), so the folded text's characters are those of the
    # folded character set.
    wide = frozenset(c for c in "".join(wide).casefold() if c > "\x7f")
    if wide and not _CONFUSABLE_CHARS.isdisjoint(wide):
        # In mostly-Latin text a word made only of look-alikes is a disguise; in Cyrillic or Greek prose
        # it is an ordinary word ("все") and only mixed-script words are folded.
        latin_dominant = len(text.encode("ascii", "ignore")) * 10 >= len(text) * 7
        folder = _fold_confusable_word if latin_dominant else _fold_mixed_word
        text = _CONFUSABLE_WORD_RE.sub(folder, text)
        wide = frozenset(_NON_ASCII_RE.findall(text))
    return text, hidden, wide


def fold(text: str) -> tuple[str, str]:
    """Return (folded text with whitespace as it was, hidden tag-character text)."""
    folded, hidden, _ = _fold_with_chars(text)
    return folded, hidden


def words_view(base: str, wide: frozenset[str] | None = None) -> str:
    """The matching view, from folded text whose whitespace is not yet collapsed (so that a double space
    still separates s p a c e d words). ``wide``: the distinct non-ASCII characters of ``base`` if known."""
    return _words_and_tokens(base, wide)[0]


def _words_and_tokens(base: str, wide: frozenset[str] | None) -> tuple[str, list[str] | None]:
    """(words view, its tokens if they came out on the way, else None)."""
    text = _fold_leet_text(base)
    if _has_spaced_letters(" " + text + " "):
        text = _SPACED_RE.sub(_join_spaced, text)
    # Every character that is not alphanumeric becomes a space and runs of spaces collapse. For ASCII text a
    # translate + split gives the same result as _NON_WORD_RE.sub(" ", text).strip(), several times faster
    # (str.translate is only fast on ASCII input). Other text gets one str.replace per distinct non-ASCII
    # character that is not a letter or digit (typographic quotes and dashes: a handful), after which it is
    # usually ASCII too. The leet and spacing steps only turn ASCII into ASCII or delete characters, so the
    # non-ASCII characters of ``text`` are among those of ``base``.
    if not text.isascii():
        if wide is None:
            wide = frozenset(_NON_ASCII_RE.findall(text))
        for c in wide:
            if not c.isalnum():
                text = text.replace(c, " ")
        if not text.isascii():
            return _NON_WORD_RE.sub(" ", text).strip(), None
    # No token holds a space and none is empty, so joining and splitting at " " gives the same list back.
    tokens = text.translate(_ASCII_PUNCT_TO_SPACE).split()
    return " ".join(tokens), tokens


def normalize(text: str) -> Normalized:
    base, hidden, wide = _fold_with_chars(text)
    words, tokens = _words_and_tokens(base, wide)
    return Normalized(folded=_collapse_keeping_lines(base), words=words, hidden=hidden, tokens=tokens)


def _collapse_keeping_lines(text: str) -> str:
    """Whitespace collapsed to one space within a line and blank lines dropped, line breaks kept: a pattern can tell
    the start of a line ("License: MIT ⏎ AI agent, you must ...") from the middle of a sentence."""
    if "\n" not in text:
        return " ".join(text.split())
    # ~11 us more than collapsing everything on 4 KB of prose (~100 lines), C-level maps rather than a generator.
    return "\n".join(filter(None, map(" ".join, map(str.split, text.split("\n")))))
