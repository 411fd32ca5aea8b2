"""`otelgate usage`: budgets and spend per key, team and window, read straight from the store."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from otelgate.admin import collect_usage, row_dict
from otelgate.budgets import StoreUnavailable, UsageRow, open_ledger, sqlite_path
from otelgate.config import Settings


def _amount(unit: str, value: float | None) -> str:
    if value is None:
        return "-"
    if unit == "usd":
        return f"${value:,.4f}" if 0 < value < 0.01 else f"${value:,.2f}"
    return f"{int(value):,}"


def _table(rows: list[UsageRow]) -> str:
    head = ("SCOPE", "ID", "WINDOW", "UNIT", "SPENT", "RESERVED", "LIMIT", "REMAINING", "USED", "RESETS (UTC)")
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        d = row_dict(r)
        used = f"{r.spent / r.limit:.0%}" if r.limit else "-"
        resets = (d["reset_at"] or "-").replace("T", " ").removesuffix("Z")
        lines.append((r.scope, r.scope_id, r.window.key, r.unit, _amount(r.unit, r.spent),
                      _amount(r.unit, r.reserved), _amount(r.unit, r.limit), _amount(r.unit, r.remaining),
                      used, resets))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite store file that does not exist yet, else None (Redis, in-memory, existing file)."""
    path = sqlite_path(url)
    if not path or path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return None
    return os.path.abspath(path)


async def print_usage(settings: Settings, key: str | None = None, as_json: bool = False) -> int:
    """Print usage rows (a table, or JSON with ``as_json``). Exit code 0, 1 for an unknown key, 2 when the
    store cannot be read."""
    if key is not None and all(k.id != key for k in settings.keys) and not key.startswith("sha256:"):
        print(f"otelgate usage: no key {key!r} in the configuration", file=sys.stderr)
        return 1
    store = settings.budgets.store
    missing = _missing_sqlite_file(store)
    if missing is not None:
        # Opening it would create an empty ledger file wherever the command runs: a reader must not leave files
        # behind. Show the configured limits with nothing spent, and say where it looked.
        print(f"otelgate usage: no budget store at {missing} yet (budgets.store: {store}); nothing recorded "
              "there. Run it with the gateway's --config, from the directory the gateway runs in.", file=sys.stderr)
        store = "sqlite:///:memory:"
    try:
        ledger = open_ledger(store)
    except (ValueError, OSError) as exc:
        print(f"otelgate usage: cannot open the budget store: {exc}", file=sys.stderr)
        return 2
    try:
        rows = await collect_usage(ledger, settings, key=key)
        if key is not None and key.startswith("sha256:"):
            rows = await ledger.usage("key", key)
    except (StoreUnavailable, OSError, ConnectionError) as exc:
        print(f"otelgate usage: cannot read the budget store: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # redis-py and sqlite3 errors: say what failed, no traceback for a CLI user
        print(f"otelgate usage: cannot read the budget store: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        await ledger.close()
    if as_json:
        out: dict[str, Any] = {"usage": [row_dict(r) for r in rows]}
        print(json.dumps(out, indent=2))
    elif not rows:
        print("no budgets configured and nothing spent yet")
    else:
        print(_table(rows))
    return 0
