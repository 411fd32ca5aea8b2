"""Bounded store calls and the ``on_store_error`` policy around any ledger.

Every call is bounded by ``timeout`` (default 0.25 s), counted from when the request asked — waiting for the
store's turn included — so the budget store never holds a request longer than that. What happens when the
bound is hit depends on *why*:

- **congestion**: the store answered other calls while this one waited (its own progress is visible: the
  SQLite ledger thread finishing an operation, or any call returning). Only this request is shed — it gets
  the policy below for itself — and the store stays up for everyone else.
- **stall**: the store answered nothing at all during the wait. After ``down_after`` (default 3) stalls in a
  row, or at once on a connection error, the store is marked **down**: calls fail fast without waiting, and
  every ``probe_interval`` one call probes it (a ``ping`` within the caller's own bound).

The policy for a request the store did not serve:

- ``closed``: ``reserve``/``rate_limit``/``usage``/``reset``/``ping`` raise ``StoreUnavailable`` (the proxy
  answers 503); nothing goes upstream unaccounted.
- ``open``: requests are served; reservations and settlements go to a local in-memory ledger (same code,
  SQLite ``:memory:``) that still enforces every limit *per process, from zero*, and every settlement is
  journaled. When the store answers again the journal is replayed in the background, exactly once per
  request id (the store's settle is idempotent, an entry leaves the journal only after the store
  acknowledged it).

In both modes a failed ``settle`` is journaled and replayed rather than raised: the upstream call already
happened, so its usage must not be lost. A reserve that timed out may still have landed in the store; its
request id is released once the store answers, so it does not hold budget until its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .ledger import Amount, Ledger, Limit, RateAsk, Refusal, Reservation, SettleResult, StoreUnavailable, UsageRow
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


@dataclass
class StoreStats:
    """What the bound did so far (for logs, health and tests)."""

    shed: int = 0  # calls that timed out while the store kept answering others: refused alone
    stalls: int = 0  # calls that timed out with the store answering nothing meanwhile
    errors: int = 0  # connection and store errors
    outages: int = 0  # times the store was marked down


class ResilientLedger(Ledger):
    def __init__(self, inner: Ledger, on_error: str = "closed", timeout: float = 0.25,
                 probe_interval: float = 1.0, down_after: int = 3) -> None:
        if on_error not in ("open", "closed"):
            raise ValueError("on_error must be 'open' or 'closed'")
        if down_after < 1:
            raise ValueError("down_after must be at least 1")
        self.inner = inner
        self.on_error = on_error
        self.timeout = float(timeout)
        self.probe_interval = float(probe_interval)
        self.down_after = int(down_after)
        self.reservation_ttl = inner.reservation_ttl
        self.local = SqliteLedger(":memory:", reservation_ttl=inner.reservation_ttl)
        self.journal: dict[str, JournalEntry] = {}
        self.stats = StoreStats()
        self._local_ids: set[str] = set()
        # Refused (503) reserves whose command may still have reached the store: released on recovery so a
        # reservation nobody will settle does not hold budget for reservation_ttl.
        self.orphans: set[str] = set()
        self._limits_of: dict[str, tuple[Limit, ...]] = {}
        self._down_since: float | None = None
        self._last_probe = 0.0
        self._probing = False
        self._stalls = 0  # consecutive
        self._last_ok = 0.0  # monotonic time a store call last returned
        self._replay_lock = asyncio.Lock()
        self._replay_task: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        return self._down_since is not None

    def _progress(self) -> float:
        """When the store last answered anything: its own clock (SQLite: the ledger thread's last finished
        operation, unaffected by queueing or a busy event loop) or, for other stores, the last call that
        returned."""
        own = getattr(self.inner, "last_answer", 0.0)
        return max(self._last_ok, own if isinstance(own, float) else 0.0)

    def _mark_down(self, why: str) -> None:
        now = time.monotonic()
        self._last_probe = now
        if self._down_since is None:
            log.warning("budget store unavailable (%s); policy %s", why, self.on_error)
            self._down_since = now
            self.stats.outages += 1

    def _mark_up(self) -> None:
        self._stalls = 0
        if self._down_since is not None:
            log.warning("budget store back after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None

    async def _call(self, fn: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
        started = time.monotonic()
        bound = self.timeout if deadline is None else deadline - started
        if bound <= 0:
            self.stats.shed += 1
            raise StoreUnavailable(f"budget store unavailable: no answer within {self.timeout:g} s")

        try:
            # asyncio.timeout cancels the call in place; wait_for (3.11) wrapped every store call in a Task of
            # its own plus a helper coroutine, a measurable share of the proxy's CPU at three calls per request.
            async with asyncio.timeout(bound):
                out = await fn()
        except TimeoutError as e:
            if self._progress() > started:
                # Congestion, not an outage: the store kept answering; only this request is refused.
                self.stats.shed += 1
                raise StoreUnavailable(f"budget store unavailable: busy, no answer within {self.timeout:g} s") \
                    from e
            self.stats.stalls += 1
            self._stalls += 1
            if self._stalls >= self.down_after:
                self._mark_down(f"no answer for {self._stalls} calls in a row")
            raise StoreUnavailable("budget store unavailable: TimeoutError") from e
        except _STORE_ERRORS as e:
            self.stats.errors += 1
            self._mark_down(f"{type(e).__name__}: {e}")
            raise StoreUnavailable(f"budget store unavailable: {type(e).__name__}") from e
        self._last_ok = time.monotonic()
        self._stalls = 0
        return out

    def _clear(self) -> bool:
        """The common case, without a coroutine: the store is up and nothing waits to be handed over."""
        return self._down_since is None and not self.journal and not self.orphans

    async def _healthy(self, deadline: float) -> bool:
        """True when calls should go to the store. While it is down: False, except that every
        ``probe_interval`` one caller probes it (within its own deadline) and, when it answers, brings it
        back. Journaled settlements and orphaned reserves are handed over in the background."""
        if self._down_since is None:
            if (self.journal or self.orphans) and (self._replay_task is None or self._replay_task.done()):
                self._replay_task = asyncio.create_task(self._replay_quietly())
            return True
        if self._probing or time.monotonic() - self._last_probe < self.probe_interval:
            return False
        self._probing = True
        self._last_probe = time.monotonic()
        try:
            await self._call(self.inner.ping, deadline)
        except StoreUnavailable:
            return False
        finally:
            self._probing = False
        self._mark_up()
        return await self._healthy(deadline)

    async def _replay_quietly(self) -> None:
        try:
            await self.reconcile()
        except StoreUnavailable:
            pass  # still down or busy: the next healthy call tries again

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

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
            if applied:
                log.warning("budget store: %d journaled settlements replayed", applied)
            self._mark_up()
            return applied

    # -- accounting -----------------------------------------------------------------------------------
    async def reserve(self, request_id: str, limits: list[Limit], amount: Amount,
                      now: float | None = None, rate: RateAsk | None = None) -> Reservation | Refusal:
        deadline = self._deadline()
        self._limits_of[request_id] = tuple(limits)
        if self._clear() or await self._healthy(deadline):
            try:
                if rate is None:  # stores written before folded rate limits still work
                    return await self._call(lambda: self.inner.reserve(request_id, limits, amount, now), deadline)
                return await self._call(lambda: self.inner.reserve(request_id, limits, amount, now, rate),
                                        deadline)
            except StoreUnavailable:
                self.orphans.add(request_id)  # it may have landed: released once the store answers
                if self.on_error == "closed":
                    self._limits_of.pop(request_id, None)
                    raise
        elif self.on_error == "closed":
            self._limits_of.pop(request_id, None)
            raise StoreUnavailable("budget store unavailable")
        out = await self.local.reserve(request_id, limits, amount, now, rate)
        if isinstance(out, Reservation):
            self._local_ids.add(request_id)
            return Reservation(out.request_id, out.amount, out.limits, out.expires_at, local=True)
        self._limits_of.pop(request_id, None)
        return out

    async def settle(self, request_id: str, actual: Amount, limits: list[Limit] | None = None,
                     now: float | None = None) -> SettleResult:
        deadline = self._deadline()
        lims = tuple(limits) if limits is not None else self._limits_of.get(request_id, ())
        self._limits_of.pop(request_id, None)
        at = time.time() if now is None else now
        if request_id not in self._local_ids and (self._clear() or await self._healthy(deadline)):
            try:
                return await self._call(lambda: self.inner.settle(request_id, actual, list(lims), now=at),
                                        deadline)
            except StoreUnavailable:
                pass
        self._local_ids.discard(request_id)
        if request_id in self.journal:
            return SettleResult(request_id, False)
        self.journal[request_id] = JournalEntry(request_id, actual, lims, at)
        return await self.local.settle(request_id, actual, list(lims), now=at)

    async def _release(self, request_id: str, now: float) -> bool:
        self._limits_of.pop(request_id, None)
        if request_id in self._local_ids:
            self._local_ids.discard(request_id)
            return await self.local.release(request_id, now)
        if not await self._healthy(self._deadline()):
            self.orphans.add(request_id)
            return False
        try:
            return await self._call(lambda: self.inner.release(request_id, now))
        except StoreUnavailable:
            self.orphans.add(request_id)  # released on recovery, or it expires after reservation_ttl
            return False

    async def rate_limit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int = 0,
                         now: float | None = None) -> Refusal | None:
        deadline = self._deadline()
        if await self._healthy(deadline):
            try:
                return await self._call(lambda: self.inner.rate_limit(key_id, rpm, tpm, tokens, now), deadline)
            except StoreUnavailable:
                if self.on_error == "closed":
                    raise
        elif self.on_error == "closed":
            raise StoreUnavailable("budget store unavailable")
        return await self.local.rate_limit(key_id, rpm, tpm, tokens, now)

    async def claim_once(self, mark: str, ttl_seconds: float) -> bool:
        deadline = self._deadline()
        if await self._healthy(deadline):
            try:
                return await self._call(lambda: self.inner.claim_once(mark, ttl_seconds), deadline)
            except StoreUnavailable:
                pass
        return await self.local.claim_once(mark, ttl_seconds)  # replicas may repeat an alert while down

    async def remember(self, name: str, value: str, ttl_seconds: float) -> None:
        # A note only helps another replica: while the store is down (or slow) it is not kept, nothing waits.
        deadline = self._deadline()
        if await self._healthy(deadline):
            try:
                await self._call(lambda: self.inner.remember(name, value, ttl_seconds), deadline)
            except StoreUnavailable:
                pass

    async def recall(self, name: str) -> str | None:
        deadline = self._deadline()
        if await self._healthy(deadline):
            try:
                return await self._call(lambda: self.inner.recall(name), deadline)
            except StoreUnavailable:
                pass
        return None

    # -- visibility -------------------------------------------------------------------------------------
    async def usage(self, scope: str | None = None, scope_id: str | None = None, *,
                    limits: list[Limit] | None = None, now: float | None = None) -> list[UsageRow]:
        deadline = self._deadline()
        await self._healthy(deadline)
        return await self._call(lambda: self.inner.usage(scope, scope_id, limits=limits, now=now), deadline)

    async def reset(self, scope: str, scope_id: str, now: float | None = None) -> None:
        await self._call(lambda: self.inner.reset(scope, scope_id, now))

    async def ping(self) -> None:
        await self._call(self.inner.ping)

    async def close(self) -> None:
        task, self._replay_task = self._replay_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.local.close()
        await self.inner.close()
