"""Shared helpers for the benchmarks: ports, pinned processes, /proc readings over a process tree, wrk, a paced
latency client, a soak client, an OTLP/HTTP sink and a throwaway redis-server.

The OTLP sink runs as its own process so it shares the load generator's core, not the proxy's:

    python -m bench._util otlp-sink --port 4318
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
MODEL = "claude-bench"
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 256,
                        "messages": [{"role": "user", "content": "Say hello " * 20}]}
HEADERS = {"content-type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
_MARK = "@@REQUEST@@"


class Payloads:
    """Request bodies for one body shape. With ``unique`` every request's last message ends differently
    ("(request 17)"), as every turn of real traffic does: a gateway that caches per text (screening verdicts) then
    pays for each request as it would in production. The same bytes every time let such a cache answer for all."""

    def __init__(self, body: dict[str, Any], unique: bool) -> None:
        self.unique = unique
        self.fixed = json.dumps(body).encode()
        marked = json.dumps(_with_last_text(body, f" (request {_MARK})"))
        self.prefix, _, self.suffix = marked.partition(_MARK)
        self._numbers = itertools.count()

    def next(self) -> bytes:
        if not self.unique:
            return self.fixed
        return f"{self.prefix}{next(self._numbers)}{self.suffix}".encode()

    def wrk_lua(self) -> str:
        """The same bodies from wrk: a request() that counts (wrk's Lua makes them on the load generator's core)."""
        if not self.unique:
            return f"wrk.body = {json.dumps(self.fixed.decode())}\n"
        return (f"local prefix, suffix, n = {json.dumps(self.prefix)}, {json.dumps(self.suffix)}, 0\n"
                "request = function()\n  n = n + 1\n  return wrk.format(nil, nil, nil, prefix .. n .. suffix)\nend\n")


def _with_last_text(body: dict[str, Any], extra: str) -> dict[str, Any]:
    messages = [dict(m) for m in body["messages"]]
    last = messages[-1]
    if isinstance(last["content"], str):
        last["content"] += extra
    else:
        last["content"] = [*last["content"], {"type": "text", "text": extra.strip()}]
    return {**body, "messages": messages}


def agent_turn_body(rounds: int = 20, result_chars: int = 2500) -> dict[str, Any]:
    """A coding agent's turn as a gateway sees it mid-run: a long system prompt, five tools with JSON schemas and
    `rounds` tool calls already answered (each result a stretch of the Python reference manual), ~60 KB of JSON.
    Deterministic, so every target gets the same bytes."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    tools = [{"name": name, "description": f"{name.replace('_', ' ')} in the workspace",
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"},
                                                                "query": {"type": "string"}},
                               "required": ["path"]}}
             for name in ("read_file", "write_file", "list_dir", "search_code", "run_tests")]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing test in the parser module."}]
    for i in range(rounds):
        call_id = f"toolu_{i:04d}"
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Step {i}: let me look at the next file."},
            {"type": "tool_use", "id": call_id, "name": tools[i % 5]["name"], "input": {"path": f"src/m{i}.py"}}]})
        start = (i * 7919 * result_chars) % (len(text) - result_chars)
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call_id, "content": text[start:start + result_chars]}]})
    return {"model": MODEL, "max_tokens": 1024, "system": text[:8000], "tools": tools, "messages": messages}


# --- ports and processes ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


def pinned(cores: str | None) -> list[str]:
    """The taskset prefix for a core list such as "0" or "0-1"; none on a 1-core machine or without taskset."""
    if not cores or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", cores]


