"""CPU cost of telemetry per request.

    python bench/telemetry_overhead.py [--n 5000]            # in process: the filter's request() + done()
    python bench/telemetry_overhead.py --e2e [--seconds 6]   # end to end: `otelgate serve` on a pinned core

In process, on a realistic call (usage, cost, a tool call asked, a session) streamed and not, measures
time.process_time() (all threads: the batch exporter and access-log writer threads count too) for:
  off        the filter not in the chain (the loop and context only)
  metrics    telemetry on: metrics, access log line to /dev/null, span ids (no span processor: no span objects)
  otlp       as `metrics` plus a BatchSpanProcessor feeding an exporter that discards: every span built and
             queued, the export thread's work counted (the OTLP path minus I/O)
  capture    as `otlp` with message content capture on
  otlp-http  (--mode) the real OTLP/HTTP exporters for traces and access records, otelgate's wire encoder, to a
             sink process (its CPU not counted); metrics OTLP off (one export a minute)
  otlp-sdk   (--mode) the same with the SDK's encoders and log pipeline (OTELGATE_OTLP_SDK_ENCODER=true)
and prints µs per request.

End to end (--e2e), like bench/core.py: the simulated upstream and wrk on core 1, `python -m otelgate serve` on
core 0 (no limits or budgets, SQLite store), its CPU per request from /proc over a wrk run, for telemetry off
(OTELGATE_TELEMETRY__ENABLED=false) and on (spans, metrics with /metrics, access log to /dev/null, no OTLP), and
on + OTLP/HTTP to a sink process on core 1. Uses bench/_util.py's process and /proc helpers.
Numbers go in docs/telemetry.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp.test_utils import make_mocked_request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otelgate.config import Settings
from otelgate.context import Attempt, Principal, RequestContext, ToolCall, ToolResult, Usage
from otelgate.providers import PROVIDERS, Route
from otelgate.telemetry import Telemetry
from otelgate.telemetry import setup as telemetry_setup

ROUTE = Route("anthropic", "messages", "chat", "/v1/messages", "POST", True)
BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": "You are a coding agent. " * 20,
    "messages": [
        {"role": "user", "content": "Fix the failing test in src/app.py " * 30},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x = 1\n" * 200}]},
    ],
}


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make_ctx(i: int, stream: bool = True) -> RequestContext:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-api-key": "k"}
    request = make_mocked_request("POST", "/v1/messages", headers=headers)
    ctx = RequestContext(request=request, provider=PROVIDERS["anthropic"], route=ROUTE, request_id=f"r{i}")
    ctx.json, ctx.model, ctx.served_model, ctx.stream, ctx.max_tokens = (
        BODY,
        "claude-sonnet-4-5",
        "claude-sonnet-4-5",
        stream,
        1024,
    )
    ctx.principal = Principal(key_id="support-bot", team="support", limits=None)  # type: ignore[arg-type]
    ctx.session_id, ctx.session_source = f"conv-{i % 50}", "hash"
    now = time.time_ns()
    ctx.attempts.append(
        Attempt(
            0, "https://api.anthropic.com/v1/messages", "api.anthropic.com", 443, ctx.model, now, now + 200_000_000, 200
        )
    )
    result = ctx.result
    result.status, result.response_id, result.response_model = 200, f"msg_{i}", "claude-sonnet-4-5-20250929"
    result.finish_reasons = ["tool_use"]
    result.tool_calls = [ToolCall(f"toolu_{i}", "read_file")]
    result.usage = Usage(1200, 180, 9000, 0, True)
    if stream:
        result.first_chunk_ns, result.chunks = now + 300_000_000, 40
    result.output_text = ["Let me look at the file. " * 10]
    ctx.tool_results = [ToolResult(f"toolu_{i - 1}")] if i else []
    ctx.cost_usd, ctx.status = 0.0123, 200
    return ctx


async def run(tel: Telemetry | None, n: int, stream: bool) -> float:
    contexts = [make_ctx(i, stream) for i in range(n)]
    warm = [make_ctx(i, stream) for i in range(200)]
    if tel is not None:
        for ctx in warm:
            await tel.filter.request(ctx)
            await tel.filter.done(ctx)
    # The mocked requests are cyclic garbage: collect (and freeze) them now, or a gen-2 collection over them lands in
    # a later timed loop (it inflated some modes 5x).
    gc.collect()
    gc.freeze()
    started = time.process_time()
    if tel is not None:
        f = tel.filter
        for ctx in contexts:
            await f.request(ctx)
            await f.done(ctx)
    else:
        for _ctx in contexts:
            await asyncio.sleep(0)
    if tel is not None:
        tel.force_flush()  # the export thread's work counts too
    return (time.process_time() - started) / n * 1e6


def build(mode: str, sink: str | None = None) -> Telemetry | None:
    if mode == "off":
        return None
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    telemetry_setup.USE_WIRE_ENCODER = mode != "otlp-sdk"
    if mode.startswith("otlp-"):  # the real OTLP/HTTP exporters (traces, logs; metrics every 60 s) to a sink
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink or ""
        # The loop here outruns any exporter: queues big enough that nothing is dropped (all work is counted).
        os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = os.environ["OTEL_BLRP_MAX_QUEUE_SIZE"] = "200000"
        # Metrics go out once a minute, not per call: left out so that one export at the flush is not spread over
        # the calls of a short run.
        os.environ["OTEL_METRICS_EXPORTER"] = "none"
    if mode == "capture":
        os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "true"
    else:
        os.environ.pop("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", None)
    tel = Telemetry.from_settings(Settings(), extra_span_exporter=None)
    if mode in ("otlp", "capture"):
        stats = tel.providers.stats
        processor = telemetry_setup.CountingBatchSpanProcessor(
            telemetry_setup.CountingSpanExporter(Discard(), stats), stats
        )
        tel.providers.tracer_provider.add_span_processor(processor)
        tel.providers.span_processors.append(processor)
    return tel


async def in_process(n: int, modes: Sequence[str]) -> None:
    sink_proc, sink = None, None
    if any(mode.startswith("otlp-") for mode in modes):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: ASYNC240 - once, before timing
        from bench import _util as u

        port = u.free_port()
        sink_proc = u.spawn([sys.executable, "-m", "bench._util", "otlp-sink", "--port", str(port)], None, cwd=u.ROOT)
        u.wait_port(port, proc=sink_proc)
        sink = f"http://127.0.0.1:{port}"
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: ASYNC230 - the access log binds stdout at construction
    results: dict[tuple[str, bool], float] = {}
    try:
        for stream in (False, True):
            for mode in modes:
                tel = build(mode, sink)
                results[mode, stream] = await run(tel, n, stream)
                if tel is not None:
                    await tel.shutdown()
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
        if sink_proc is not None:
            u.stop(sink_proc)
    for (mode, stream), micros in results.items():
        extra = micros - results["off", stream]
        label = "streaming" if stream else "non-streaming"
        print(f"{label:14s} {mode:8s} {micros:8.1f} µs/request  (telemetry: {extra:6.1f} µs)")


def e2e(seconds: float, connections: int, split: bool = False, only: Sequence[str] = ()) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import _util as u

    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    sim_port, sink_port = u.free_port(), u.free_port()
    procs = [
        u.spawn([sys.executable, "-m", "otelgate.sim", "--port", str(sim_port), "--chunks", "50", "--uvloop"], "1"),
        u.spawn([sys.executable, "-m", "bench._util", "otlp-sink", "--port", str(sink_port)], "1", cwd=u.ROOT),
    ]
    try:
        u.wait_port(sim_port, proc=procs[0])
        u.wait_port(sink_port, proc=procs[1])
        sim = f"http://127.0.0.1:{sim_port}"
        otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}", "OTEL_METRIC_EXPORT_INTERVAL": "5000"}
        targets = {
            "off": {"OTELGATE_TELEMETRY__ENABLED": "false"},
            "on (no OTLP)": {"OTELGATE_TELEMETRY__ENABLED": "true"},
            "on + OTLP": {"OTELGATE_TELEMETRY__ENABLED": "true", **otlp},
            "on + OTLP, SDK encoder": {
                "OTELGATE_TELEMETRY__ENABLED": "true",
                "OTELGATE_OTLP_SDK_ENCODER": "true",
                **otlp,
            },
        }
        if split:
            # One OTLP signal at a time: which exporter the cost comes from.
            for signal in ("traces", "metrics", "logs"):
                others = {f"OTEL_{o.upper()}_EXPORTER": "none" for o in ("traces", "metrics", "logs") if o != signal}
                targets[f"OTLP {signal} only"] = {"OTELGATE_TELEMETRY__ENABLED": "true", **otlp, **others}
        if only:
            targets = {name: env for name, env in targets.items() if name == "off" or name in only}
        rows: dict[tuple[str, str], float] = {}
        for name, extra_env in targets.items():
            port = u.free_port()
            env = {
                "OTELGATE_UPSTREAMS__ANTHROPIC__BASE_URL": sim,
                "OTELGATE_BUDGETS__STORE": "sqlite:///" + tempfile.mkdtemp() + "/bench.db",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "",
                **extra_env,
            }
            gw = u.spawn([sys.executable, "-m", "otelgate", "serve", "--port", str(port)], "0", env=env)
            try:
                u.wait_port(port, proc=gw)
                url = f"http://127.0.0.1:{port}/v1/messages"
                for label, body in (("non-streaming", u.BODY), ("streaming", {**u.BODY, "stream": True})):
                    u.wrk(url, body, 2, connections, u.HEADERS, "1")  # warm-up
                    before = u.cpu_seconds(gw.pid)
                    result = u.wrk(url, body, seconds, connections, u.HEADERS, "1")
                    if result.errors:
                        raise RuntimeError(f"{name} {label}: {result.errors} failed requests\n{result.output}")
                    rows[label, name] = (u.cpu_seconds(gw.pid) - before) * 1000 / result.total
                    print(
                        f"{label:14s} {name:14s} {result.rps:7.0f} req/s  cpu/req {rows[label, name]:.3f} ms",
                        flush=True,
                    )
            finally:
                u.stop(gw)
    finally:
        for proc in procs:
            u.stop(proc)
    print("\n| mode | telemetry | CPU ms/req | added by telemetry |")
    print("|---|---|---|---|")
    for (label, name), cpu in rows.items():
        added = cpu - rows[label, "off"]
        print(f"| {label} | {name} | {cpu:.3f} | {'-' if name == 'off' else f'{added * 1000:.0f} µs'} |")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--e2e", action="store_true", help="measure `otelgate serve` end to end instead")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--mode",
        action="append",
        choices=["off", "metrics", "otlp", "capture", "otlp-http", "otlp-sdk"],
        help="in process: modes to run (repeatable); otlp-http / otlp-sdk export traces and logs over OTLP/HTTP to "
        "a sink process with otelgate's encoder / the SDK's",
    )
    parser.add_argument("--split", action="store_true", help="--e2e: also OTLP with one signal at a time")
    parser.add_argument("--only", action="append", default=[], help="--e2e: only this target (and off); repeatable")
    args = parser.parse_args()
    if args.e2e:
        e2e(args.seconds, args.connections, args.split, args.only)
    else:
        await in_process(args.n, args.mode or ["off", "metrics", "otlp", "capture"])


if __name__ == "__main__":
    asyncio.run(main())
