"""Prompt-injection screening and outbound secret detection. Protocol-agnostic: everything here screens text."""

from otelgate.screening.engine import REDACTION, Rule, Screener, Verdict, load_packs
from otelgate.screening.lines import screen_lines
from otelgate.screening.secrets import SecretMatch, find_secrets, redact_secrets

__all__ = ["REDACTION", "Rule", "Screener", "SecretMatch", "Verdict", "find_secrets", "load_packs",
           "redact_secrets", "screen_lines"]
