"""One suite for every ledger store (SQLite file, real redis-server), plus the crash, multi-process and
store-outage behaviour. Instants are passed explicitly where a window boundary matters."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from otelgate.budgets import (
    Amount,
    Ledger,
    Limit,
    Refusal,
    Reservation,
    ResilientLedger,
    SqliteLedger,
    StoreUnavailable,
    Window,
    open_ledger,
)
from otelgate.budgets.redis import RedisLedger
from otelgate.budgets.resilient import JournalEntry
from redisutil import RedisServer, redis_factory_fixture, redis_fixture

redis_server = redis_fixture(scope="module")
redis_factory = redis_factory_fixture()

T0 = datetime(2026, 11, 26, 15, 30, tzinfo=UTC).timestamp()  # a fixed Thursday afternoon
DAY = Window.day()


def usd_limit(usd: float, scope: str = "key", sid: str = "team-a", window: Window = DAY) -> Limit:
    return Limit(scope, sid, window, usd=usd)


@pytest.fixture(params=["sqlite", "redis"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    if request.param == "sqlite":
        led: Ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    else:
        srv: RedisServer = request.getfixturevalue("redis_server")
        led = RedisLedger(srv.url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        yield led
    finally:
        await led.close()


async def spent(led: Ledger, limit: Limit, unit: str = "usd", now: float = T0) -> float:
    rows = [r for r in await led.usage(limits=[limit], now=now) if r.unit == unit]
    assert len(rows) == 1
    return rows[0].spent + rows[0].reserved


# -- the contract ---------------------------------------------------------------------------------------
async def test_reserve_settle_exactly_once(ledger: Ledger) -> None:
    lim = usd_limit(1.0)
    r = await ledger.reserve("r1", [lim], Amount(0.5, 1000, 1), now=T0)
    assert isinstance(r, Reservation)
    assert await spent(ledger, lim) == pytest.approx(0.5)  # held while in flight
    s1 = await ledger.settle("r1", Amount(0.2, 400, 1), now=T0 + 1)
    assert s1.applied and s1.spends[0].spent.usd == pytest.approx(0.2)
    s2 = await ledger.settle("r1", Amount(0.2, 400, 1), now=T0 + 2)
    assert not s2.applied
    assert await spent(ledger, lim) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        await ledger.reserve("r1", [lim], Amount(0.1), now=T0 + 3)


async def test_release_frees_and_settle_without_reservation_records(ledger: Ledger) -> None:
    lim = usd_limit(1.0)
    assert isinstance(await ledger.reserve("a", [lim], Amount(0.9), now=T0), Reservation)
    assert isinstance(await ledger.reserve("b", [lim], Amount(0.2), now=T0), Refusal)
    assert await ledger.release("a", now=T0)
    assert not await ledger.release("a", now=T0)
    assert await spent(ledger, lim) == 0
    # e.g. after a restart that lost the reservation: usage is still recorded, once
    res = await ledger.settle("lost", Amount(0.3, 10, 1), limits=[lim], now=T0)
    assert res.applied and await spent(ledger, lim) == pytest.approx(0.3)
    assert not (await ledger.settle("lost", Amount(0.3, 10, 1), limits=[lim], now=T0)).applied
    assert await spent(ledger, lim) == pytest.approx(0.3)


async def test_all_or_nothing_across_windows(ledger: Ledger) -> None:
    day, month = usd_limit(10.0), usd_limit(1.0, window=Window.month())
    team = Limit("team", "support", DAY, tokens=5000)
    out = await ledger.reserve("x", [day, team, month], Amount(2.0, 100, 1), now=T0)
    assert isinstance(out, Refusal) and out.window.kind == "month"
    for lim, unit in ((day, "usd"), (team, "tokens"), (month, "usd")):
        assert await spent(ledger, lim, unit) == 0  # nothing held anywhere
    assert isinstance(await ledger.reserve("y", [day, team, month], Amount(0.5, 100, 1), now=T0), Reservation)
    assert await spent(ledger, team, "tokens") == 100


async def test_refusal_names_limit_and_reset(ledger: Ledger) -> None:
    lim = usd_limit(10.0)
    await ledger.settle("s", Amount(9.5), limits=[lim], now=T0)
    out = await ledger.reserve("r", [lim], Amount(0.75), now=T0)
    assert isinstance(out, Refusal)
    assert (out.scope, out.scope_id, out.unit, out.limit) == ("key", "team-a", "usd", 10.0)
    assert out.spent == pytest.approx(9.5)
    assert out.reset_at == datetime(2026, 11, 27, tzinfo=UTC).timestamp()
    assert out.message() == "daily budget of $10.00 for key team-a reached; resets at 00:00 UTC"
    assert out.retry_after(now=T0) == 8 * 3600 + 30 * 60
    # a new day, a new budget
    assert isinstance(await ledger.reserve("r", [lim], Amount(0.75), now=out.reset_at), Reservation)


async def test_month_window_in_a_timezone(ledger: Ledger) -> None:
    w = Window.month(tz="Europe/Paris")
    lim = Limit("team", "support", w, tokens=1000)
    await ledger.settle("s", Amount(0, 1000, 1), limits=[lim], now=T0)
    out = await ledger.reserve("r", [lim], Amount(0, 1, 1), now=T0)
    assert isinstance(out, Refusal)
    assert out.message() == ("monthly budget of 1,000 tokens for team support reached; "
                             "resets at 00:00 Europe/Paris on 2026-12-01")
    # Paris is UTC+1 in December: the month starts at 23:00 UTC on Nov 30
    assert out.reset_at == datetime(2026, 11, 30, 23, tzinfo=UTC).timestamp()


async def test_session_calls_and_ttl(ledger: Ledger) -> None:
    lim = Limit("session", "abc", Window.session(ttl_seconds=3600), calls=2, usd=5.0)
    for i in range(2):
        assert isinstance(await ledger.reserve(f"c{i}", [lim], Amount(0.1, 10, 1), now=T0 + i), Reservation)
        await ledger.settle(f"c{i}", Amount(0.1, 10, 1), now=T0 + i)
    out = await ledger.reserve("c2", [lim], Amount(0.1, 10, 1), now=T0 + 10)
    assert isinstance(out, Refusal) and out.reset_at is None and out.retry_after() is None
    assert out.message() == "session limit of 2 calls for session abc reached"
    # an idle session past its TTL is a new session
    assert isinstance(await ledger.reserve("c3", [lim], Amount(0.1, 10, 1), now=T0 + 3602), Reservation)


async def test_global_message() -> None:
    r = Refusal("global", "*", DAY, "usd", 100.0, 100.0, 1.0, datetime(2026, 11, 27, tzinfo=UTC).timestamp())
    assert r.message() == "global daily budget of $100.00 reached; resets at 00:00 UTC"


async def test_rolling_window_ages_out(ledger: Ledger) -> None:
    w = Window.hours(1)
    assert w.bucket_seconds == 60
    lim = Limit("key", "k", w, usd=1.0)
    await ledger.settle("a", Amount(0.6), limits=[lim], now=T0)
    await ledger.settle("b", Amount(0.3), limits=[lim], now=T0 + 1200)
    out = await ledger.reserve("c", [lim], Amount(0.5), now=T0 + 1800)
    assert isinstance(out, Refusal) and out.spent == pytest.approx(0.9)
    # the first $0.60 ages out one hour (plus at most one bucket) after it was spent
    assert T0 + 3600 <= out.reset_at <= T0 + 3600 + 60
    assert out.message().startswith("1-hour budget of $1.00 for key k reached; frees up at")
    assert isinstance(await ledger.reserve("c", [lim], Amount(0.5), now=out.reset_at), Reservation)
    assert await spent(ledger, lim, now=out.reset_at) == pytest.approx(0.8)


async def test_crashed_reservation_expires(ledger: Ledger) -> None:
    lim = usd_limit(1.0)
    assert isinstance(await ledger.reserve("crashed", [lim], Amount(0.9), now=T0), Reservation)
    assert isinstance(await ledger.reserve("next", [lim], Amount(0.5), now=T0 + 60), Refusal)
    later = T0 + ledger.reservation_ttl + 1
    assert isinstance(await ledger.reserve("next", [lim], Amount(0.5), now=later), Reservation)
    assert await spent(ledger, lim, now=later) == pytest.approx(0.5)
    # the late settle of the crashed request still counts, at its own request id
    assert (await ledger.settle("crashed", Amount(0.1), limits=[lim], now=later)).applied
    assert await spent(ledger, lim, now=later) == pytest.approx(0.6)


async def test_usage_and_reset(ledger: Ledger) -> None:
    a = Limit("key", "a", DAY, usd=10.0, tokens=1000)
    b = Limit("key", "b", Window.hours(24), usd=5.0)
    await ledger.settle("1", Amount(1.25, 100, 1), limits=[a, b], now=T0)
    assert isinstance(await ledger.reserve("2", [a], Amount(0.5, 50, 1), now=T0), Reservation)
    rows = {(r.scope_id, r.window.kind, r.unit): r for r in await ledger.usage(now=T0)}
    assert set(rows) == {("a", "day", "usd"), ("a", "day", "tokens"), ("b", "hours", "usd")}
    r = rows[("a", "day", "usd")]
    assert (r.spent, r.reserved, r.limit, r.remaining) == pytest.approx((1.25, 0.5, 10.0, 8.25))
    assert [x.scope_id for x in await ledger.usage("key", "b", now=T0)] == ["b"]
    await ledger.reset("key", "a", now=T0)
    r = next(x for x in await ledger.usage("key", "a", now=T0) if x.unit == "usd")
    assert (r.spent, r.reserved) == pytest.approx((0.0, 0.5))  # the in-flight request still holds
    assert (await ledger.settle("2", Amount(0.5, 50, 1), now=T0)).applied
    assert await spent(ledger, a) == pytest.approx(0.5)


async def test_rate_limit_token_bucket(ledger: Ledger) -> None:
    assert await ledger.rate_limit("k", rpm=2, tpm=1000, tokens=100, now=T0) is None
    assert await ledger.rate_limit("k", rpm=2, tpm=1000, tokens=100, now=T0) is None
    out = await ledger.rate_limit("k", rpm=2, tpm=1000, tokens=100, now=T0)
    assert isinstance(out, Refusal) and out.unit == "requests" and out.reason == "rate_limit"
    assert out.reset_at == pytest.approx(T0 + 30)  # one request refills every 30 s at 2/min
    assert out.message(now=T0) == "rate limit of 2 requests per minute for key k reached; retry in 30 s"
    assert await ledger.rate_limit("k", rpm=2, tpm=1000, tokens=100, now=T0 + 30) is None
    out = await ledger.rate_limit("k", rpm=None, tpm=1000, tokens=950, now=T0 + 30)  # 900 left
    assert isinstance(out, Refusal) and out.unit == "tokens"
    assert await ledger.rate_limit("k", rpm=None, tpm=None, tokens=10**9) is None


async def test_claim_once(ledger: Ledger) -> None:
    results = await asyncio.gather(*(ledger.claim_once("alert|x", 60) for _ in range(20)))
    assert results.count(True) == 1


async def test_notes_are_shared_and_expire(ledger: Ledger, tmp_path: Path) -> None:
    """remember/recall: what one process notes (the session of a stored answer), another reads back, until the TTL."""
    await ledger.remember("response-session:resp_1", "run-a", 60)
    await ledger.remember("response-session:resp_2", "run-b", 0.001)
    await ledger.remember("response-session:resp_1", "run-c", 60)  # the last write wins
    if isinstance(ledger, SqliteLedger):  # a second process: its own connection to the same file
        other: Ledger = SqliteLedger(str(tmp_path / "ledger.db"))
    else:
        assert isinstance(ledger, RedisLedger)
        other = RedisLedger(ledger.url, prefix=ledger.prefix)
    try:
        assert await other.recall("response-session:resp_1") == "run-c"
        deadline = time.monotonic() + 5
        while await other.recall("response-session:resp_2") is not None:  # expired within milliseconds
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert await other.recall("response-session:never") is None
    finally:
        await other.close()


async def test_notes_never_wait_past_the_timeout_on_a_hung_store(redis_factory) -> None:  # type: ignore[no-untyped-def]
    srv = redis_factory()
    led = ResilientLedger(RedisLedger(srv.url), on_error="closed", timeout=0.25)
    try:
        await led.remember("n", "v", 60)
        assert await led.recall("n") == "v"
        srv.pause()
        t = time.monotonic()
        await led.remember("n", "w", 60)  # not kept, not raised: a note only helps other replicas
        assert await led.recall("n") is None  # unknown, as if never noted: the caller falls back
        assert time.monotonic() - t < 1.2
    finally:
        srv.resume()
        await led.close()


# -- the overspend bound under concurrency ----------------------------------------------------------------
async def race(led: Ledger, lim: Limit, n: int, reserve_usd: float, over: float, seed: int,
               tag: str) -> tuple[int, float]:
    """n concurrent requests; each settles a random actual, exceeding its reservation by up to ``over``.
    Returns (admitted, sum of excess over the reservations)."""
    rnd = random.Random(seed)

    async def one(i: int) -> tuple[bool, float]:
        rid = f"{tag}-{i}"
        r = await led.reserve(rid, [lim], Amount(reserve_usd, 100, 1))
        if isinstance(r, Refusal):
            return False, 0.0
        await asyncio.sleep(rnd.random() * 0.01)  # the upstream call
        actual = reserve_usd * rnd.uniform(0.2, 1.0 + over)
        await led.settle(rid, Amount(actual, 50, 1))
        return True, max(0.0, actual - reserve_usd)

    out = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(a for a, _ in out), sum(x for _, x in out)


@pytest.mark.parametrize("over", [0.0, 0.5])
async def test_last_dollar_race_tasks(ledger: Ledger, over: float) -> None:
    lim = usd_limit(10.0)
    await ledger.settle("pre", Amount(9.0), limits=[lim])  # one dollar left
    admitted, excess = await race(ledger, lim, 100, 0.05, over, 7, "t")
    total = await spent(ledger, lim, now=time.time())
    assert 20 <= admitted < 100
    # the documented bound: limit + what settled above its reservation
    assert total <= 10.0 + excess + 1e-9
    if over == 0.0:
        assert total <= 10.0 + 1e-9


WORKER = r"""
import asyncio, json, sys
sys.path[:0] = json.loads(sys.argv[3])
from test_ledger import race, usd_limit
from otelgate.budgets import open_ledger
async def main():
    led = open_ledger(sys.argv[1])
    try:
        print(json.dumps(await race(led, usd_limit(10.0), int(sys.argv[2]), 0.05, 0.0, hash(sys.argv[4]) % 999,
                                    sys.argv[4])))
    finally:
        await led.close()
