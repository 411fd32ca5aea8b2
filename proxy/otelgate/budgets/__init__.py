"""Budgets: the ledger (SQLite or Redis), pricing, input-token estimation, rate limits and usage alerts.

HTTP- and config-agnostic: plain dataclasses in, plain dataclasses out. See docs/budgets.md.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .alerts import AlertEvent, BudgetAlerter
from .estimate import estimate_input_tokens, max_output_tokens, requested_max_output_tokens
from .ledger import (
    Amount,
    Ledger,
    Limit,
    RateAsk,
    Refusal,
    Reservation,
    SettleResult,
    StoreUnavailable,
    UsageRow,
    WindowSpend,
)
from .pricing import ModelPrice, PriceQuote, Pricing, TokenUsage
from .resilient import ResilientLedger
from .sqlite import SqliteLedger
from .windows import Window


def sqlite_path(url: str) -> str | None:
    """The file path of a ``sqlite:///`` store URL ("" for an in-memory one), None for other stores."""
    if not url.startswith("sqlite:"):
        return None
    path = url.split("://", 1)[1].split("?", 1)[0]
    return path[1:] if path.startswith("/") else path  # sqlite:///x.db -> x.db, sqlite:////a -> /a


def open_ledger(url: str = "sqlite:///./otelgate.db", **kw: Any) -> Ledger:
    """A ledger from a store URL: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``,
    ``sqlite:///:memory:``, ``redis://host:port/db`` (or ``rediss://``). Query parameters
    ``reservation_ttl``, ``settled_ttl`` (seconds) and, for SQLite, ``synchronous`` are applied; keyword
    arguments win over them."""
    parts = urlsplit(url)
    params: dict[str, Any] = dict(parse_qsl(parts.query))
    for name in ("reservation_ttl", "settled_ttl"):
        if name in params:
            params[name] = float(params[name])
    params.update(kw)
    if parts.scheme == "sqlite":
        return SqliteLedger(sqlite_path(url) or ":memory:", **params)
    if parts.scheme in ("redis", "rediss", "unix"):
        from .redis import RedisLedger  # redis-py is an optional dependency

        plain = url.split("?", 1)[0]
        return RedisLedger(plain, **params)
    raise ValueError(f"unsupported budget store URL {url!r} (use sqlite:///… or redis://…)")


__all__ = [
    "AlertEvent",
    "Amount",
    "BudgetAlerter",
    "Ledger",
    "Limit",
    "ModelPrice",
    "PriceQuote",
    "Pricing",
    "RateAsk",
    "Refusal",
    "Reservation",
    "ResilientLedger",
    "SettleResult",
    "SqliteLedger",
    "StoreUnavailable",
    "TokenUsage",
    "UsageRow",
    "Window",
    "WindowSpend",
    "estimate_input_tokens",
    "max_output_tokens",
    "open_ledger",
    "requested_max_output_tokens",
]


def __getattr__(name: str) -> Any:
    if name == "RedisLedger":
        from .redis import RedisLedger

        return RedisLedger
    raise AttributeError(name)
