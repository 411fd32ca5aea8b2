"""The budget ledger interface and the plain dataclasses that cross it.

Callers (the proxy) hand in ``Limit``s and ``Amount``s and get back ``Reservation``, ``Refusal``,
``SettleResult`` and ``UsageRow`` values: no HTTP, no config objects. Stores (SQLite, Redis) implement
``Ledger``; ``ResilientLedger`` wraps any of them with timeouts and the open/closed failure policy.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .windows import Window, _zone

SCOPES = ("key", "team", "global", "session")
UNITS = ("usd", "tokens", "calls")
NANO = 1_000_000_000  # stores keep USD as integer nano-dollars: additions and subtractions stay exact


def usd_to_nano(usd: float) -> int:
    # Round to 1e-12 first so 0.3 * 1e9 = 300000000.00000006 does not become 300000001; then round up
    # so a stored cost is never below the real one.
    return math.ceil(round(usd * NANO, 3))


class StoreUnavailable(Exception):
    """The budget store did not answer in time (or at all) and the policy is fail-closed."""


@dataclass(frozen=True)
class Amount:
    usd: float = 0.0
    tokens: int = 0
    calls: int = 0

    def get(self, unit: str) -> float:
        return float(getattr(self, unit))

    @classmethod
    def from_nano(cls, usd_nano: int, tokens: int, calls: int) -> Amount:
        return cls(usd=usd_nano / NANO, tokens=int(tokens), calls=int(calls))

    def to_nano(self) -> tuple[int, int, int]:
        return usd_to_nano(self.usd), int(self.tokens), int(self.calls)


@dataclass(frozen=True)
class Limit:
    """One budget: spend of ``scope``/``scope_id`` within ``window`` may not exceed any unit given."""

    scope: str
    scope_id: str
    window: Window
    usd: float | None = None
    tokens: int | None = None
    calls: int | None = None

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.window.kind == "minute":
            raise ValueError("the minute window is for rate limits, not budgets")

    def value(self, unit: str) -> float | None:
        v = getattr(self, unit)
        return None if v is None else float(v)

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "scope_id": self.scope_id, "window": self.window.key,
                "usd": self.usd, "tokens": self.tokens, "calls": self.calls}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Limit:
        return cls(scope=d["scope"], scope_id=d["scope_id"], window=Window.from_key(d["window"]),
                   usd=d.get("usd"), tokens=d.get("tokens"), calls=d.get("calls"))


@dataclass(frozen=True)
class Reservation:
    request_id: str
    amount: Amount
    limits: tuple[Limit, ...]
    expires_at: float
    local: bool = False  # True when a fail-open ResilientLedger served it from its in-memory journal


@dataclass(frozen=True)
class WindowSpend:
    """Spend of one budget window after a settle: the input of usage alerts."""

    limit: Limit
    window_start: float
    window_end: float
    spent: Amount  # settled spend in the window
    reserved: Amount  # still held by in-flight requests

    def utilisation(self, unit: str) -> float | None:
        lim = self.limit.value(unit)
        if lim is None:
            return None
        if lim <= 0:
            return 1.0
        return self.spent.get(unit) / lim


@dataclass(frozen=True)
class SettleResult:
    request_id: str
    applied: bool  # False: this request id was already settled (the call was a no-op)
    spends: tuple[WindowSpend, ...] = ()


@dataclass(frozen=True)
class UsageRow:
    scope: str
    scope_id: str
    window: Window
    unit: str
    spent: float  # settled
    reserved: float  # in flight
    limit: float | None
    remaining: float | None  # limit - spent - reserved, never below 0
    window_start: float
    reset_at: float | None


def _fmt_value(unit: str, v: float) -> str:
    if unit == "usd":
        return f"${v:,.2f}" if round(v, 2) == round(v, 6) else f"${v:,.6f}".rstrip("0")
    n = int(v) if float(v).is_integer() else v
    word = {"tokens": "tokens", "calls": "calls", "requests": "requests"}[unit]
    if n == 1 and word.endswith("s"):
        word = word[:-1]
    return f"{n:,} {word}"


def _subject(scope: str, scope_id: str) -> str:
    return "all keys" if scope == "global" else f"{scope} {scope_id}"


@dataclass(frozen=True)
class Refusal:
    """Why a request may not go upstream: which limit, how much is spent, and when it frees up."""

    scope: str
    scope_id: str
    window: Window
    unit: str  # usd | tokens | calls | requests (rate limit)
    limit: float
    spent: float  # settled + reserved in the window when refused
    requested: float
    reset_at: float | None  # epoch seconds; None when waiting will not help (session caps)
    reason: str = "budget"  # budget | session | rate_limit

    def retry_after(self, now: float | None = None) -> int | None:
        """Whole seconds until ``reset_at`` (at least 1), for a ``retry-after`` header."""
        if self.reset_at is None:
            return None
        now = time.time() if now is None else now
        return max(1, math.ceil(self.reset_at - now))

    def message(self, now: float | None = None) -> str:
        value = _fmt_value(self.unit, self.limit)
        subject = _subject(self.scope, self.scope_id)
        kind = self.window.kind
        if kind == "session":
            return f"session limit of {value} for session {self.scope_id} reached"
        if kind == "minute":
            wait = self.retry_after(now)
            tail = f"; retry in {wait} s" if wait is not None else ""
            return f"rate limit of {value} per minute for {subject} reached{tail}"
        adjective = self.window.describe()
        head = (f"global {adjective} budget of {value} reached" if self.scope == "global"
                else f"{adjective} budget of {value} for {subject} reached")
        if self.reset_at is None:
            return head
        tz = self.window.tz if kind in ("day", "month") else "UTC"
        at = datetime.fromtimestamp(self.reset_at, _zone(tz))
        if kind == "day":
            return f"{head}; resets at {at:%H:%M} {tz}"
        if kind == "month":
            return f"{head}; resets at {at:%H:%M} {tz} on {at:%Y-%m-%d}"
        return f"{head}; frees up at {at:%H:%M} {tz}"


@dataclass(frozen=True, slots=True)
class RateAsk:
    """A rate-limit check to fold into a reserve: one store call does both, all or nothing (the rate is
    checked first, so its refusal wins, as when it was a call of its own)."""

    key_id: str
    rpm: int | None
    tpm: int | None
    tokens: int = 0


class Ledger(abc.ABC):
    """Budget accounting shared by every replica: reserve the worst case, settle the real usage.

    Contract (the same test suite runs against every store):
    - ``reserve`` checks every window of every limit and either holds ``amount`` in all of them or in
      none (a ``Refusal`` names the first limit that would be exceeded).
    - ``settle`` replaces the reservation by ``actual`` exactly once per request id; a second settle is a
      no-op (``applied=False``); without a reservation (expired, or lost to a restart) it still records
      ``actual`` against ``limits`` at ``now``.
    - ``release`` drops a reservation whose request never reached the upstream (nothing is spent).
    - reservations expire after ``reservation_ttl`` seconds, so a crashed process holds no budget forever.
    """

    reservation_ttl: float = 900.0

    @abc.abstractmethod
    async def reserve(self, request_id: str, limits: list[Limit], amount: Amount,
                      now: float | None = None, rate: RateAsk | None = None) -> Reservation | Refusal:
        """With ``rate``, also takes from that key's rate-limit buckets in the same atomic step: a refusal
        of either holds and takes nothing."""

    @abc.abstractmethod
    async def settle(self, request_id: str, actual: Amount, limits: list[Limit] | None = None,
                     now: float | None = None) -> SettleResult: ...

    async def release(self, request_id: str, now: float | None = None) -> bool:
        """Drop a reservation; returns False if there was none (already settled, released or expired)."""
        return await self._release(request_id, time.time() if now is None else now)

    @abc.abstractmethod
    async def _release(self, request_id: str, now: float) -> bool: ...

    @abc.abstractmethod
    async def usage(self, scope: str | None = None, scope_id: str | None = None, *,
                    limits: list[Limit] | None = None, now: float | None = None) -> list[UsageRow]: ...

    @abc.abstractmethod
    async def reset(self, scope: str, scope_id: str, now: float | None = None) -> None: ...

    @abc.abstractmethod
    async def rate_limit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int = 0,
                         now: float | None = None) -> Refusal | None: ...

    @abc.abstractmethod
    async def claim_once(self, mark: str, ttl_seconds: float) -> bool:
        """Set ``mark`` if absent (atomically across replicas); True for the one caller that set it."""

    @abc.abstractmethod
    async def remember(self, name: str, value: str, ttl_seconds: float) -> None:
        """Keep a short note every replica can read back with ``recall`` for ``ttl_seconds`` (the session a
        stored answer belonged to): not budget state, the last write wins."""

    @abc.abstractmethod
    async def recall(self, name: str) -> str | None:
        """A note ``remember`` kept and that has not expired, else None."""

    @abc.abstractmethod
    async def ping(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

