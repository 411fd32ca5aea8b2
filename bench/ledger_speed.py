"""Reserve + settle latency of the budget ledger, SQLite (file, WAL, one thread) and Redis (loopback).

    python bench/ledger_speed.py [--n 3000] [--rounds 1] [--stores sqlite,redis] [--redis-url URL] [--uvloop]

Without --redis-url a private redis-server is started on a free loopback port (tests/redisutil.py).
Each request reserves against three windows (key day USD, team month USD, session calls) like the
proxy does, then settles; latencies are measured one request at a time (no overlap) and printed as
p50/p99 per operation, then under 32 concurrent callers (each reserve then settle: p50/p99 of each
operation and of the pair, and throughput). For SQLite the mean group-commit batch is printed too.
With --rounds N each store is measured N times (fresh database each time) to show the machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from otelgate.budgets import Amount, Ledger, Limit, SqliteLedger, Window
from otelgate.budgets.counters import plan
from otelgate.budgets.redis import RedisLedger

LIMITS = [Limit("key", "bench", Window.day(), usd=1e9), Limit("team", "t", Window.month(), usd=1e9),
          Limit("session", "s", Window.session(86400), calls=10**9)]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def sequential(led: Ledger, n: int, tag: str) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {"reserve": [], "settle": []}
    for i in range(n):
        t = time.perf_counter()
        await led.reserve(f"{tag}{i}", LIMITS, Amount(0.01, 500, 1))
        t2 = time.perf_counter()
        await led.settle(f"{tag}{i}", Amount(0.005, 300, 1))
        t3 = time.perf_counter()
        res["reserve"].append(t2 - t)
        res["settle"].append(t3 - t2)
    return res


async def concurrent(led: Ledger, n: int, width: int = 32) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {"reserve": [], "settle": [], "pair": []}
    sem = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            await led.reserve(f"c{i}", LIMITS, Amount(0.01, 500, 1))
            t2 = time.perf_counter()
            await led.settle(f"c{i}", Amount(0.005, 300, 1))
            t3 = time.perf_counter()
            res["reserve"].append(t2 - t)
            res["settle"].append(t3 - t2)
            res["pair"].append(t3 - t)

    await asyncio.gather(*(one(i) for i in range(n)))
    return res


def line(name: str, what: str, xs: list[float], tail: str = "") -> None:
    print(f"{name:7} {what:18} p50 {pct(xs, 50):6.3f} ms  p99 {pct(xs, 99):6.3f} ms  "
          f"mean {statistics.mean(xs) * 1000:6.3f} ms{tail}")


async def measure(name: str, led: Ledger, n: int) -> None:
    await sequential(led, 200, "w")  # warm-up: connections, script cache, page cache
    seq = await sequential(led, n, "q")
    stats = getattr(led, "batch_stats", None)
    before = stats if stats is not None else (0, 0)
    t = time.perf_counter()
    con = await concurrent(led, n)
    wall = time.perf_counter() - t
    for op, xs in seq.items():
        line(name, f"1 caller {op}", xs)
    for op, xs in con.items():
        line(name, f"32 wide {op}", xs)
    tail = ""
    stats = getattr(led, "batch_stats", None)
    if stats is not None:
        commits, ops = stats[0] - before[0], stats[1] - before[1]
        tail = f"  mean batch {ops / max(commits, 1):.1f} operations per commit"
    print(f"{name:7} 32 wide            {n / wall:8.0f} req/s (reserve+settle){tail}")
    await led.close()


async def floor(path: str, n: int) -> None:
    """Where a single caller's SQLite time goes: the same reserve/settle work run inline (no thread), and an
    empty transaction's round trip event loop -> ledger thread -> event loop. Uses the ledger's internals."""
    led = SqliteLedger(path)
    await led.ping()
    c = led._connect()  # a second connection, used only here, inline
    work: dict[str, list[float]] = {"reserve": [], "settle": []}
    for i in range(200 + n):
        now = time.time()
        amt = Amount(0.01, 500, 1)
        ops = {"reserve": led._reserve_op(f"f{i}", plan(LIMITS, now), amt.to_nano(), now, tuple(LIMITS), amt),
               "settle": led._settle_op(f"f{i}", Amount(0.005, 300, 1).to_nano(), plan([], now), now)}
        for op, fn in ops.items():
            t = time.perf_counter()
            c.execute("BEGIN IMMEDIATE")
            fn(c)
            c.execute("COMMIT")
            if i >= 200:
                work[op].append(time.perf_counter() - t)
        if i % 200 == 0:
            c.execute("PRAGMA wal_checkpoint(PASSIVE)")  # outside the timed part, like the checkpointer
    c.close()
    hop: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        await led._worker.run(lambda c: None)
        hop.append(time.perf_counter() - t)
    for op, xs in work.items():
        line("sqlite", f"inline {op}", xs)
    line("sqlite", "thread round trip", hop, "  (an empty transaction)")
    await led.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--stores", default="sqlite,redis")
    ap.add_argument("--redis-url")
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--floor", action="store_true", help="also time SQLite's work inline and the thread hop")
    a = ap.parse_args()
    stores = a.stores.split(",")
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            if "sqlite" in stores:
                await measure("sqlite", SqliteLedger(f"{d}/bench{r}.db"), a.n)
                if a.floor:
                    await floor(f"{d}/floor{r}.db", a.n)
        if "redis" not in stores:
            return
        for r in range(a.rounds):
            if a.redis_url:
                await measure("redis", RedisLedger(a.redis_url, prefix=f"bench{r}:"), a.n)
                continue
            from redisutil import RedisServer

            with RedisServer.start(Path(d) / f"redis{r}", appendonly=False) as srv:
                await measure("redis", RedisLedger(srv.url, prefix="bench:"), a.n)


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main())
