"""Soak: N concurrent agents (the official Anthropic SDK) for minutes against a flaky simulated upstream, with
and without otelgate in between.

    python bench/soak.py [--agents 50] [--duration 40] [--error-rate 0.10] [--reset-rate 0.02] [--json out.json]

Three runs of `--duration` seconds each (default 40 s: about two minutes in all):
  direct, SDK max_retries=0   the agent alone against the upstream
  direct, SDK max_retries=2   the agent with its SDK's default retries
  otelgate, SDK max_retries=2 the same agent through otelgate (default retry policy)

Faults are drawn per *attempt*: every request carries `x-sim-sequence` with an independent random step per
attempt (529 with probability --error-rate, a connection reset mid-stream with --reset-rate, else a normal
answer) and a unique `x-sim-id`, so a retry meets fresh luck, as against a real flaky upstream. Half the calls
stream. The upstream (python -m otelgate.sim) and otelgate run in their own processes; otelgate's peak RSS,
open file descriptors and asyncio tasks are read from /proc and from the gateway process itself, before the load
and after it (a leak shows as a difference).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER = [{"role": "user", "content": "Summarise the plot of a long novel in a few sentences, please."}]
MODEL = "claude-soak-test"
SELF = os.path.abspath(__file__)
MARK = "soak-stats: "  # the gateway's own lines on stdout (request logs may share it)


# --- the gateway process (`soak.py --gateway CONFIG`): serves, and answers "stats" on stdin --------------------


async def _gateway_main(config_path: str) -> None:
    from aiohttp import web

    from otelgate.app import PIPELINE_KEY, create_app, make_telemetry, runner_for
    from otelgate.config import load_config
    from otelgate.health import STATE_KEY

    settings = load_config(config_path)
    app = create_app(settings, telemetry=make_telemetry(settings))
    runner = runner_for(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(MARK + json.dumps({"url": f"http://127.0.0.1:{port}"}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() != b"stats":
            continue
        upstream = app[STATE_KEY]["upstreams"]["anthropic"]
        stats = {
            "tasks": len(asyncio.all_tasks()),
            "task_kinds": dict(Counter(task.get_coro().__qualname__ for task in asyncio.all_tasks())),
            "inflight": app[PIPELINE_KEY].inflight,
            "upstream_inflight": upstream.inflight,
            "breakers": len(list(upstream.circuit_states())),
            **_proc_stats(os.getpid()),
        }
        print(MARK + json.dumps(stats), flush=True)
    await runner.cleanup()


def _proc_stats(pid: int) -> dict[str, Any]:
    status = Path(f"/proc/{pid}/status").read_text()
    values = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) // 1024  # MiB
    return {"rss_mib": values.get("VmRSS"), "peak_rss_mib": values.get("VmHWM"),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


# --- the load ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    latencies: list[float] = field(default_factory=list)  # successful calls
    failures: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def merge(self, other: Run) -> Run:
        failures = dict(self.failures)
        for key, count in other.failures.items():
            failures[key] = failures.get(key, 0) + count
        return Run(self.name, self.latencies + other.latencies, failures, self.calls + other.calls)

    def row(self) -> dict[str, Any]:
        ok = len(self.latencies)
        ordered = sorted(self.latencies)
        return {
            "run": self.name,
            "calls": self.calls,
            "success_rate": ok / self.calls if self.calls else 0.0,
            "p50_s": statistics.median(ordered) if ordered else None,
            "p99_s": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else None,
            "failures": dict(sorted(self.failures.items(), key=lambda kv: -kv[1])),
        }


def _steps(rng: random.Random, error_rate: float, reset_rate: float) -> list[dict[str, Any]]:
    steps = []
    for _ in range(8):  # more than any attempt count in play: every attempt draws its own luck
        draw = rng.random()
        if draw < error_rate:
            steps.append({"status": 529})
        elif draw < error_rate + reset_rate:
            steps.append({"fault": "reset_mid_stream"})
        else:
            steps.append({})
    return steps


async def _agent(client: Any, run: Run, until: float, rng: random.Random, args: argparse.Namespace) -> None:
    import anthropic
    import httpx2

    while time.monotonic() < until:
        headers = {"x-sim-sequence": json.dumps(_steps(rng, args.error_rate, args.reset_rate)),
                   "x-sim-id": uuid.uuid4().hex}
        started = time.perf_counter()
        run.calls += 1
        try:
            if rng.random() < 0.5:
                async with client.messages.stream(model=MODEL, max_tokens=200, messages=USER,
                                                  extra_headers=headers) as stream:
                    async for _ in stream.text_stream:
                        pass
                    await stream.get_final_message()
            else:
                await client.messages.create(model=MODEL, max_tokens=200, messages=USER, extra_headers=headers)
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            kind = type(exc).__name__
            status = getattr(exc, "status_code", None)
            key = f"{kind} {status}" if status else kind
            run.failures[key] = run.failures.get(key, 0) + 1
            continue
        run.latencies.append(time.perf_counter() - started)


async def _load(name: str, base_url: str, max_retries: int, args: argparse.Namespace, seed: int) -> Run:
    import anthropic

    run = Run(name)
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-soak", max_retries=max_retries,
                                      timeout=120.0)
    rng = random.Random(seed)
    until = time.monotonic() + args.duration
    await asyncio.gather(*(_agent(client, run, until, random.Random(rng.random()), args)
                           for _ in range(args.agents)))
    await client.close()
    return run


class Proc:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, mark: str = "") -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            while True:
                raw = await self.process.stdout.readline()
                if not raw:
                    raise RuntimeError("process ended early")
                text = raw.decode().strip()
                if text.startswith(mark):
                    return text[len(mark):]

    async def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stats\n")
        await self.process.stdin.drain()
        return json.loads(await self.line(MARK))

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


async def _start(*argv: str, cwd: str) -> Proc:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=cwd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return Proc(process)


async def _settle(gateway: Proc) -> dict[str, Any]:
    # After the load, wait for in-flight work to end (keep-alive connections may stay: that is not a leak).
    async with asyncio.timeout(30):
        while True:
            stats = await gateway.stats()
            if stats["inflight"] == 0 and stats["upstream_inflight"] == 0:
                # Settlement and connection teardown finish just after the last response: let them.
                await asyncio.sleep(1.0)
                return await gateway.stats()
            await asyncio.sleep(0.2)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        sim = await _start("-m", "otelgate.sim", "--port", "0", "--chunks", str(args.chunks),
                           "--latency-ms", str(args.latency_ms), cwd=tmp)
        gateway: Proc | None = None
        try:
            sim_url = await sim.line()
            config = Path(tmp) / "otelgate.yaml"
            config.write_text(json.dumps({
                "upstreams": {"anthropic": {"base_url": sim_url}, "openai": {"base_url": sim_url + "/v1"}},
                "budgets": {"store": f"sqlite:///{tmp}/otelgate.db"},
            }))
            gateway = await _start(SELF, "--gateway", str(config), cwd=tmp)
            gateway_url = json.loads(await gateway.line(MARK))["url"]

            print(f"{args.agents} agents, {args.duration:g}s per run, upstream: {args.error_rate:.0%} 529, "
                  f"{args.reset_rate:.0%} mid-stream resets per attempt", file=sys.stderr)
            runs = [await _load("direct, SDK max_retries=0", sim_url, 0, args, 1)]
            print(json.dumps(runs[-1].row()), file=sys.stderr)
            runs.append(await _load("direct, SDK max_retries=2", sim_url, 2, args, 2))
            print(json.dumps(runs[-1].row()), file=sys.stderr)
            await _load("warm-up", gateway_url, 2, argparse.Namespace(**{**vars(args), "duration": 3}), 0)
            before = await _settle(gateway)
            # Two halves: growth from the first to the second says leak; growth only in the first is warm-up.
            half = argparse.Namespace(**{**vars(args), "duration": args.duration / 2})
            first = await _load("otelgate, SDK max_retries=2", gateway_url, 2, half, 3)
            middle = await _settle(gateway)
            second = await _load("otelgate, SDK max_retries=2", gateway_url, 2, half, 4)
            runs.append(first.merge(second))
            print(json.dumps(runs[-1].row()), file=sys.stderr)
            after = await _settle(gateway)
        finally:
            if gateway is not None:
                await gateway.stop()
            await sim.stop()
    return {"agents": args.agents, "duration_s": args.duration, "error_rate": args.error_rate,
            "reset_rate": args.reset_rate, "runs": [run.row() for run in runs],
            "gateway_before": before, "gateway_middle": middle, "gateway_after": after}


def _report(result: dict[str, Any]) -> str:
    lines = ["| run | calls | success | p50 | p99 | failures seen by agents |", "|---|---|---|---|---|---|"]
    for row in result["runs"]:
        failures = ", ".join(f"{k}: {v}" for k, v in row["failures"].items()) or "none"
        p50 = f"{row['p50_s']:.2f}s" if row["p50_s"] is not None else "-"
        p99 = f"{row['p99_s']:.2f}s" if row["p99_s"] is not None else "-"
        lines.append(f"| {row['run']} | {row['calls']} | {row['success_rate']:.2%} | {p50} | {p99} | {failures} |")
    snaps = [result["gateway_before"], result["gateway_middle"], result["gateway_after"]]
    lines += ["", "| otelgate process | before load | after half the load | after all of it |", "|---|---|---|---|"]
    for label, key in (("RSS (MiB)", "rss_mib"), ("peak RSS (MiB)", "peak_rss_mib"),
                       ("open file descriptors", "fds"), ("asyncio tasks", "tasks"),
                       ("circuit breakers", "breakers")):
        lines.append(f"| {label} | " + " | ".join(str(snap[key]) for snap in snaps) + " |")
    return "\n".join(lines)


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--duration", type=float, default=40.0,
                        help="seconds per run (three runs; otelgate's in two halves)")
    parser.add_argument("--error-rate", type=float, default=0.10, help="share of attempts answered 529")
    parser.add_argument("--reset-rate", type=float, default=0.02, help="share of attempts reset mid-stream")
    parser.add_argument("--chunks", type=int, default=10, help="text deltas per streamed answer")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="upstream delay before headers")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    parser.add_argument("--gateway", metavar="CONFIG", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = _args()
    if arguments.gateway:
        asyncio.run(_gateway_main(arguments.gateway))
        raise SystemExit(0)
    outcome = asyncio.run(main(arguments))
    print(_report(outcome))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(outcome, indent=2))