asyncio.run(main())
"""


def run_workers(url: str, procs: int, per_proc: int) -> list[tuple[int, float]]:
    paths = json.dumps([str(Path(__file__).parent)])
    ps = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(per_proc), paths, f"p{i}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(procs)]
    out = []
    for p in ps:
        so, se = p.communicate(timeout=60)
        assert p.returncode == 0, se
        out.append(tuple(json.loads(so.strip().splitlines()[-1])))
    return out


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_last_dollar_race_processes(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if store == "sqlite":
        url, procs = f"sqlite:///{tmp_path}/shared.db", 4
    else:
        srv: RedisServer = request.getfixturevalue("redis_server")
        await RedisLedger(srv.url).close()
        url, procs = srv.url.replace("/0", "/1"), 2
    lim = usd_limit(10.0)
    led = open_ledger(url)
    try:
        await led.settle("pre", Amount(9.0), limits=[lim])
        results = await asyncio.to_thread(run_workers, url, procs, 100 // procs)
        total = await spent(led, lim, now=time.time())
    finally:
        await led.close()
    admitted = sum(a for a, _ in results)
    assert 20 <= admitted < 100
    assert total <= 10.0 + 1e-9


# -- durability -------------------------------------------------------------------------------------------
KILLED = r"""
import asyncio, sys
from otelgate.budgets import Amount, Limit, SqliteLedger, Window
async def main():
    led = SqliteLedger(sys.argv[1])
    lim = Limit("key", "k", Window.day(), calls=10**9)
    i = 0
    while True:
        await led.settle(f"s{i}", Amount(0.001, 10, 1), limits=[lim])
        print(i, flush=True)  # acknowledged: the settle committed
        i += 1
