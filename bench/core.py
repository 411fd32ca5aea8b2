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
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "claude-bench", "max_tokens": 256, "messages": [{"role": "user", "content": "Say hello " * 20}]}
HEADERS = {"content-type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spawn(cmd: list[str], core: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    prefix = ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []
    return subprocess.Popen(prefix + cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wrk(url: str, body: dict, seconds: int, connections: int) -> tuple[float, int]:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in HEADERS.items())
    script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n{headers}')
    script.close()
    prefix = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    out = subprocess.run(
        [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(script.name)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed requests\n{out}")
    return total / seconds, total


async def paced_latency(url: str, body: dict, rate: float, seconds: float) -> tuple[float, float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        async def one() -> None:
            started = time.perf_counter()
            async with http.post(url, json=body, headers=HEADERS) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    latencies.sort()
    return statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99) - 1] * 1000


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
