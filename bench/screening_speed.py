"""Screening latency: p50 / p99 of Screener.scan for 200 B, 4 KB and 32 KB messages.

    python bench/screening_speed.py [--iterations 2000]

Messages are benign English prose with a little markup, numbers and an e-mail address — the common case the
proxy sees (a flagged message costs about the same). Each size is run with fresh text per iteration (a rotating
offset into a large corpus) so no cache makes it look faster than it is.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from otelgate.screening import Screener

_WORDS = (
    "the report shows revenue grew in the third quarter while costs fell please summarise the key points for "
    "the board and list any risks mentioned by the auditors include numbers where possible the customer asked "
    "about invoice 4411 sent to billing@example.com on 2024-03-01 and wants a refund of $120.50 before friday "
    "see table | region | sales | growth | and the attached notes about supply chain delays in europe"
).split()


def corpus(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_chars:
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 18))).capitalize() + ". "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def measure(screener: Screener, size: int, iterations: int) -> tuple[float, float]:
    big = corpus(size * 8 + 10_000, seed=size)
    texts = [big[(i * 97) % (len(big) - size):][:size] for i in range(64)]
    for t in texts[:16]:  # warm up caches of compiled patterns and the model
        screener.scan(t)
    samples = []
    for i in range(iterations):
        t = texts[i % len(texts)]
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
    print(f"{'size':>8}{'p50 ms':>10}{'p99 ms':>10}")
    for size in (200, 4096, 32768):
        p50, p99 = measure(screener, size, args.iterations)
        print(f"{size:>8}{p50:>10.3f}{p99:>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
