"""Bounded store calls and the ``on_store_error`` policy around any ledger.

Every call to the inner store is bounded by ``timeout`` (default 0.25 s). When the store fails or is slow:

- ``closed``: ``reserve``/``rate_limit``/``usage``/``reset``/``ping`` raise ``StoreUnavailable`` (the proxy
  answers 503); nothing goes upstream unaccounted.
- ``open``: requests are served; reservations and settlements go to a local in-memory ledger (same code,
  SQLite ``:memory:``) that still enforces every limit *per process, from zero*, and every settlement is
  journaled. When the store answers again the journal is replayed, exactly once per request id (the
  store's settle is idempotent, an entry leaves the journal only after the store acknowledged it).

In both modes a failed ``settle`` is journaled and replayed rather than raised: the upstream call already
happened, so its usage must not be lost.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .ledger import Amount, Ledger, Limit, Refusal, Reservation, SettleResult, StoreUnavailable, UsageRow
from .sqlite import SqliteLedger

log = logging.getLogger("otelgate.budgets")
T = TypeVar("T")

_STORE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, OSError, ConnectionError, sqlite3.Error)
try:  # redis-py is optional; its errors are store errors too
    from redis.exceptions import RedisError

    _STORE_ERRORS = (*_STORE_ERRORS, RedisError)
except ImportError:  # pragma: no cover
    pass


@dataclass(frozen=True)
class JournalEntry:
    request_id: str
    actual: Amount
    limits: tuple[Limit, ...]
    at: float


class ResilientLedger(Ledger):
    def __init__(self, inner: Ledger, on_error: str = "closed", timeout: float = 0.25,
                 probe_interval: float = 1.0) -> None:
        if on_error not in ("open", "closed"):
            raise ValueError("on_error must be 'open' or 'closed'")
        self.inner = inner
        self.on_error = on_error
        self.timeout = float(timeout)
        self.probe_interval = float(probe_interval)
        self.reservation_ttl = inner.reservation_ttl
        self.local = SqliteLedger(":memory:", reservation_ttl=inner.reservation_ttl)
        self.journal: dict[str, JournalEntry] = {}
        self._local_ids: set[str] = set()
        # Refused (503) reserves whose command may still have reached the store: released on recovery so a
        # reservation nobody will settle does not hold budget for reservation_ttl.
        self.orphans: set[str] = set()
        self._limits_of: dict[str, tuple[Limit, ...]] = {}
        self._down_since: float | None = None
        self._last_probe = 0.0
        self._replay_lock = asyncio.Lock()

    @property
    def degraded(self) -> bool:
        return self._down_since is not None

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            out = await asyncio.wait_for(fn(), self.timeout)
        except _STORE_ERRORS as e:
            if self._down_since is None:
                log.warning("budget store unavailable (%s: %s); policy %s", type(e).__name__, e, self.on_error)
                self._down_since = time.monotonic()
            self._last_probe = time.monotonic()
            raise StoreUnavailable(f"budget store unavailable: {type(e).__name__}") from e
        return out

    async def _healthy(self) -> bool:
        """False while degraded, except that every ``probe_interval`` one call probes and, on success,
        replays the journal."""
        if self._down_since is None and not self.journal and not self.orphans:
            return True
        if self._down_since is not None and time.monotonic() - self._last_probe < self.probe_interval:
            return False
        try:
            await self.reconcile()
        except StoreUnavailable:
            return False
        return self._down_since is None

    async def reconcile(self) -> int:
        """Replay journaled settlements into the store; returns how many the store newly applied."""
        async with self._replay_lock:
            await self._call(self.inner.ping)
            applied = 0
            for rid, e in list(self.journal.items()):
                res = await self._call(lambda e=e: self.inner.settle(e.request_id, e.actual, list(e.limits),
                                                                     now=e.at))
                applied += int(res.applied)
                self.journal.pop(rid, None)
            for rid in list(self.orphans):
                await self._call(lambda rid=rid: self.inner.release(rid))
                self.orphans.discard(rid)
            if self._down_since is not None:
                log.warning("budget store back after %.1f s; %d settlements replayed",
                            time.monotonic() - self._down_since, applied)
            self._down_since = None
            return applied

    # -- accounting -----------------------------------------------------------------------------------
    async def reserve(self, request_id: str, limits: list[Limit], amount: Amount,
                      now: float | None = None) -> Reservation | Refusal:
        self._limits_of[request_id] = tuple(limits)
        if await self._healthy():
            try:
                return await self._call(lambda: self.inner.reserve(request_id, limits, amount, now))
            except StoreUnavailable:
                if self.on_error == "closed":
                    self._limits_of.pop(request_id, None)
                    self.orphans.add(request_id)
                    raise
        elif self.on_error == "closed":
            self._limits_of.pop(request_id, None)
            raise StoreUnavailable("budget store unavailable")
        out = await self.local.reserve(request_id, limits, amount, now)
        if isinstance(out, Reservation):
            self._local_ids.add(request_id)
            return Reservation(out.request_id, out.amount, out.limits, out.expires_at, local=True)
        self._limits_of.pop(request_id, None)
        return out

    async def settle(self, request_id: str, actual: Amount, limits: list[Limit] | None = None,
                     now: float | None = None) -> SettleResult:
        lims = tuple(limits) if limits is not None else self._limits_of.get(request_id, ())
        self._limits_of.pop(request_id, None)
        at = time.time() if now is None else now
        if request_id not in self._local_ids and await self._healthy():
            try:
                return await self._call(lambda: self.inner.settle(request_id, actual, list(lims), now=at))
            except StoreUnavailable:
                pass
        self._local_ids.discard(request_id)
        if request_id in self.journal:
            return SettleResult(request_id, False)
        self.journal[request_id] = JournalEntry(request_id, actual, lims, at)
        res = await self.local.settle(request_id, actual, list(lims), now=at)
        if self.degraded is False:
            # The store answered before: try to hand the journal over straight away.
            try:
                await self.reconcile()
            except StoreUnavailable:
                pass
        return res

    async def _release(self, request_id: str, now: float) -> bool:
        self._limits_of.pop(request_id, None)
        if request_id in self._local_ids:
            self._local_ids.discard(request_id)
            return await self.local.release(request_id, now)
        try:
            return await self._call(lambda: self.inner.release(request_id, now))
        except StoreUnavailable:
            return False  # the store's reservation expires on its own after reservation_ttl

    async def rate_limit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int = 0,
                         now: float | None = None) -> Refusal | None:
        if await self._healthy():
            try:
                return await self._call(lambda: self.inner.rate_limit(key_id, rpm, tpm, tokens, now))
            except StoreUnavailable:
                if self.on_error == "closed":
                    raise
        elif self.on_error == "closed":
            raise StoreUnavailable("budget store unavailable")
        return await self.local.rate_limit(key_id, rpm, tpm, tokens, now)

    async def claim_once(self, mark: str, ttl_seconds: float) -> bool:
        if await self._healthy():
            try:
                return await self._call(lambda: self.inner.claim_once(mark, ttl_seconds))
            except StoreUnavailable:
                pass
        return await self.local.claim_once(mark, ttl_seconds)  # replicas may repeat an alert while down

    # -- visibility -------------------------------------------------------------------------------------
    async def usage(self, scope: str | None = None, scope_id: str | None = None, *,
                    limits: list[Limit] | None = None, now: float | None = None) -> list[UsageRow]:
        await self._healthy()
        return await self._call(lambda: self.inner.usage(scope, scope_id, limits=limits, now=now))

    async def reset(self, scope: str, scope_id: str, now: float | None = None) -> None:
        await self._call(lambda: self.inner.reset(scope, scope_id, now))

    async def ping(self) -> None:
        await self._call(self.inner.ping)

    async def close(self) -> None:
        await self.local.close()
        await self.inner.close()