asyncio.run(main())
"""


def run_and_kill(db: str) -> int:
    """Run the settling loop, SIGKILL it mid-stream; returns the last acknowledged settle."""
    p = subprocess.Popen([sys.executable, "-c", KILLED, db], stdout=subprocess.PIPE, text=True)
    acked = -1
    assert p.stdout is not None
    deadline = time.monotonic() + 30
    while acked < 200 and time.monotonic() < deadline:
        acked = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    for line in p.stdout.read().split():  # acks still in the pipe when the process died
        acked = int(line)
    return acked


async def test_sqlite_survives_kill_9(tmp_path: Path) -> None:
    db = str(tmp_path / "crash.db")
    acked = await asyncio.to_thread(run_and_kill, db)
    led = SqliteLedger(db)
    try:
        rows = await led.usage("key", "k")
        calls = rows[0].spent
        # every acknowledged settle is there; at most one more committed before its ack was printed
        assert acked + 1 <= calls <= acked + 2
        assert not (await led.settle(f"s{acked}", Amount(0.001, 10, 1))).applied
    finally:
        await led.close()


async def test_sqlite_survives_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    lim = usd_limit(1.0)
    led = SqliteLedger(db)
    await led.reserve("held", [lim], Amount(0.4), now=T0)
    await led.settle("done", Amount(0.3), limits=[lim], now=T0)
    await led.close()
    led = open_ledger(f"sqlite:///{db}")
    try:
        assert await spent(led, lim) == pytest.approx(0.7)
        assert (await led.settle("held", Amount(0.1), now=T0)).applied
        assert await spent(led, lim) == pytest.approx(0.4)
    finally:
        await led.close()


# -- store outages ----------------------------------------------------------------------------------------
async def eventually(fn, deadline_s: float = 10.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline_s
    while True:
        try:
            return await fn()
        except StoreUnavailable:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.05)


async def test_fail_open_journals_and_replays_once(redis_factory) -> None:  # type: ignore[no-untyped-def]
    srv = redis_factory()
    lim = Limit("key", "k", DAY, usd=1.0, tokens=10_000)
    led = ResilientLedger(RedisLedger(srv.url), on_error="open", timeout=0.25, probe_interval=0.05)
    try:
        assert isinstance(await led.reserve("a", [lim], Amount(0.1, 100, 1)), Reservation)
        await led.settle("a", Amount(0.1, 100, 1))
        srv.stop()
        for rid in ("b", "c"):
            r = await led.reserve(rid, [lim], Amount(0.2, 100, 1))
            assert isinstance(r, Reservation) and r.local
            await led.settle(rid, Amount(0.2, 100, 1))
        # limits still hold locally while the store is away
        assert isinstance(await led.reserve("d", [lim], Amount(0.9, 100, 1)), Refusal)
        assert led.degraded and set(led.journal) == {"b", "c"}
        srv.launch()  # same port, same append-only file
        assert await eventually(led.reconcile) == 2
        assert not led.degraded and not led.journal
        assert await spent(led.inner, lim, now=time.time()) == pytest.approx(0.5)
        # a replay that runs twice (e.g. the ack got lost) is still applied once
        led.journal["b"] = JournalEntry("b", Amount(0.2, 100, 1), (lim,), time.time())
        assert await led.reconcile() == 0
        assert await spent(led.inner, lim, now=time.time()) == pytest.approx(0.5)
    finally:
        await led.close()


async def test_fail_closed_is_bounded_by_timeout(redis_factory) -> None:  # type: ignore[no-untyped-def]
    srv = redis_factory()
    lim = usd_limit(5.0)
    led = ResilientLedger(RedisLedger(srv.url), on_error="closed", timeout=0.25, probe_interval=0.05)
    try:
        assert isinstance(await led.reserve("a", [lim], Amount(0.1)), Reservation)
        srv.pause()  # a hung store: connections open, no answers
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await led.reserve("b", [lim], Amount(0.1))
        assert time.monotonic() - t < 0.6
        t = time.monotonic()
        await led.settle("a", Amount(0.05))  # usage is never dropped: journaled for later
        assert time.monotonic() - t < 0.6 and "a" in led.journal
        srv.stop()  # and a dead one
        with pytest.raises(StoreUnavailable):
            await led.reserve("c", [lim], Amount(0.1))
        srv.launch()
        assert await eventually(led.reconcile) == 1
        assert isinstance(await led.reserve("c", [lim], Amount(0.1)), Reservation)
        assert await spent(led.inner, lim, now=time.time()) == pytest.approx(0.15)
    finally:
        await led.close()


# -- load is not an outage -----------------------------------------------------------------------------------
PROXY_LIMITS = [Limit("key", "k", DAY, usd=1e6), Limit("team", "t", Window.month(), usd=1e6),
                Limit("session", "s", Window.session(86400), calls=10**9)]


async def test_burst_on_sqlite_is_served_within_default_timeout(tmp_path: Path) -> None:
    led = ResilientLedger(SqliteLedger(str(tmp_path / "burst.db")), on_error="closed")  # timeout 0.25 s
    waits: list[float] = []

    async def one(i: int) -> bool:
        t = time.monotonic()
        try:
            r = await led.reserve(f"b{i}", PROXY_LIMITS, Amount(0.01, 500, 1))
        except StoreUnavailable:
            waits.append(time.monotonic() - t)
            return False
        assert isinstance(r, Reservation) and not r.local
        assert (await led.settle(f"b{i}", Amount(0.005, 300, 1))).applied
        return True

    try:
        t = time.monotonic()
        served = sum(await asyncio.gather(*(one(i) for i in range(200))))
        took = time.monotonic() - t
        # Group commit serves the whole burst well inside the bound (all 200 in ~0.1 s on free cores). When
        # other work starves this 2-core machine, requests may wait past 0.25 s (seen: 128 served in 0.36 s):
        # then each such request alone is refused, quickly, and the store stays up for the rest.
        assert served >= 100, (served, took)
        assert all(w < 0.25 + 0.2 for w in waits)
        assert not led.degraded and led.stats.outages == 0
        await led.reconcile()  # hand over any journaled settle and release refused reserves
        rows = {r.unit: r for r in await led.usage("session", "s", limits=PROXY_LIMITS[2:])}
        assert (rows["calls"].spent, rows["calls"].reserved) == (served, 0)
        commits, ops = led.inner.batch_stats  # type: ignore[attr-defined]
        assert commits < ops  # concurrent calls shared commits
    finally:
        await led.close()


async def test_congestion_sheds_one_request_and_keeps_the_store_up(tmp_path: Path) -> None:
    inner = SqliteLedger(str(tmp_path / "busy.db"))
    led = ResilientLedger(inner, on_error="closed", timeout=0.1, down_after=1)
    many = [Limit("key", f"k{i}", DAY, usd=1.0) for i in range(300)]
    took = []
    for _ in range(3):  # size a queue of real work worth > 15 timeouts (the fastest of 3: noise only slows)
        t = time.monotonic()
        await inner.usage(limits=many)
        took.append(time.monotonic() - t)
    n = max(2, int(1.5 / max(min(took), 1e-3)) + 1)
    try:
        busy = [asyncio.ensure_future(inner.usage(limits=many)) for _ in range(n)]
        await asyncio.sleep(0)  # the store's queue is now full of work it keeps answering
        t = time.monotonic()
        with pytest.raises(StoreUnavailable, match="busy"):
            await led.reserve("late", [usd_limit(1.0)], Amount(0.1))
        # Bounded by the timeout, not by the 1.5 s of queued work (generous: a starved loop runs late).
        assert time.monotonic() - t < 0.1 + 0.9
        # even with down_after=1 a shed request is not a stall: the store stays up for everyone else
        assert led.stats.shed == 1 and led.stats.stalls == 0 and not led.degraded
        await asyncio.gather(*busy)
        assert isinstance(await led.reserve("next", [usd_limit(1.0)], Amount(0.1)), Reservation)
        await led.reconcile()  # what the background hand-over does after a healthy call
        assert not led.orphans  # the shed reserve holds nothing
        assert await spent(inner, usd_limit(1.0), now=time.time()) == pytest.approx(0.1)
    finally:
        await led.close()


async def test_hung_sqlite_goes_down_after_stalls_and_comes_back(tmp_path: Path) -> None:
    import sqlite3

    db = str(tmp_path / "hung.db")
    led = ResilientLedger(SqliteLedger(db), on_error="closed", timeout=1.0, probe_interval=0.1)
    lim = usd_limit(1.0)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        assert isinstance(await led.reserve("ok", [lim], Amount(0.1)), Reservation)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the store answers nothing
        for i in range(3):
            with pytest.raises(StoreUnavailable):
                await led.reserve(f"s{i}", [lim], Amount(0.1))
            assert led.degraded == (i == 2)  # down only after down_after=3 stalls in a row
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await led.reserve("fast", [lim], Amount(0.1))
        assert time.monotonic() - t < 0.5  # down: refused without waiting out the 1 s timeout
        blocker.execute("COMMIT")
        assert await eventually(led.reconcile) == 0
        assert not led.degraded and not led.orphans
        assert isinstance(await led.reserve("after", [lim], Amount(0.1)), Reservation)
        # the refused reserves hold nothing: skipped while queued, or released on recovery
        assert await spent(led.inner, lim, now=time.time()) == pytest.approx(0.2)
    finally:
        blocker.close()
        await led.close()


# -- Redis under uvloop, and scripts the server forgot ---------------------------------------------------
def test_redis_ledger_under_uvloop_reloads_flushed_scripts(redis_server: RedisServer) -> None:
    """The proxy runs on uvloop (whose transports are not asyncio's classes), and a Redis restarted without
    persistence or `SCRIPT FLUSH`ed forgets the scripts: both must just work."""
    import uvloop

    async def main() -> None:
        led = RedisLedger(redis_server.url.replace("/0", "/2"), prefix=f"t{uuid.uuid4().hex[:8]}:")
        lim = usd_limit(1.0)
        try:
            assert isinstance(await led.reserve("u1", [lim], Amount(0.4, 10, 1)), Reservation)
            await led._r.script_flush()
            res = await led.settle("u1", Amount(0.3, 10, 1), [lim])
            assert res.applied and res.spends[0].spent.usd == pytest.approx(0.3)
            assert await led.rate_limit("k", 1, None) is None
            refusal = await led.rate_limit("k", 1, None)
            assert isinstance(refusal, Refusal)
            assert refusal.message().startswith("rate limit of 1 request per minute for key k")
            assert await spent(led, lim, now=time.time()) == pytest.approx(0.3)  # read back through redis-py
        finally:
            await led.close()

    uvloop.run(main())


# -- a rate limit folded into the reserve: one store call, all or nothing ---------------------------------
async def test_folded_rate_limit_is_all_or_nothing(ledger: Ledger) -> None:
    from otelgate.budgets import RateAsk

    lim = usd_limit(1.0)
    ask = RateAsk("k", rpm=3, tpm=None, tokens=10)
    assert isinstance(await ledger.reserve("f1", [lim], Amount(0.9, 10, 1), now=T0, rate=ask), Reservation)
    # the same request retried holds nothing twice and takes no second request from the bucket
    assert isinstance(await ledger.reserve("f1", [lim], Amount(0.9, 10, 1), now=T0, rate=ask), Reservation)
    over = await ledger.reserve("f2", [lim], Amount(0.5, 10, 1), now=T0, rate=ask)
    assert isinstance(over, Refusal) and over.reason != "rate_limit"  # the budget refused ...
    assert isinstance(await ledger.reserve("f3", [lim], Amount(0.05, 10, 1), now=T0, rate=ask), Reservation)
    assert isinstance(await ledger.reserve("f4", [lim], Amount(0.01, 10, 1), now=T0, rate=ask), Reservation)
    rate = await ledger.reserve("f5", [lim], Amount(0.01, 10, 1), now=T0, rate=ask)  # ... so f2 took no request
    assert isinstance(rate, Refusal) and rate.reason == "rate_limit"
    assert rate.message(now=T0).startswith("rate limit of 3 requests per minute for key k reached; retry in 20 s")
    assert await spent(ledger, lim) == pytest.approx(0.96)  # the rate-refused f5 holds nothing either
    # the buckets are the same ones rate_limit() uses
    assert isinstance(await ledger.rate_limit("k", 3, None, 0, now=T0), Refusal)
    assert await ledger.rate_limit("k", 3, None, 0, now=T0 + 20) is None


def test_hand_built_payload_is_the_generic_json() -> None:
    """The stores' reservation documents are built by hand for speed; they must say exactly what the generic
    encoder said (Lua's cjson and the settle read them back)."""
    from otelgate.budgets.counters import payload_json, plan

    limits = [Limit("key", 'we"ird\\id é', Window.day("Europe/Paris"), usd=10.0),
              Limit("team", "t", Window.month(tz="America/New_York"), usd=1000.0, tokens=50_000_000),
              Limit("global", "all", Window.hours(5), calls=7),
              Limit("session", "abc", Window.session(ttl_seconds=86400), calls=50, tokens=200_000, usd=5.0)]
    for now in (T0, T0 + 0.123456789, 1e9 + 1 / 3):
        refs = plan(limits, now)
        for amt in (None, (123456789, 42, 1)):
            generic: dict[str, object] = {"refs": [r.wire() for r in refs]}
            if amt is not None:
                generic["amt"] = list(amt)
            assert payload_json(refs, amt) == json.dumps(generic, separators=(",", ":"))


async def test_settle_after_midnight_charges_the_reservations_day(ledger: Ledger) -> None:
    """Usage goes to the windows of the reservation (the instant the request started), also when the settle's
    own windows differ (Redis then reads the reservation's references back instead of the caller's)."""
    lim = usd_limit(10.0)
    day_start = datetime(2026, 11, 26, tzinfo=UTC).timestamp()
    late = day_start + 86400 - 1
    assert isinstance(await ledger.reserve("mid", [lim], Amount(2.0, 10, 1), now=late), Reservation)
    res = await ledger.settle("mid", Amount(1.5, 10, 1), [lim], now=late + 31)
    assert res.applied and res.spends[0].window_start == day_start
    assert res.spends[0].spent.usd == pytest.approx(1.5) and res.spends[0].reserved.usd == 0
    assert await spent(ledger, lim, now=late) == pytest.approx(1.5)
    assert await spent(ledger, lim, now=late + 31) == 0
    # same day: the reservation's references are the caller's own
    assert isinstance(await ledger.reserve("day", [lim], Amount(2.0, 10, 1), now=late + 40), Reservation)
    res = await ledger.settle("day", Amount(0.5, 10, 1), [lim], now=late + 50)
    assert res.spends[0].window_start == day_start + 86400 and res.spends[0].spent.usd == pytest.approx(0.5)
