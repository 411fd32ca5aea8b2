"""Plain reference versions of the screening engine's fast paths, shared by the sameness tests."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from otelgate.screening import normalize as nz


def bare_leet(text: str) -> str:
    return nz._LEET_TOKEN_RE.sub(nz._fold_leet, text)


def plain_normalize(text: str, leet: Callable[[str], str] = bare_leet) -> tuple[str, str, str]:
    """normalize() written out without its gates and shortcuts: (folded view, words view, hidden tag text)."""
    hidden = ""
    if not text.isascii():
        hidden = "".join(chr(ord(ch) - 0xE0000) for chunk in nz._TAG_RE.findall(text) for ch in chunk)
        text = unicodedata.normalize("NFKC", text).translate(nz._INVISIBLE).casefold()
        latin_dominant = len(text.encode("ascii", "ignore")) * 10 >= len(text) * 7
        text = nz._CONFUSABLE_WORD_RE.sub(nz._fold_confusable_word if latin_dominant else nz._fold_mixed_word, text)
    else:
        text = text.lower()
    words = nz._SPACED_RE.sub(nz._join_spaced, leet(text))
    # Folded: every run of whitespace one space, except that a run holding a line break is one line break; no
    # whitespace at either end of the text or of a line.
    folded = re.sub(r"\s+", lambda m: "\n" if "\n" in m.group(0) else " ", text).strip()
    folded = re.sub(r" ?\n ?", "\n", folded)
    return folded, nz._NON_WORD_RE.sub(" ", words).strip(), hidden
