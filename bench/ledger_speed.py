"""Reserve + settle latency of the budget ledger, SQLite (file, WAL, one thread) and Redis (loopback).

    python bench/ledger_speed.py [--n 3000] [--redis-url redis://127.0.0.1:6379/0] [--uvloop]

Without --redis-url a private redis-server is started on a free loopback port (tests/redisutil.py).
Each request reserves against three windows (key day USD, team month USD, session calls) like the
proxy does, then settles; latencies are measured one request at a time (no overlap) and printed as
p50/p99 per operation, and the same under 32 concurrent requests.
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


async def concurrent(led: Ledger, n: int, width: int = 32) -> list[float]:
    lat: list[float] = []
    sem = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            await led.reserve(f"c{i}", LIMITS, Amount(0.01, 500, 1))
            await led.settle(f"c{i}", Amount(0.005, 300, 1))
            lat.append(time.perf_counter() - t)

    await asyncio.gather(*(one(i) for i in range(n)))
    return lat


async def measure(name: str, led: Ledger, n: int) -> None:
    await sequential(led, 200, "w")  # warm-up: connections, script cache, page cache
    seq = await sequential(led, n, "q")
    t = time.perf_counter()
    con = await concurrent(led, n)
    wall = time.perf_counter() - t
    for op, xs in seq.items():
        print(f"{name:7} {op:8} p50 {pct(xs, 50):6.3f} ms  p99 {pct(xs, 99):6.3f} ms  "
              f"mean {statistics.mean(xs) * 1000:6.3f} ms")
    print(f"{name:7} 32-wide  reserve+settle p50 {pct(con, 50):6.3f} ms  p99 {pct(con, 99):6.3f} ms  "
          f"{n / wall:8.0f} req/s")
    await led.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--redis-url")
    ap.add_argument("--uvloop", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        await measure("sqlite", SqliteLedger(f"{d}/bench.db"), a.n)
        if a.redis_url:
            await measure("redis", RedisLedger(a.redis_url, prefix="bench:"), a.n)
        else:
            from redisutil import RedisServer

            with RedisServer.start(Path(d) / "redis", appendonly=False) as srv:
                await measure("redis", RedisLedger(srv.url, prefix="bench:"), a.n)


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main())
