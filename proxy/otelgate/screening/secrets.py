"""Outbound secret detection: credentials in text on its way to an LLM, so the proxy can flag or redact them.

Only kinds and offsets leave this module; the matched value is never stored or logged.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SecretMatch:
    kind: str
    start: int
    end: int


# Order matters: more specific prefixes first, so "sk-ant-" is reported as anthropic, not openai.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]{16,20000}?"
        r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    )),
    ("anthropic_api_key", re.compile(r"(?<![\w-])sk-ant-(?:api|admin|oat|ort)?\d*-?[A-Za-z0-9_-]{20,}")),
    ("openai_api_key", re.compile(
        r"(?<![\w-])sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}|(?<![\w-])sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}"
        r"|(?<![\w-])sk-(?!ant-)[A-Za-z0-9]{32,}(?![\w-])"
    )),
    ("aws_access_key_id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("github_token", re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})")),
    ("slack_token", re.compile(r"(?<![\w-])xox[abposr]-(?:\d+-)?[A-Za-z0-9-]{10,}")),
    ("slack_webhook", re.compile(r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+")),
    ("google_api_key", re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])")),
    ("jwt", re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
)

# A literal every match of the pattern contains: `literal in text` is a C-speed scan, while a regex starting with a
# look-behind cannot skip ahead to its prefix and walks every position (about 0.2 ms per kB of text for the set).
_LITERALS: dict[str, tuple[str, ...]] = {
    "private_key": ("PRIVATE KEY",),
    "anthropic_api_key": ("sk-ant-",),
    "openai_api_key": ("sk-",),
    "aws_access_key_id": ("AKIA", "ASIA", "ABIA", "ACCA"),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "slack_token": ("xox",),
    "slack_webhook": ("hooks.slack.com",),
    "google_api_key": ("AIza",),
    "jwt": ("eyJ",),
}
_ASSIGNMENT_WORDS = ("key", "secret", "token", "passw")

# key = value where the name says secret and the value is long and random-looking.
_ASSIGNMENT_RE = re.compile(
    r"""(?ix)
    (?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|client[_-]?secret|password|passwd|
       private[_-]?key|token)
    ["']?\s*(?:=|:|=>)\s*["']?
    (?P<value>[A-Za-z0-9+/_\-.=]{16,200})
    """
)
_MIN_ENTROPY_BITS_PER_CHAR = 3.3


def _entropy(s: str) -> float:
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _looks_random(value: str) -> bool:
    if _entropy(value) < _MIN_ENTROPY_BITS_PER_CHAR:
        return False
    classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value)))
    return classes >= 2


def find_secrets(text: str) -> list[SecretMatch]:
    """Every credential-looking span in ``text``, sorted by position, without overlaps."""
    found: list[SecretMatch] = []
    for kind, pattern in _PATTERNS:
        if not any(literal in text for literal in _LITERALS[kind]):
            continue
        for m in pattern.finditer(text):
            found.append(SecretMatch(kind, m.start(), m.end()))
    lowered = text.lower()
    if not any(word in lowered for word in _ASSIGNMENT_WORDS):
        return _without_overlaps(found)
    for m in _ASSIGNMENT_RE.finditer(text):
        value = m.group("value").rstrip(".")
        if _looks_random(value):
            start = m.start("value")
            found.append(SecretMatch("generic_secret", start, start + len(value)))
    return _without_overlaps(found)


def _without_overlaps(found: list[SecretMatch]) -> list[SecretMatch]:
    found.sort(key=lambda s: (s.start, -(s.end - s.start)))
    merged: list[SecretMatch] = []
    for s in found:
        if merged and s.start < merged[-1].end:
            continue  # inside an earlier, longer or more specific match
        merged.append(s)
    return merged


def redact_secrets(text: str) -> str:
    """``text`` with every secret replaced by ``[REDACTED:<kind>]``."""
    matches = find_secrets(text)
    if not matches:
        return text
    parts: list[str] = []
    pos = 0
    for s in matches:
        parts.append(text[pos:s.start])
        parts.append(f"[REDACTED:{s.kind}]")
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)
