"""Screening of a stream of lines, for the `otelgate screen` command."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from otelgate.screening.engine import LOCATIONS, Screener


def screen_lines(lines: Iterable[str], *, jsonl: bool, screener: Screener, action: str,
                 location: str | None = None) -> Iterator[dict[str, Any]]:
    """One verdict dict per input line (blank lines skipped).

    Plain mode screens each line as a text. JSONL mode reads an object with a string ``text`` field per line and
    copies its ``id`` (if any) into the output; a row's own ``location`` replaces ``location``; a line that is not
    such an object yields ``{"error": "...", "line": N}`` instead of stopping the run. ``location`` (user,
    tool_result, system, documents) is where the proxy would have found the text: rules limited to other places
    are not evidence there. None: every rule counts.
    """
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if not jsonl:
            yield screener.scan(line, location).as_dict(action)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield {"error": f"line {lineno}: invalid JSON: {exc.msg}", "line": lineno}
            continue
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            yield {"error": f"line {lineno}: expected an object with a string 'text' field", "line": lineno}
            continue
        where = row.get("location", location)
        if where is not None and where not in LOCATIONS:
            yield {"error": f"line {lineno}: location must be one of {', '.join(LOCATIONS)}", "line": lineno}
            continue
        out = screener.scan(row["text"], where).as_dict(action)
        if "id" in row:
            out["id"] = row["id"]
        yield out
