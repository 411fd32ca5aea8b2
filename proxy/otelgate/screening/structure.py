"""Whether a text is structured data or code (a configuration file, JSON, a listing) rather than prose.

The classifier was trained on prompts and sentences: in a configuration file its words (``system:``,
``ADMIN_USER=``, ``override: false``, ``prompt = "$ "``) come without the sentences that would tell an instruction
from a key, and it called 8 of 10 ordinary configuration files injections (round 7). On such text it may tip rule
evidence over the threshold but not flag alone, as on long texts; the rules still read every value.
"""

from __future__ import annotations

import json
import re

# A line of structured text: a list item, comment or bullet; "key: value" / "key = value" / "KEY=value"; an INI or
# TOML section; a line that only opens or closes brackets; a markup tag; a call; a shell or REPL prompt;
_STRUCTURED_LINE = re.compile(
    r"""\s*(?:[-*#;/]|[\w.\-"'$@]+\s*[:=]|\[[^\]\n]*\]\s*$|[{}\[\](),]|</?[\w!?]|\w+\s*\(|\$ |>>>|\.\.\.\s"""
    # and a line of code (Python, JavaScript, Go, Rust, Java, C) that prose does not start like: "If you ..." or
    # "For example ..." are prose, "if x:" and "for (i = 0; ..." are code
    r"""|(?:async\s+)?(?:def|class|function|fn|func|struct|impl|interface)\s+\w+"""
    r"""|(?:import|package|use)\s+[\w.:/{}*, ]+;?\s*$|from\s+[\w.]+\s+import\b"""
    r"""|(?:return|const|let|var|await|raise|yield|throw)\b[^\n]*(?:[;)\]}]|\w\(|[=+*/%<>])[^\n]*$"""
    r"""|(?:if|elif|else|while|for|with|try|except|finally)\b[^\n]*:\s*(?:#[^\n]*)?$|(?:if|while|for|switch)\s*\()"""
)
MIN_LINES = 3
SHARE = 0.7


def is_structured(text: str) -> bool:
    """A JSON document, or at least MIN_LINES non-blank lines of which at least SHARE are structured."""
    if text.count("\n") < MIN_LINES - 1:
        return _is_json(text)
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < MIN_LINES:
        return False
    need = SHARE * len(lines)
    hits = 0
    for line in lines:
        if _STRUCTURED_LINE.match(line):
            hits += 1
            if hits >= need:
                return True
    return False


def _is_json(text: str) -> bool:
    """A JSON object or array on one line or a few (an API's answer, a list of flags)."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True
