"""Core proxy benchmark: direct to the simulated upstream, the bare aiohttp forwarder, and otelgate.

    python bench/core.py [--seconds 10] [--connections 32] [--chunks 50]

The upstream (otelgate.sim) and the load generator (wrk, Debian package) run on core 1, the proxy under test on
core 0, so the proxy's CPU time per request (read from /proc) is not muddied by the load it serves. Reports
requests/s at saturation, CPU-ms per request, and latency p50/p99 at a fixed moderate rate (a paced aiohttp
client), for non-streaming and streaming requests.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import BODY, HEADERS, ROOT, cpu_seconds, free_port, paced, peak_rss_mb, wait_port
from bench._util import spawn as _spawn
from bench._util import wrk as _wrk


def spawn(cmd: list[str], core: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return _spawn(cmd, str(core), env)


def wrk(url: str, body: dict[str, Any], seconds: int, connections: int) -> tuple[float, int]:
    result = _wrk(url, body, seconds, connections, HEADERS, "1")
    if result.errors:
        raise RuntimeError(f"{url}: {result.errors} failed requests\n{result.output}")
    return result.rps, result.total


async def paced_latency(url: str, body: dict[str, Any], rate: float, seconds: float) -> tuple[float, float]:
    result = await paced(url, body, HEADERS, rate, seconds)
    return result.p50, result.p99


rss_mb = peak_rss_mb


def _has_serve() -> bool:
    import otelgate.server

    return hasattr(otelgate.server, "serve")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    sim_port, fwd_port, gw_port = free_port(), free_port(), free_port()
    procs = [spawn([sys.executable, "-m", "otelgate.sim", "--port", str(sim_port), "--chunks", str(args.chunks),
                    "--uvloop"], core=1)]
    wait_port(sim_port)
    sim = f"http://127.0.0.1:{sim_port}"
    targets = {"direct": (None, sim)}
    forwarder = spawn([sys.executable, str(ROOT / "bench" / "forwarder.py"), "--upstream", sim, "--port",
                       str(fwd_port)], core=0)
    procs.append(forwarder)
    gw = spawn([sys.executable, "-m", "otelgate", "serve", "--port", str(gw_port)] if _has_serve() else
               [sys.executable, "-c", "import asyncio; from otelgate.server import serve_forever; from "
                "otelgate.config import load_config; asyncio.run(serve_forever(load_config(None)))"], core=0, env={
        "OTELGATE_SERVER__PORT": str(gw_port),
        "OTELGATE_UPSTREAMS__ANTHROPIC__BASE_URL": sim, "OTELGATE_TELEMETRY__ENABLED": "false",
        "OTELGATE_BUDGETS__STORE": "sqlite:///" + tempfile.mkdtemp() + "/bench.db",
    })
    procs.append(gw)
    targets["forwarder"] = (forwarder.pid, f"http://127.0.0.1:{fwd_port}")
    targets["otelgate (nothing on)"] = (gw.pid, f"http://127.0.0.1:{gw_port}")
    try:
        for port in (fwd_port, gw_port):
            wait_port(port)
        rows = []
        for mode, body in (("non-streaming", BODY), ("streaming", {**BODY, "stream": True})):
            for name, (pid, base) in targets.items():
                url = base + "/v1/messages"
                wrk(url, body, 2, args.connections)  # warm-up
                before = cpu_seconds(pid) if pid else 0.0
                rps, total = wrk(url, body, args.seconds, args.connections)
                cpu_ms = (cpu_seconds(pid) - before) * 1000 / total if pid else None
                p50, p99 = asyncio.run(paced_latency(url, body, args.rate, 5))
                rows.append((mode, name, rps, cpu_ms, p50, p99, rss_mb(pid) if pid else None))
                print(f"{mode:14} {name:24} {rps:8.0f} req/s  cpu/req "
                      f"{cpu_ms if cpu_ms is None else round(cpu_ms, 3)} ms  p50 {p50:.2f} ms  p99 {p99:.2f} ms",
                      flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    print("\n| mode | target | req/s | CPU ms/req | × forwarder CPU | p50 ms | p99 ms | added p50 | added p99 "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("non-streaming", "streaming"):
        direct = next(r for r in rows if r[0] == mode and r[1] == "direct")
        fwd = next(r for r in rows if r[0] == mode and r[1] == "forwarder")
        for row in (r for r in rows if r[0] == mode):
            ratio = f"{row[3] / fwd[3]:.2f}" if row[3] and fwd[3] else "-"
            cpu = f"{row[3]:.3f}" if row[3] else "-"
            rss = f"{row[6]:.0f}" if row[6] else "-"
            print(f"| {mode} | {row[1]} | {row[2]:.0f} | {cpu} | {ratio} | {row[4]:.2f} | {row[5]:.2f} | "
                  f"{row[4] - direct[4]:.2f} | {row[5] - direct[5]:.2f} | {rss} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
