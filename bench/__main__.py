"""Side by side: otelgate against a bare forwarder, nginx and LiteLLM, in one run, same upstream, same load.

    python -m bench                                   # everything (several minutes), then a 10^5-request soak
    python -m bench --quick                           # every target, short runs, no soak
    python -m bench --only otelgate-min,forwarder --seconds 5
    python -m bench --list

Each target is started alone in front of one simulated upstream (`python -m otelgate.sim --uvloop --chunks 50`),
pinned to --proxy-cores; the upstream, wrk, the OTLP sink, redis-server and this process's own clients run on
--load-cores. Per target and mode (non-streaming, streaming): requests/s at saturation (wrk, --connections),
the target's CPU time per request (its whole process tree, from /proc), latency p50/p99 and time to first token
at a fixed moderate rate (an open-loop paced client, so queueing does not hide in it), peak RSS. Then every target
is started at once and latency is measured again with one request at a time, the targets in turn
(--together-rounds): the machine's noise falls on all alike, which makes these the latency ratios to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench._util import (
    BODY,
    HEADERS,
    ROOT,
    Redis,
    Soak,
    agent_turn_body,
    cpu_seconds,
    free_port,
    interleaved,
    paced,
    peak_rss_mb,
    pinned,
    py_spy,
    soak,
    spawn,
    stop,
    summarise_profile,
    wait_port,
    wrk,
)
from bench.peers.targets import TARGETS, Env, Running, describe, litellm_version

# Ratios of added latency are left out where the base adds less than this (ms): below it they measure noise.
ADDED_FLOOR = 0.25
MODES = {"non-streaming": BODY, "streaming": {**BODY, "stream": True}}


def modes(body: str) -> dict[str, dict[str, Any]]:
    """The request bodies per mode: the small prompt, or a ~60 KB agent turn (--body agent)."""
    if body == "agent":
        turn = agent_turn_body()
        return {"non-streaming": turn, "streaming": {**turn, "stream": True}}
    return MODES


@dataclass
class Row:
    mode: str
    target: str
    rps: float
    requests: int
    errors: int
    cpu_ms: float | None
    paced_rate: float
    p50: float
    p99: float
    ttft_p50: float | None
    ttft_p99: float | None
    paced_failures: int
    peak_rss_mb: float | None


@dataclass
class Together:
    """Latency of one target measured with all the others, in turn (see bench._util.interleaved)."""

    mode: str
    target: str
    requests: int
    p50: float
    p99: float
    ttft_p50: float | None
    ttft_p99: float | None
    failures: int


def measure_together(names: list[str], env: Env, args: argparse.Namespace, problems: list[str]) -> list[Together]:
    """Every target started at once (idle but for the one request in flight), then latency measured in turn."""
    running: dict[str, Running] = {}
    rows: list[Together] = []
    try:
        for name in names:
            try:
                running[name] = TARGETS[name].start(env)
                smoke(running[name].url)
            except Exception as exc:
                problems.append(f"{name} (latency together): {type(exc).__name__}: {exc}")
                print(f"  FAILED: {problems[-1]}", flush=True)
                running.pop(name, None)
        urls = {name: r.url + "/v1/messages" for name, r in running.items()}
        for mode, body in modes(args.body).items():
            asyncio.run(interleaved(urls, body, HEADERS, max(5, args.together_rounds // 10), args.together_gap,
                                    unique=args.unique))
            result = asyncio.run(interleaved(urls, body, HEADERS, args.together_rounds, args.together_gap,
                                             unique=args.unique))
            stream = bool(body.get("stream"))
            for name in urls:
                lat = result[name]
                rows.append(Together(mode, name, len(lat.latencies_ms), lat.p50, lat.p99,
                                     lat.ttft_p50 if stream else None, lat.ttft_p99 if stream else None,
                                     lat.failures))
            print(f"  {mode}: " + ", ".join(f"{r.target} p50 {r.p50:.2f}" for r in rows if r.mode == mode),
                  flush=True)
    finally:
        for r in running.values():
            if r.proc:
                stop(r.proc)
    return rows


def smoke(url: str) -> None:
    """One request of each mode must come back whole: a misconfigured target must not be benchmarked as fast."""
    for mode, body in MODES.items():
        request = urllib.request.Request(url + "/v1/messages", data=json.dumps(body).encode(), headers=HEADERS)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        expected = "message_stop" if body.get("stream") else '"usage"'
        if expected not in text:
            raise RuntimeError(f"{mode} answer from {url} lacks {expected}: {text[:300]}")


def measure(name: str, running: Running, args: argparse.Namespace) -> list[Row]:
    rows = []
    url = running.url + "/v1/messages"
    for mode, body in modes(args.body).items():
        wrk(url, body, args.warmup, args.connections, HEADERS, args.load_cores, unique=args.unique)
        before = cpu_seconds(running.pid) if running.pid else 0.0
        profile = args.profile / f"{name}-{mode}.txt" if args.profile and running.pid else None
        profiler = py_spy(running.pid, args.seconds, profile, args.load_cores) if profile and running.pid else None
        result = wrk(url, body, args.seconds, args.connections, HEADERS, args.load_cores, unique=args.unique)
        if profiler and profile:
            profiler.wait(60)
            if profile.exists():
                print(summarise_profile(profile), flush=True)
        cpu_ms = (cpu_seconds(running.pid) - before) * 1000 / max(1, result.total) if running.pid else None
        # A moderate rate for this target: the fixed --rate, or half its saturation if that is lower (at or past
        # saturation the latency is queueing, not the proxy's cost).
        rate = min(args.rate, max(1.0, result.rps / 2))
        lat = asyncio.run(paced(url, body, HEADERS, rate, args.paced_seconds, unique=args.unique))
        stream = bool(body.get("stream"))
        row = Row(mode, name, result.rps, result.total, result.errors, cpu_ms, rate, lat.p50, lat.p99,
                  lat.ttft_p50 if stream else None, lat.ttft_p99 if stream else None, lat.failures,
                  peak_rss_mb(running.pid) if running.pid else None)
        rows.append(row)
        cpu = "-" if cpu_ms is None else f"{cpu_ms:.3f}"
        ttft = f"  ttft p50 {row.ttft_p50:.2f} ms" if stream else ""
        errs = f"  ERRORS {result.errors} (wrk) {lat.failures} (paced)" if result.errors or lat.failures else ""
        print(f"  {mode:14} {result.rps:8.0f} req/s  cpu/req {cpu} ms  at {rate:.0f}/s p50 {lat.p50:.2f} ms  "
              f"p99 {lat.p99:.2f} ms{ttft}{errs}", flush=True)
    return rows


# --- report ----------------------------------------------------------------------------------------------------
def _ratio(value: float | None, base: float | None, floor: float = 0.0) -> str:
    """value / base; "-" when either is missing or the base is at most `floor` (a ratio to almost nothing is
    noise: added latencies of a few tenths of a millisecond are within run-to-run variation)."""
    if value is None or base is None or math.isnan(value) or math.isnan(base) or base <= max(floor, 0.0):
        return "-"
    return f"{value / base:.2f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _added(row: Any, direct: Any, attr: str) -> float | None:
    """What a target adds to going direct, for one figure (p50, p99, ttft_p50, ...); None when either lacks it."""
    if row is None or direct is None or getattr(row, attr) is None or getattr(direct, attr) is None:
        return None
    return float(getattr(row, attr) - getattr(direct, attr))


def report(rows: list[Row]) -> str:
    out = []
    out.append("Throughput and cost (wrk at saturation; CPU and RSS of the target's whole process tree):\n")
    out.append("| mode | target | req/s | × fwd | × LiteLLM | CPU ms/req | × fwd | × LiteLLM | peak RSS MB "
               "| × fwd | × LiteLLM | errors |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    by = {(r.mode, r.target): r for r in rows}
    for mode in MODES:
        fwd, llm = by.get((mode, "forwarder")), by.get((mode, "litellm"))
        for r in (r for r in rows if r.mode == mode):
            out.append(
                f"| {mode} | {r.target} | {r.rps:.0f} | {_ratio(r.rps, fwd and fwd.rps)} | "
                f"{_ratio(r.rps, llm and llm.rps)} | {_num(r.cpu_ms, 3)} | "
                f"{_ratio(r.cpu_ms, fwd and fwd.cpu_ms)} | {_ratio(r.cpu_ms, llm and llm.cpu_ms)} | "
                f"{_num(r.peak_rss_mb, 0)} | {_ratio(r.peak_rss_mb, fwd and fwd.peak_rss_mb)} | "
                f"{_ratio(r.peak_rss_mb, llm and llm.peak_rss_mb)} | {r.errors + r.paced_failures} |")
    out.append("\nLatency at a fixed rate (paced client; half the target's saturation if that is lower); added = "
               "minus the same percentile going direct:\n")
    out.append("| mode | target | rate/s | p50 ms | p99 ms | added p50 | × fwd | × LiteLLM | added p99 | TTFT p50 ms "
               "| added TTFT p50 | × fwd | × LiteLLM | added TTFT p99 |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in MODES:
        direct = by.get((mode, "direct"))
        fwd, llm = by.get((mode, "forwarder")), by.get((mode, "litellm"))

        def added(r: Row | None, attr: str, direct: Row | None = direct) -> float | None:
            return _added(r, direct, attr)

        for r in (r for r in rows if r.mode == mode):
            stream = r.ttft_p50 is not None
            out.append(
                f"| {mode} | {r.target} | {r.paced_rate:.0f} | {_num(r.p50)} | {_num(r.p99)} | "
                f"{_num(added(r, 'p50'))} | "
                f"{_ratio(added(r, 'p50'), added(fwd, 'p50'), ADDED_FLOOR)} | "
                f"{_ratio(added(r, 'p50'), added(llm, 'p50'), ADDED_FLOOR)} | "
                f"{_num(added(r, 'p99'))} | {_num(r.ttft_p50) if stream else '-'} | "
                f"{_num(added(r, 'ttft_p50'))} | {_ratio(added(r, 'ttft_p50'), added(fwd, 'ttft_p50'), ADDED_FLOOR)} | "
                f"{_ratio(added(r, 'ttft_p50'), added(llm, 'ttft_p50'), ADDED_FLOOR)} | {_num(added(r, 'ttft_p99'))} |")
    return "\n".join(out)


def together_report(rows: list[Together]) -> str:
    out = ["Latency with the targets measured together: one request at a time, the targets in turn, so the machine's "
           "noise falls on all alike; added = minus the same percentile going direct:\n",
           "| mode | target | requests | p50 ms | p99 ms | added p50 | × fwd | × LiteLLM | added p99 | × fwd | "
           "TTFT p50 ms | added TTFT p50 | × fwd | × LiteLLM | added TTFT p99 | × fwd |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r.mode, r.target): r for r in rows}
    for mode in MODES:
        base, fwd, llm = by.get((mode, "direct")), by.get((mode, "forwarder")), by.get((mode, "litellm"))

        def added(r: Together | None, attr: str, base: Together | None = base) -> float | None:
            return _added(r, base, attr)

        for r in (r for r in rows if r.mode == mode):
            stream = r.ttft_p50 is not None
            out.append(
                f"| {mode} | {r.target} | {r.requests} | {_num(r.p50)} | {_num(r.p99)} | {_num(added(r, 'p50'))} | "
                f"{_ratio(added(r, 'p50'), added(fwd, 'p50'), ADDED_FLOOR)} | "
                f"{_ratio(added(r, 'p50'), added(llm, 'p50'), ADDED_FLOOR)} | "
                f"{_num(added(r, 'p99'))} | {_ratio(added(r, 'p99'), added(fwd, 'p99'), ADDED_FLOOR)} | "
                f"{_num(r.ttft_p50) if stream else '-'} | {_num(added(r, 'ttft_p50'))} | "
                f"{_ratio(added(r, 'ttft_p50'), added(fwd, 'ttft_p50'), ADDED_FLOOR)} | "
                f"{_ratio(added(r, 'ttft_p50'), added(llm, 'ttft_p50'), ADDED_FLOOR)} | {_num(added(r, 'ttft_p99'))} | "
                f"{_ratio(added(r, 'ttft_p99'), added(fwd, 'ttft_p99'), ADDED_FLOOR)} |")
    return "\n".join(out)


def soak_report(target: str, result: Soak) -> str:
    out = [f"Soak: {target}, {result.samples[-1].requests} requests (alternating non-streaming / streaming), "
           f"{result.failures} failed; RSS and open fds of the process tree every "
           f"{result.samples[1].requests if len(result.samples) > 1 else 0} requests:\n",
           "| requests | elapsed s | RSS MB | open fds |", "|---|---|---|---|"]
    out += [f"| {s.requests} | {s.elapsed_s:.1f} | {s.rss_mb:.1f} | {s.fds} |" for s in result.samples]
    return "\n".join(out)


def _tool_version(cmd: list[str], pattern: str) -> str:
    if not shutil.which(cmd[0]):
        return "not installed"
    out = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(pattern, out.stdout + out.stderr)
    return found.group(1) if found else "?"


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    mem_gib = 0.0
    with contextlib.suppress(OSError):
        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    distro = platform.platform()
    with contextlib.suppress(OSError):
        distro = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()).group(1)  # type: ignore
    versions = {"otelgate": version("otelgate"), "aiohttp": version("aiohttp")}
    with contextlib.suppress(Exception):
        versions["uvloop"] = version("uvloop")
    return {
        "cpu": f"{os.cpu_count()} × {cpu}", "memory": f"{mem_gib:.0f} GiB", "os": distro,
        "python": platform.python_version(), **versions,
        "wrk": _tool_version(["wrk", "-v"], r"wrk (?:debian/)?([\d.]+)"),
        "nginx": _tool_version(["nginx", "-v"], r"nginx/([\d.]+)"),
        "redis": _tool_version(["redis-server", "--version"], r"v=([\d.]+)"),
        "litellm": litellm_version() or "not installed",
        "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip(),
    }


def cores(spec: str) -> set[int]:
    """A taskset-style list ("1", "0-1", "2,3") as a set of core numbers."""
    out: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


# --- main ------------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="targets:\n" + describe())
    parser.add_argument("--only", help="comma-separated targets (default: all); direct is always run")
    parser.add_argument("--skip", help="comma-separated targets to leave out")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--quick", action="store_true", help="short runs (3 s wrk, 2 s paced), no soak")
    parser.add_argument("--seconds", type=float, help="wrk duration per target and mode (default 10)")
    parser.add_argument("--warmup", type=float, help="wrk warm-up before each measurement (default 2)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, help="paced requests/s for latency (default 100)")
    parser.add_argument("--paced-seconds", type=float, help="paced latency duration (default 5)")
    parser.add_argument("--together-rounds", type=int,
                        help="latency with every target started at once, measured in turn: rounds per mode "
                        "(default 400; 0 = skip)")
    parser.add_argument("--together-gap", type=float, default=0.002, help="seconds between those requests")
    parser.add_argument("--chunks", type=int, default=50, help="text deltas per simulated stream")
    parser.add_argument("--body", choices=("small", "agent"), default="small",
                        help="request body: a short prompt (default) or a ~60 KB agent turn with tool history")
    parser.add_argument("--same-prompt", dest="unique", action="store_false",
                        help="send the very same body every time, as runs before 2026-11-26 13:00 did (otelgate's "
                             "screening cache then answers for every request); by default each request's last "
                             "message ends differently, like real traffic")
    parser.add_argument("--soak", type=int, help="requests in the RSS/fd soak (default 100000; 0 = none)")
    parser.add_argument("--soak-target", default="otelgate-full-redis")
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--proxy-cores", default="0", help="taskset cores for the target (default 0)")
    parser.add_argument("--load-cores", default="1", help="cores for upstream, wrk, sinks, clients (default 1)")
    parser.add_argument("--json", type=Path, help="write the rows, soak series and machine as JSON here")
    parser.add_argument("--profile", type=Path, help="py-spy the targets during the wrk runs, collapsed stacks "
                        "into this directory (skews the numbers: for diagnosis only)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, target logs)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (3 if quick else 10)
    args.warmup = args.warmup or (1 if quick else 2)
    args.rate = args.rate or (50 if quick else 100)
    args.paced_seconds = args.paced_seconds or (2 if quick else 5)
    args.soak = (0 if quick else 100_000) if args.soak is None else args.soak
    args.together_rounds = (60 if quick else 400) if args.together_rounds is None else args.together_rounds
    if args.soak_target not in TARGETS or args.soak_target == "direct":
        parser.error(f"--soak-target: one of {', '.join(n for n in TARGETS if n != 'direct')}")
    return args


def selected(args: argparse.Namespace) -> list[str]:
    names = list(TARGETS)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in TARGETS]
        if unknown:
            sys.exit(f"unknown target(s): {', '.join(unknown)}\n{describe()}")
        names = ["direct", *[n for n in names if n in wanted and n != "direct"]]
    if args.skip:
        names = [n for n in names if n not in args.skip.split(",") or n == "direct"]
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        print(describe())
        return 0
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    names = selected(args)
    if pinned(args.load_cores):
        # This process's own clients (paced latency, soak) belong with the load, not on the proxy's core.
        os.sched_setaffinity(0, cores(args.load_cores))
    info = machine()
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {command}\nmachine: {json.dumps(info)}\ntargets: {', '.join(names)}\n", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="otelgate-bench-"))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    together: list[Together] = []
    soak_result: Soak | None = None
    problems: list[str] = []
    background: list[Any] = []
    redis: Redis | None = None
    try:
        sim_port, sink_port = free_port(), free_port()
        sim = spawn([sys.executable, "-m", "otelgate.sim", "--port", str(sim_port), "--chunks", str(args.chunks),
                     "--uvloop"], args.load_cores, log=workdir / "sim.log")
        background.append(sim)
        sink = spawn([sys.executable, "-m", "bench._util", "otlp-sink", "--port", str(sink_port)], args.load_cores,
                     log=workdir / "sink.log", cwd=ROOT)
        background.append(sink)
        wait_port(sim_port, proc=sim)
        wait_port(sink_port, proc=sink)
        if any("redis" in n for n in names) or (args.soak and "redis" in args.soak_target):
            redis = Redis(args.load_cores, log=workdir / "redis.log")
        env = Env(f"http://127.0.0.1:{sim_port}", args.proxy_cores, args.load_cores, workdir,
                  f"http://127.0.0.1:{sink_port}", redis)
        for name in names:
            print(f"{name}: {TARGETS[name].about}", flush=True)
            running: Running | None = None
            try:
                running = TARGETS[name].start(env)
                smoke(running.url)
                rows += measure(name, running, args)
            except Exception as exc:  # one broken peer must not lose the others' numbers
                problems.append(f"{name}: {type(exc).__name__}: {exc}"
                                + (f" (log: {running.log})" if running and running.log else ""))
                print(f"  FAILED: {problems[-1]}", flush=True)
            finally:
                if running and running.proc:
                    stop(running.proc)
        if args.together_rounds and len(names) > 1:
            print(f"latency, all targets together: {args.together_rounds} rounds per mode ...", flush=True)
            together = measure_together(names, env, args, problems)
        if args.soak:
            print(f"soak: {args.soak} requests through {args.soak_target} ...", flush=True)
            running = None
            try:
                running = TARGETS[args.soak_target].start(env)
                smoke(running.url)
                assert running.pid is not None
                soak_result = asyncio.run(soak(running.url + "/v1/messages", HEADERS, running.pid, args.soak,
                                               max(1, args.soak // 20), args.soak_concurrency, unique=args.unique))
            except Exception as exc:
                problems.append(f"soak {args.soak_target}: {type(exc).__name__}: {exc}")
                print(f"  FAILED: {problems[-1]}", flush=True)
            finally:
                if running and running.proc:
                    stop(running.proc)
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"http://127.0.0.1:{sink_port}/stats", timeout=5) as response:
                print(f"\nOTLP sink received: {response.read().decode()}")
    finally:
        if redis:
            redis.close()
        for proc in reversed(background):
            stop(proc)
        if args.keep or problems:  # the targets' logs say why one failed
            print(f"work directory kept (configs, logs): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + report(rows))
    if together:
        print("\n" + together_report(together))
    if soak_result:
        print("\n" + soak_report(args.soak_target, soak_result))
    if problems:
        print("\nProblems:\n" + "\n".join(f"- {p}" for p in problems))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command, "machine": info, "rows": [asdict(r) for r in rows],
            "together": [asdict(r) for r in together],
            "soak": asdict(soak_result) if soak_result else None, "problems": problems,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
