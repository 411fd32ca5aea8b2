"""Instructions per request: each Python target run under callgrind, counted over N requests after a warm-up.

    apt-get install -y valgrind
    python -m bench.instructions                                  # forwarder, otelgate-bare/-min/-full-sqlite
    python -m bench.instructions --only forwarder,otelgate-full-redis --requests 1000

CPU time per request moves with whatever else the machine does (another process's cache traffic, frequency
changes): on this 2-core machine the same target measured 0.116 and 0.146 CPU-ms on one day. An instruction count
does not: the same code, input and environment give the same count to within a fraction of a percent, whatever
else runs, so a change's effect can be read off one pair of runs. It counts user-space instructions only (not
the kernel's socket work, which is the same for every proxy), of the whole process including its threads (the
SQLite ledger's, the OTLP exporters'), and weighs every instruction alike (a cache miss costs no more than an
add): use it to compare versions of the code, and CPU time (`python -m bench`) for what a request costs.

Requests go one at a time over one keep-alive connection, so nothing is batched (a SQLite settle per request,
not per event-loop turn as under load): with a store, the per-request count is the unbatched worst case.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._util import BODY, HEADERS, Payloads, Redis, free_port, spawn, stop, wait_port
from bench.peers.targets import TARGETS, Env

PYTHON_TARGETS = ["forwarder", "otelgate-bare", "otelgate-min", "otelgate-full-sqlite", "otelgate-full-redis"]
DEFAULT = "forwarder,otelgate-bare,otelgate-min,otelgate-full-sqlite"


def count(url: str, pid: int, body: dict[str, Any], unique: bool, warmup: int, requests: int, out_dir: Path) -> float:
    """Instructions per request of process `pid` (started under callgrind with instrumentation off)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    payloads = Payloads(body, unique)  # unique: a prompt no cache has seen (screening's verdict cache)

    def one() -> None:
        conn.request("POST", "/v1/messages", body=payloads.next(), headers=HEADERS)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")

    try:
        for _ in range(warmup):
            one()
        control = ["callgrind_control", "--instr=on", str(pid)]
        subprocess.run(control, check=True, capture_output=True)
        for _ in range(requests):
            one()
        for command in (["--instr=off"], ["--dump"]):
            subprocess.run(["callgrind_control", *command, str(pid)], check=True, capture_output=True)
    finally:
        conn.close()
    # The dump is written by the target itself, between two of its basic blocks: wait for the file's totals.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        totals = [_totals(p) for p in out_dir.glob(f"callgrind.{pid}.*")]
        if totals and None not in totals:
            return sum(t for t in totals if t) / requests
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def _totals(path: Path) -> int | None:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=DEFAULT, help=f"comma-separated, of: {', '.join(PYTHON_TARGETS)}")
    parser.add_argument("--requests", type=int, default=500, help="counted requests per target and mode")
    parser.add_argument("--warmup", type=int, default=300, help="requests before counting starts")
    parser.add_argument("--modes", default="non-streaming,streaming")
    parser.add_argument("--unique", action="store_true",
                        help="a different prompt each request (real traffic), not the same one (cache hits)")
    args = parser.parse_args(argv)
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed: apt-get install valgrind")
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(PYTHON_TARGETS))
    if unknown:
        sys.exit(f"not a Python target of this bench: {', '.join(unknown)}")
    workdir = Path(tempfile.mkdtemp(prefix="otelgate-instructions-"))
    wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/callgrind.%p")
    background: list[subprocess.Popen[bytes]] = []
    redis: Redis | None = None
    rows: list[tuple[str, str, float]] = []
    try:
        sim_port, sink_port = free_port(), free_port()
        background.append(spawn([sys.executable, "-m", "otelgate.sim", "--port", str(sim_port), "--uvloop"], None))
        background.append(spawn([sys.executable, "-m", "bench._util", "otlp-sink", "--port", str(sink_port)], None))
        wait_port(sim_port, proc=background[0])
        wait_port(sink_port, proc=background[1])
        if any("redis" in n for n in names):
            redis = Redis(None)
        env = Env(f"http://127.0.0.1:{sim_port}", None, None, workdir, f"http://127.0.0.1:{sink_port}", redis,
                  wrapper=wrapper, start_timeout=180.0)
        for mode in args.modes.split(","):
            body = {**BODY, "stream": mode == "streaming"}
            for name in names:
                running = TARGETS[name].start(env)
                assert running.proc is not None
                try:
                    per_request = count(running.url, running.proc.pid, body, args.unique, args.warmup,
                                        args.requests, workdir)
                finally:
                    stop(running.proc)
                rows.append((mode, name, per_request))
                print(f"{mode:14} {name:22} {per_request / 1000:9.1f} k instructions/request", flush=True)
    finally:
        if redis:
            redis.close()
        for proc in reversed(background):
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    prompt = "a different 220-character prompt each" if args.unique else "the same 200-character prompt every"
    print(f"\n{args.requests} requests per row after {args.warmup} warm-up, one at a time, {prompt} time\n")
    print("| mode | target | k instructions / request | × forwarder |\n|---|---|---|---|")
    for mode, name, value in rows:
        base = next((v for m, n, v in rows if m == mode and n == "forwarder"), None)
        ratio = f"{value / base:.2f}" if base else "-"
        print(f"| {mode} | {name} | {value / 1000:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
