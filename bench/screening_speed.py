"""Screening latency: p50 / p99 of Screener.scan for 200 B, 4 KB and 32 KB messages.

    python bench/screening_speed.py [--iterations 2000]

Messages are stretches of the Python reference manual that ships with CPython (pydoc_data.topics: real English
prose with code, punctuation, numbers and a large vocabulary), each iteration at a different offset, so every
message is new text. Two columns per size:

* warm — the normal state of a running proxy: the classifier's per-token cache holds the words seen so far;
* cold — that cache is emptied before every scan (the first messages after a start, or text full of new words).
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


def measure(screener: Screener, size: int, iterations: int, cold: bool) -> tuple[float, float]:
    texts = texts_of(size, iterations + 16)
    for t in texts[:16]:  # compiled patterns, first allocations
        screener.scan(t)
    cache = getattr(screener.model, "_cache", None)
    samples = []
    for t in texts[16:]:
        if cold and cache is not None:
            cache.clear()
        start = time.perf_counter_ns()
        screener.scan(t)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args(argv)
    screener = Screener.from_packs(["builtin"])
    print(f"{len(screener.rules)} rules, model {'on' if screener.model else 'off'}, {args.iterations} iterations")
    print(f"{'size':>8}{'warm p50':>10}{'warm p99':>10}{'cold p50':>10}{'cold p99':>10}   (ms)")
    for size in (200, 4096, 32768):
        warm = measure(screener, size, args.iterations, cold=False)
        cold = measure(screener, size, max(200, args.iterations // 10), cold=True)
        print(f"{size:>8}{warm[0]:>10.3f}{warm[1]:>10.3f}{cold[0]:>10.3f}{cold[1]:>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
