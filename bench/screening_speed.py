"""Screening latency: p50 / p99 of Screener.scan for 200 B, 4 KB and 32 KB messages.

    python bench/screening_speed.py [--iterations 2000]

Messages are stretches of the Python reference manual that ships with CPython (pydoc_data.topics: real English
prose with code, punctuation, numbers and a large vocabulary), each iteration at a different offset, so every
message is new text. Two columns per size:

* warm — the normal state of a running proxy: the classifier's per-token cache holds the words seen so far;
* cold — that cache is emptied before every scan (the first messages after a start, or text full of new words).

Wall time and CPU time (of this process) are both reported: on a shared machine the wall-clock p99 mostly
measures waiting for a core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pydoc_data.topics import topics

from otelgate.screening import Screener

CORPUS = "\n\n".join(topics[k] for k in sorted(topics))


def texts_of(size: int, count: int) -> list[str]:
    step = max(1, (len(CORPUS) - size) // count)
    return [CORPUS[i * step:i * step + size] for i in range(count)]


def measure(screener: Screener, size: int, iterations: int, cold: bool) -> tuple[float, float, float, float]:
    """(wall p50, wall p99, CPU p50, CPU p99) in ms. CPU time (this process only) is what the scan costs;
    wall time also counts waiting for a core, which on a shared machine is most of the p99."""
    texts = texts_of(size, iterations + 16)
    for t in texts[:16]:  # compiled patterns, first allocations
        screener.scan(t)
    clear = getattr(screener.model, "clear_cache", None)
    wall: list[float] = []
    cpu: list[float] = []
    for t in texts[16:]:
        if cold and clear is not None:
            clear()
        start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
        screener.scan(t)
        cpu.append((time.process_time_ns() - start_cpu) / 1e6)
        wall.append((time.perf_counter_ns() - start) / 1e6)
    wall.sort()
    cpu.sort()
    p99 = int(0.99 * (len(wall) - 1))
    return statistics.median(wall), wall[p99], statistics.median(cpu), cpu[p99]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args(argv)
    screener = Screener.from_packs(["builtin"])
    print(f"{len(screener.rules)} rules, model {'on' if screener.model else 'off'}, {args.iterations} iterations")
    print(f"{'size':>6} {'cache':>5}{'wall p50':>10}{'wall p99':>10}{'cpu p50':>10}{'cpu p99':>10}   (ms)")
    for size in (200, 4096, 32768):
        for cold in (False, True):
            n = max(200, args.iterations // 10) if cold else args.iterations
            w50, w99, c50, c99 = measure(screener, size, n, cold)
            print(f"{size:>6} {'cold' if cold else 'warm':>5}{w50:>10.3f}{w99:>10.3f}{c50:>10.3f}{c99:>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
