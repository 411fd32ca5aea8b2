"""SQLite ledger: one file (WAL) shared by every worker process on a host.

Every operation runs on a single dedicated thread per process (``sqlite_worker.SqliteWorker``), so the event
loop never waits on disk or on a lock. Operations queued at the same time share one ``BEGIN IMMEDIATE …
COMMIT`` (group commit), each in its own savepoint, so two processes never interleave a check and an update
and each operation stays all-or-nothing. With ``synchronous=NORMAL`` a committed transaction survives a
process crash (``kill -9``): WAL frames are in the OS page cache once ``COMMIT`` returns, and no caller
hears of an operation before its ``COMMIT``. Only a power loss can lose the last transactions;
``?synchronous=full`` closes that too at the cost of an fsync per commit (shared by the whole batch).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import ratelimit
from .counters import (
    CounterRef,
    alert_mark_prefix,
    limit_json,
    payload_json,
    plan,
    read_payload,
    refusal_for,
    scope_prefix,
    usage_rows,
    window_spend,
)
from .ledger import Amount, Ledger, Limit, RateAsk, Refusal, Reservation, SettleResult, UsageRow
from .sqlite_worker import SqliteWorker

T = TypeVar("T")
SIX = ("su", "st", "sc", "ru", "rt", "rc")

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
  k TEXT PRIMARY KEY, su INTEGER NOT NULL DEFAULT 0, st INTEGER NOT NULL DEFAULT 0,
  sc INTEGER NOT NULL DEFAULT 0, ru INTEGER NOT NULL DEFAULT 0, rt INTEGER NOT NULL DEFAULT 0,
  rc INTEGER NOT NULL DEFAULT 0, expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counters_exp ON counters(expires_at);
CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, body TEXT NOT NULL, expires_at REAL NOT NULL)
  WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservations_exp ON reservations(expires_at);
CREATE TABLE IF NOT EXISTS settled (id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS settled_at ON settled(at);
CREATE TABLE IF NOT EXISTS limits (rk TEXT PRIMARY KEY, spec TEXT NOT NULL, expires_at REAL NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (k TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rates (k TEXT PRIMARY KEY, level REAL NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notes (k TEXT PRIMARY KEY, v TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;
"""

# One statement adds a delta to a counter, creating it when missing. Reserved amounts never go below zero (a
# release racing a reset); the expiry only grows, except for sessions, whose expiry slides with every touch.
_UPSERT = ("INSERT INTO counters (k, su, st, sc, ru, rt, rc, expires_at) VALUES "
           "(?1, MAX(0, ?2), MAX(0, ?3), MAX(0, ?4), MAX(0, ?5), MAX(0, ?6), MAX(0, ?7), ?8) "
           "ON CONFLICT(k) DO UPDATE SET su = su + ?2, st = st + ?3, sc = sc + ?4, ru = MAX(0, ru + ?5), "
           "rt = MAX(0, rt + ?6), rc = MAX(0, rc + ?7), expires_at = {expiry}")
ADD = _UPSERT.format(expiry="MAX(expires_at, ?8)")
ADD_SLIDING = _UPSERT.format(expiry="?8")
ADD_RETURNING = ADD + " RETURNING su, st, sc, ru, rt, rc"
ADD_SLIDING_RETURNING = ADD_SLIDING + " RETURNING su, st, sc, ru, rt, rc"

PRUNE_EVERY = 60.0  # seconds between clean-ups of expired rows, per process
REGISTER_EVERY = 60.0  # seconds a process may skip re-registering a limit it registered
SWEEP_BATCH = 100  # expired reservations released per sweep, bounding its cost
SWEEP_EVERY = 1.0  # seconds between sweeps of expired reservations, per process (their TTL is minutes)