def spawn(cmd: list[str], cores: str | None, env: dict[str, str] | None = None, log: Path | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log or os.devnull, "ab") as out:  # the child keeps its own copy of the descriptor
        # A new session so the whole tree (workers included) can be stopped through the process group.
        return subprocess.Popen(pinned(cores) + cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=out,
                                cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group (a supervisor and its workers), SIGKILL what is left after the timeout."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(5)


# --- /proc over a process tree ---------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str]:
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(root: int) -> list[int]:
    """The root and every live descendant (multi-worker targets fork or spawn their workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime+stime of the tree, plus what its reaped children used (cutime+cstime)."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            f = _stat_fields(pid)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(root: int) -> float:
    """Current resident set of the tree (MiB; shared pages of forked workers count once per process)."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            total += _status_kb(pid, "VmRSS")
    return total / 1024


def peak_rss_mb(root: int) -> float:
    """Sum of each live process's high-water mark (VmHWM), MiB."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            total += _status_kb(pid, "VmHWM")
    return total / 1024


def open_fds(root: int) -> int:
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


# --- load ------------------------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    rps: float
    total: int
    errors: int
    output: str


def wrk(url: str, body: dict[str, Any], seconds: float, connections: int, headers: dict[str, str],
        cores: str | None, *, unique: bool = False) -> WrkResult:
    headers_lua = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\n{headers_lua}{Payloads(body, unique).wrk_lua()}')
    try:
        out = subprocess.run(
            [*pinned(cores), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             "--timeout", "10s", "-s", script.name, url],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    duration = re.search(r"requests in ([\d.]+)(m?s|m)", out)
    elapsed = float(seconds)
    if duration:
        value, unit = float(duration.group(1)), duration.group(2)
        elapsed = value / 1000 if unit == "ms" else value * 60 if unit == "m" else value
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return WrkResult(total / elapsed, total, errors, out)


@dataclass
class Paced:
    latencies_ms: list[float]
    ttft_ms: list[float]
    failures: int

    @staticmethod
    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return self.pct(self.latencies_ms, 0.99)

    @property
    def ttft_p50(self) -> float:
        return statistics.median(self.ttft_ms) if self.ttft_ms else float("nan")

    @property
    def ttft_p99(self) -> float:
        return self.pct(self.ttft_ms, 0.99)


FIRST_TOKEN = b"content_block_delta"


async def timed(http: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str], stream: bool,
                result: Paced) -> bool:
    """One request, its latency (and for a stream the time until the first content_block_delta) added to
    `result`; False, and counted as a failure, when it did not come back whole with a 200."""
    started = time.perf_counter()
    try:
        async with http.post(url, data=payload, headers=headers) as response:
            if response.status != 200:
                await response.read()
                result.failures += 1
                return False
            if stream:
                tail, first = b"", None
                async for chunk in response.content.iter_any():
                    if first is None:
                        tail = tail[-32:] + chunk  # the event name may straddle two chunks
                        if FIRST_TOKEN in tail:
                            first = time.perf_counter() - started
                if first is not None:
                    result.ttft_ms.append(first * 1000)
            else:
                await response.read()
    except aiohttp.ClientError:
        result.failures += 1
        return False
    result.latencies_ms.append((time.perf_counter() - started) * 1000)
    return True


async def paced(url: str, body: dict[str, Any], headers: dict[str, str], rate: float, seconds: float, *,
                unique: bool = False) -> Paced:
    """Requests started at a fixed rate (open loop, so latency is not hidden by back-pressure). For streams,
    time to first token is the time until the first content_block_delta event arrives."""
    result = Paced([], [], 0)
    stream = bool(body.get("stream"))
    payloads = Payloads(body, unique)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one() -> None:
            await timed(http, url, payloads.next(), headers, stream, result)

        tasks = []
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return result


async def interleaved(urls: dict[str, str], body: dict[str, Any], headers: dict[str, str], rounds: int,
                      gap: float, *, unique: bool = False) -> dict[str, Paced]:
    """Latency of several targets measured together: one request at a time, the targets in turn (the order rotated
    every round), `gap` seconds between requests. Whatever the machine does meanwhile — a busy neighbour, a core
    waking from sleep — falls on every target alike, and no request ever queues behind another, so the difference
    between two targets is their own cost per request. (Measured one target after another, each in its own
    window, the same targets' added latency moved by 2-3x between runs on this machine.)"""
    out = {name: Paced([], [], 0) for name in urls}
    stream = bool(body.get("stream"))
    payloads = Payloads(body, unique)
    names = list(urls)
    sessions = {name: aiohttp.ClientSession() for name in names}
    try:
        for n in range(rounds):
            for i in range(len(names)):
                name = names[(n + i) % len(names)]
                if await timed(sessions[name], urls[name], payloads.next(), headers, stream, out[name]):
                    await asyncio.sleep(gap)
    finally:
        for session in sessions.values():
            await session.close()
    return out


@dataclass
class Sample:
    requests: int
    rss_mb: float
    fds: int
    elapsed_s: float


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0


async def soak(url: str, headers: dict[str, str], pid: int, total: int, every: int, concurrency: int, *,
               unique: bool = False) -> Soak:
    """`total` requests (alternating non-streaming and streaming) from `concurrency` closed-loop clients; RSS and
    open fds of the target's process tree sampled every `every` completed requests."""
    out = Soak()
    bodies = [Payloads(BODY, unique), Payloads({**BODY, "stream": True}, unique)]
    issued = done = 0
    started = time.perf_counter()
    out.samples.append(Sample(0, rss_mb(pid), open_fds(pid), 0.0))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def worker() -> None:
            nonlocal issued, done
            while issued < total:
                n = issued
                issued += 1
                try:
                    async with http.post(url, data=bodies[n % 2].next(), headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            out.failures += 1
                except aiohttp.ClientError:
                    out.failures += 1
                done += 1
                if done % every == 0:
                    out.samples.append(Sample(done, rss_mb(pid), open_fds(pid), time.perf_counter() - started))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


# --- profiles --------------------------------------------------------------------------------------------------
def py_spy(pid: int, seconds: float, out: Path, cores: str | None) -> subprocess.Popen[bytes] | None:
    """Sample the target's process tree with py-spy (collapsed stacks) for `seconds`; None without py-spy."""
    binary = shutil.which("py-spy")
    if not binary:
        print("  (py-spy is not installed: pip install py-spy; no profile)", flush=True)
        return None
    return subprocess.Popen([*pinned(cores), binary, "record", "--pid", str(pid), "--subprocesses", "--duration",
                             str(max(1, round(seconds))), "--rate", "250", "--format", "raw", "--output", str(out),
                             # on-CPU Python only (the thread holding the GIL), without pausing the target
                             "--gil", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _module(frame: str) -> str:
    """Where a frame's code lives, coarsely: otelgate/<module or subpackage>, else the top-level package."""
    if frame.startswith("process "):  # py-spy's per-process root pseudo-frame
        return "(process)"
    found = re.search(r"\(([^():]*):\d+\)$", frame)
    path = found.group(1) if found else ""
    if path.startswith("otelgate/"):
        parts = path.split("/")
        return "/".join(parts[:3]) if parts[1] == "filters" else "/".join(parts[:2])
    return path.split("/")[0] or "?"


def summarise_profile(path: Path, top: int = 12) -> str:
    """From py-spy's collapsed stacks ("f1;f2;f3 count"): self time per function, and inclusive time per module
    (otelgate's own per filter or subpackage; libraries per package) — where the CPU goes, by feature."""
    own: dict[str, int] = {}
    modules: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r"\((?:[^()]*/site-packages/|[^()]*/proxy/|[^()]*/lib/python3[.\d]*/)", "(", f)
                  for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for module in {_module(f) for f in frames}:
            modules[module] = modules.get(module, 0) + count
    if not total:
        return "  (no samples)"
    lines = [f"  {total} on-CPU samples; self time:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("  inclusive, by module (a stack counts once per module in it):")
    skip = {"otelgate/__main__.py", "otelgate/cli.py", "otelgate/server.py", "threading.py", "<frozen runpy>",
            "(process)"}
    ranked = [(m, n) for m, n in sorted(modules.items(), key=lambda kv: -kv[1]) if m not in skip]
    lines += [f"    {100 * n / total:5.1f}%  {m}" for m, n in ranked[: top + 6]]
    return "\n".join(lines)


# --- an OTLP/HTTP sink and a redis-server ----------------------------------------------------------------------
def run_otlp_sink(port: int) -> None:
    """Answers 200 to every OTLP/HTTP export and counts them; GET /stats returns the counts as JSON (so the bench
    can tell that telemetry really went out)."""
    from aiohttp import web

    counts: dict[str, int] = {"traces": 0, "metrics": 0, "logs": 0, "bytes": 0}

    async def export(request: web.Request) -> web.Response:
        body = await request.read()
        counts[request.match_info["signal"]] += 1
        counts["bytes"] += len(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/{signal:traces|metrics|logs}", export)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class Redis:
    """A throwaway redis-server on a free loopback port, no persistence (the bench measures the proxy, not disk)."""

    def __init__(self, cores: str | None, log: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is needed: apt-get install redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="otelgate-bench-redis-")
        self.proc = spawn([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
                           "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"], cores, log=log)
        wait_port(self.port, proc=self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process appended to the yielded list is stopped on the way out, last started first."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._util")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sink = sub.add_parser("otlp-sink", help="an OTLP/HTTP receiver that answers 200 and counts exports")
    sink.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    if args.cmd == "otlp-sink":
        run_otlp_sink(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