class SqliteLedger(Ledger):
    def __init__(self, path: str, *, reservation_ttl: float = 900.0, settled_ttl: float = 2 * 86400,
                 synchronous: str = "NORMAL", busy_timeout_ms: int = 5000, max_batch: int = 64) -> None:
        self.path = path
        self.reservation_ttl = float(reservation_ttl)
        self.settled_ttl = float(settled_ttl)
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout_ms)
        self._last_prune = 0.0
        self._last_sweep = float("-inf")
        self._clock = 0.0
        # rk -> (monotonic, expiry, spec) of this process's last write; used on the ledger thread only
        self._registered_at: dict[str, tuple[float, float, str]] = {}
        self._closed = False
        # One thread: SQLite serialises writers anyway; concurrent calls share one commit (group commit).
        in_memory = path in ("", ":memory:") or path.startswith("file::memory:")
        self._worker = SqliteWorker(self._connect, max_batch=int(max_batch), after_batch=self._maybe_prune,
                                    checkpoint=None if in_memory else self._connect_checkpointer)

    @property
    def last_answer(self) -> float:
        """Monotonic time the ledger thread last finished an operation (the store's own progress)."""
        return self._worker.last_answer

    @property
    def batch_stats(self) -> tuple[int, int]:
        """(commits, operations) so far: operations / commits is the mean group-commit batch size."""
        return self._worker.commits, self._worker.ops

    # -- plumbing -------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        c.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={self._synchronous}")
        # Checkpoints run on their own thread (SqliteWorker), not inside a request's commit.
        c.execute("PRAGMA wal_autocheckpoint=0")
        c.execute(f"PRAGMA journal_size_limit={64 << 20}")
        c.execute("BEGIN IMMEDIATE")
        try:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            c.close()
            raise
        return c

    def _connect_checkpointer(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        c.execute(f"PRAGMA synchronous={self._synchronous}")
        return c

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside a write transaction on the ledger thread, possibly batched with others."""
        if self._closed:
            raise RuntimeError("ledger is closed")
        out: T = await self._worker.run(fn)
        return out

    # -- counter primitives (inside a transaction) ----------------------------------------------------
    @staticmethod
    def _get(c: sqlite3.Connection, k: str) -> list[int]:
        row = c.execute("SELECT su, st, sc, ru, rt, rc FROM counters WHERE k = ?", (k,)).fetchone()
        return list(row) if row else [0] * 6

    def _roll(self, c: sqlite3.Connection, ref: CounterRef, now: float) -> int:
        """Move buckets that left the rolling window out of its total; returns the cutoff."""
        z = ref.bucket_seconds
        cutoff = int((now - ref.window_seconds) // z) * z
        lo, hi = f"{ref.key}|b|", f"{ref.key}|b|{cutoff:012d}"
        old = c.execute("SELECT su, st, sc, ru, rt, rc FROM counters WHERE k >= ? AND k < ?", (lo, hi)).fetchall()
        if old:
            tot = [sum(r[i] for r in old) for i in range(6)]
            c.execute("UPDATE counters SET su = su - ?, st = st - ?, sc = sc - ?, ru = ru - ?, rt = rt - ?, "
                      "rc = rc - ? WHERE k = ?", (*tot, f"{ref.key}|t"))
            c.execute("DELETE FROM counters WHERE k >= ? AND k < ?", (lo, hi))
        return cutoff

    def _read(self, c: sqlite3.Connection, ref: CounterRef, now: float) -> list[int]:
        if ref.rolling:
            self._roll(c, ref, now)
            return self._get(c, f"{ref.key}|t")
        row = c.execute("SELECT su, st, sc, ru, rt, rc, expires_at FROM counters WHERE k = ?",
                        (ref.key,)).fetchone()
        if row is None:
            return [0] * 6
        if row[6] < now:  # an idle session that outlived its TTL starts afresh
            c.execute("DELETE FROM counters WHERE k = ?", (ref.key,))
            return [0] * 6
        return list(row[:6])

    @staticmethod
    def _add(c: sqlite3.Connection, k: str, d: tuple[int, ...], expires_at: float, slide: bool) -> None:
        c.execute(ADD_SLIDING if slide else ADD, (k, *d, expires_at))

    def _read_many(self, c: sqlite3.Connection, refs: list[CounterRef], now: float) -> list[list[int]]:
        """``_read`` of every reference; the calendar and session counters in one query."""
        plain = [ref.key for ref in refs if not ref.rolling]
        rows = {}
        if plain:
            marks = ",".join("?" * len(plain))
            rows = {r[0]: r for r in c.execute(
                f"SELECT k, su, st, sc, ru, rt, rc, expires_at FROM counters WHERE k IN ({marks})", plain)}
        out = []
        for ref in refs:
            if ref.rolling:
                out.append(self._read(c, ref, now))
                continue
            row = rows.get(ref.key)
            if row is None:
                out.append([0] * 6)
            elif row[7] < now:  # an idle session that outlived its TTL starts afresh
                c.execute("DELETE FROM counters WHERE k = ?", (ref.key,))
                out.append([0] * 6)
            else:
                out.append(list(row[1:7]))
        return out

    def _apply(self, c: sqlite3.Connection, ref: CounterRef, d: tuple[int, ...], now: float) -> None:
        if ref.rolling:
            cutoff = self._roll(c, ref, now)
            if ref.bucket < cutoff:
                return  # the bucket this request was charged to has already aged out of the window
            exp = now + ref.window_seconds + ref.bucket_seconds + 60
            self._add(c, f"{ref.key}|b|{ref.bucket:012d}", d, exp, False)
            self._add(c, f"{ref.key}|t", d, exp, False)
        elif ref.sliding_ttl:
            self._add(c, ref.key, d, now + ref.sliding_ttl, True)
        else:
            self._add(c, ref.key, d, ref.expires_at, False)

    def _register(self, c: sqlite3.Connection, ref: CounterRef, now: float) -> None:
        exp = now + ref.sliding_ttl if ref.sliding_ttl else max(ref.expires_at, now + ref.window_seconds)
        # The registry only feeds usage listings: skip rewriting a row this process wrote in the last minute
        # with the same spec and an expiry at most a minute short (one write fewer per limit per request).
        # Should that write have been rolled back after all, the row is rewritten within the minute.
        mono, spec = time.monotonic(), limit_json(ref.limit)
        seen = self._registered_at.get(ref.rk)
        if seen is not None and mono - seen[0] < REGISTER_EVERY and seen[1] >= exp - REGISTER_EVERY \
                and seen[2] == spec:
            return
        c.execute("INSERT INTO limits (rk, spec, expires_at) VALUES (?, ?, ?) ON CONFLICT(rk) DO UPDATE "
                  "SET spec = excluded.spec, expires_at = MAX(limits.expires_at, excluded.expires_at)",
                  (ref.rk, spec, exp))
        if len(self._registered_at) > 10_000:
            self._registered_at.clear()
        self._registered_at[ref.rk] = (mono, exp, spec)

    def _rolling_reset(self, c: sqlite3.Connection, ref: CounterRef, u: int, allowed: int) -> float | None:
        if allowed < 0:
            return None
        cur = self._get(c, f"{ref.key}|t")
        total = cur[u] + cur[u + 3]
        rows = c.execute("SELECT k, su, st, sc, ru, rt, rc FROM counters WHERE k >= ? AND k < ? ORDER BY k",
                         (f"{ref.key}|b|", f"{ref.key}|b|~")).fetchall()
        for row in rows:
            total -= row[1 + u] + row[4 + u]
            if total <= allowed:
                return float(int(row[0].rsplit("|", 1)[1]) + ref.bucket_seconds + ref.window_seconds)
        return None

    def _drop_reservation(self, c: sqlite3.Connection, rid: str, body: str, now: float) -> None:
        refs, a = read_payload(body)
        assert a is not None
        for ref in refs:
            self._apply(c, ref, (0, 0, 0, -a[0], -a[1], -a[2]), now)
        c.execute("DELETE FROM reservations WHERE id = ?", (rid,))

    def _sweep(self, c: sqlite3.Connection, now: float) -> None:
        if 0 <= now - self._last_sweep < SWEEP_EVERY:
            return
        self._last_sweep = now
        rows = c.execute("SELECT id, body FROM reservations WHERE expires_at < ? LIMIT ?",
                         (now, SWEEP_BATCH)).fetchall()
        for rid, body in rows:
            self._drop_reservation(c, rid, body, now)

    def _maybe_prune(self, c: sqlite3.Connection) -> None:
        now = self._clock  # the instant of the latest reserve, like every other expiry decision
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("DELETE FROM counters WHERE expires_at < ?", (now,))
            c.execute("DELETE FROM settled WHERE at < ?", (now - self.settled_ttl,))
            c.execute("DELETE FROM marks WHERE expires_at < ?", (now,))
            c.execute("DELETE FROM limits WHERE expires_at < ?", (now,))
            c.execute("DELETE FROM rates WHERE at < ?", (now - 120,))
            c.execute("DELETE FROM notes WHERE expires_at < ?", (now,))
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    # -- operations (run on the ledger thread) -------------------------------------------------------
    def _reserve_op(self, rid: str, refs: list[CounterRef], amt: tuple[int, int, int], now: float,
                    limits: tuple[Limit, ...], amount: Amount,
                    rate: RateAsk | None = None) -> Callable[[sqlite3.Connection], Any]:
        def body(c: sqlite3.Connection) -> Reservation | Refusal | str:
            self._clock = now
            self._sweep(c, now)
            held, settled = c.execute("SELECT (SELECT expires_at FROM reservations WHERE id = ?1), "
                                      "EXISTS (SELECT 1 FROM settled WHERE id = ?1)", (rid,)).fetchone()
            if held is not None:  # a retried reserve of the same request holds nothing twice
                return Reservation(rid, amount, limits, held)
            if settled:
                return "settled"
            if rate is not None:  # folded rate limit: checked first, taken only if the budgets admit too
                refusal, levels, needs = self._rate_check(c, rate, now)
                if refusal is not None:
                    return refusal
            for ref, v in zip(refs, self._read_many(c, refs, now), strict=True):
                for u in range(3):
                    lim = ref.limits_nano[u]
                    if lim >= 0 and v[u] + v[u + 3] + amt[u] > lim:
                        reset = self._rolling_reset(c, ref, u, lim - amt[u]) if ref.rolling else None
                        return refusal_for(ref, u, v[u] + v[u + 3], amt[u], reset)
            if rate is not None:
                self._rate_take(c, rate, levels, needs, now)
            held_delta = (0, 0, 0, *amt)
            plain = [ref for ref in refs if not ref.rolling]
            if plain:  # one statement for all calendar and session counters
                c.executemany(ADD, [(ref.key, *held_delta, ref.expires_at) for ref in plain if not ref.sliding_ttl])
                c.executemany(ADD_SLIDING, [(ref.key, *held_delta, now + ref.sliding_ttl)
                                            for ref in plain if ref.sliding_ttl])
            for ref in refs:
                if ref.rolling:
                    self._apply(c, ref, held_delta, now)
                self._register(c, ref, now)
            exp = now + self.reservation_ttl
            payload = payload_json(refs, amt)
            c.execute("INSERT INTO reservations (id, body, expires_at) VALUES (?, ?, ?)", (rid, payload, exp))
            return Reservation(rid, amount, limits, exp)

        return body

    def _settle_op(self, rid: str, actual: tuple[int, int, int], fallback: list[CounterRef],
                   now: float) -> Callable[[sqlite3.Connection], SettleResult]:
        def body(c: sqlite3.Connection) -> SettleResult:
            # A held reservation means not yet settled (settling deletes it in the same transaction).
            rows = c.execute("DELETE FROM reservations WHERE id = ? RETURNING body", (rid,)).fetchall()
            if rows:
                refs, amt = read_payload(rows[0][0])
                a = amt if amt is not None else [0, 0, 0]
            elif c.execute("SELECT 1 FROM settled WHERE id = ?", (rid,)).fetchone():
                return SettleResult(rid, False)
            else:
                refs, a = tuple(fallback), [0, 0, 0]
            spends = []
            delta = (*actual, -a[0], -a[1], -a[2])
            for ref in refs:
                if ref.rolling:
                    self._apply(c, ref, delta, now)
                    v = self._get(c, f"{ref.key}|t")
                elif ref.sliding_ttl:
                    v = c.execute(ADD_SLIDING_RETURNING, (ref.key, *delta, now + ref.sliding_ttl)).fetchone()
                else:
                    v = c.execute(ADD_RETURNING, (ref.key, *delta, ref.expires_at)).fetchone()
                if not rows:
                    self._register(c, ref, now)
                spends.append(window_spend(ref, v))
            c.execute("INSERT INTO settled (id, at) VALUES (?, ?)", (rid, now))
            return SettleResult(rid, True, tuple(spends))

        return body

    def _release_op(self, rid: str, now: float) -> Callable[[sqlite3.Connection], bool]:
        def body(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT body FROM reservations WHERE id = ?", (rid,)).fetchone()
            if not row:
                return False
            self._drop_reservation(c, rid, row[0], now)
            return True

        return body

    def _registered(self, c: sqlite3.Connection, scope: str | None, scope_id: str | None,
                    now: float) -> list[Limit]:
        if scope is not None and scope_id is not None:
            p = scope_prefix(scope, scope_id)
            rows = c.execute("SELECT spec FROM limits WHERE rk >= ? AND rk < ? AND expires_at >= ?",
                             (p, p + "~", now)).fetchall()
        else:
            rows = c.execute("SELECT spec FROM limits WHERE expires_at >= ?", (now,)).fetchall()
        out = [Limit.from_dict(json.loads(r[0])) for r in rows]
        return [x for x in out if scope is None or x.scope == scope]

    def _usage_op(self, scope: str | None, scope_id: str | None, limits: list[Limit] | None,
                  now: float) -> Callable[[sqlite3.Connection], list[UsageRow]]:
        def body(c: sqlite3.Connection) -> list[UsageRow]:
            lims = limits if limits is not None else self._registered(c, scope, scope_id, now)
            rows: list[UsageRow] = []
            for ref in plan(lims, now):
                rows.extend(usage_rows(ref, self._read(c, ref, now)))
            return rows

        return body

    def _reset_op(self, scope: str, scope_id: str, now: float) -> Callable[[sqlite3.Connection], None]:
        def body(c: sqlite3.Connection) -> None:
            p = scope_prefix(scope, scope_id)
            # Spent goes to zero; in-flight reservations stay held so their settle still balances.
            c.execute("UPDATE counters SET su = 0, st = 0, sc = 0 WHERE k >= ? AND k < ?", (p, p + "~"))
            m = alert_mark_prefix(scope, scope_id)
            c.execute("DELETE FROM marks WHERE k >= ? AND k < ?", (m, m + "~"))

        return body

    @staticmethod
    def _rate_check(c: sqlite3.Connection, ask: RateAsk,
                    now: float) -> tuple[Refusal | None, dict[str, float], dict[str, float]]:
        caps = {"requests": ask.rpm, "tokens": ask.tpm}
        needs = {"requests": 1.0, "tokens": float(ask.tokens)}
        levels: dict[str, float] = {}
        asked = {f"{ask.key_id}|{unit}": unit for unit, cap in caps.items() if cap is not None}
        marks = ",".join("?" * len(asked))
        rows = {r[0]: r for r in c.execute(f"SELECT k, level, at FROM rates WHERE k IN ({marks})", list(asked))}
        for k, unit in asked.items():
            row = rows.get(k)
            cap = caps[unit]
            assert cap is not None
            levels[unit] = ratelimit.refill(row[1] if row else None, row[2] if row else None, cap, now)
        refusal = ratelimit.check(ask.key_id, levels, {k: v for k, v in caps.items() if v is not None},
                                  needs, now)
        return refusal, levels, needs

    @staticmethod
    def _rate_take(c: sqlite3.Connection, ask: RateAsk, levels: dict[str, float], needs: dict[str, float],
                   now: float) -> None:
        c.executemany("INSERT INTO rates (k, level, at) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE "
                      "SET level = excluded.level, at = excluded.at",
                      [(f"{ask.key_id}|{unit}", levels[unit] - needs[unit], now) for unit in levels])

    def _rate_op(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int,
                 now: float) -> Callable[[sqlite3.Connection], Refusal | None]:
        ask = RateAsk(key_id, rpm, tpm, tokens)

        def body(c: sqlite3.Connection) -> Refusal | None:
            refusal, levels, needs = self._rate_check(c, ask, now)
            if refusal is None:
                self._rate_take(c, ask, levels, needs, now)
            return refusal

        return body

    @staticmethod
    def _claim(c: sqlite3.Connection, mark: str, ttl: float, now: float) -> bool:
        cur = c.execute("INSERT INTO marks (k, expires_at) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET "
                        "expires_at = excluded.expires_at WHERE marks.expires_at < ?", (mark, now + ttl, now))
        return cur.rowcount == 1

    # -- public async API -----------------------------------------------------------------------------
    async def reserve(self, request_id: str, limits: list[Limit], amount: Amount,
                      now: float | None = None, rate: RateAsk | None = None) -> Reservation | Refusal:
        now = time.time() if now is None else now
        if rate is not None and rate.rpm is None and rate.tpm is None:
            rate = None
        out = await self._run(self._reserve_op(request_id, plan(limits, now), amount.to_nano(), now,
                                               tuple(limits), amount, rate))
        if out == "settled":
            raise ValueError(f"request {request_id!r} was already settled")
        assert isinstance(out, Reservation | Refusal)
        return out

    async def settle(self, request_id: str, actual: Amount, limits: list[Limit] | None = None,
                     now: float | None = None) -> SettleResult:
        now = time.time() if now is None else now
        return await self._run(self._settle_op(request_id, actual.to_nano(), plan(limits or [], now), now))

    async def _release(self, request_id: str, now: float) -> bool:
        return await self._run(self._release_op(request_id, now))

    async def usage(self, scope: str | None = None, scope_id: str | None = None, *,
                    limits: list[Limit] | None = None, now: float | None = None) -> list[UsageRow]:
        now = time.time() if now is None else now
        return await self._run(self._usage_op(scope, scope_id, limits, now))

    async def reset(self, scope: str, scope_id: str, now: float | None = None) -> None:
        await self._run(self._reset_op(scope, scope_id, time.time() if now is None else now))

    async def rate_limit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int = 0,
                         now: float | None = None) -> Refusal | None:
        if rpm is None and tpm is None:
            return None
        return await self._run(self._rate_op(key_id, rpm, tpm, tokens, time.time() if now is None else now))

    async def claim_once(self, mark: str, ttl_seconds: float) -> bool:
        now = time.time()
        return await self._run(lambda c: self._claim(c, mark, ttl_seconds, now))

    async def remember(self, name: str, value: str, ttl_seconds: float) -> None:
        expires_at = time.time() + ttl_seconds
        await self._run(lambda c: c.execute("INSERT OR REPLACE INTO notes (k, v, expires_at) VALUES (?, ?, ?)",
                                            (name, value, expires_at)))

    async def recall(self, name: str) -> str | None:
        now = time.time()
        row = await self._run(lambda c: c.execute("SELECT v FROM notes WHERE k = ? AND expires_at >= ?",
                                                  (name, now)).fetchone())
        return str(row[0]) if row else None

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._worker.stop()  # what is queued still commits; then the connections close
