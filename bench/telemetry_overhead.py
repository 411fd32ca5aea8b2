"""CPU cost of telemetry per request: the telemetry filter's request() + done() on a realistic streamed call.

    python bench/telemetry_overhead.py [--n 5000]

Measures time.process_time() (all threads: the batch exporter and access-log writer threads count too) for:
  off        the filter not in the chain (the loop and context only)
  metrics    telemetry on: spans created (no span exporter), metrics, access log line to /dev/null
  otlp       as `metrics` plus a BatchSpanProcessor feeding an exporter that discards (the OTLP path minus I/O)
  capture    as `otlp` with message content capture on
and prints µs per request. Numbers go in docs/telemetry.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence

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


def make_ctx(i: int) -> RequestContext:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-api-key": "k"}
    request = make_mocked_request("POST", "/v1/messages", headers=headers)
    ctx = RequestContext(request=request, provider=PROVIDERS["anthropic"], route=ROUTE, request_id=f"r{i}")
    ctx.json, ctx.model, ctx.served_model, ctx.stream, ctx.max_tokens = (
        BODY,
        "claude-sonnet-4-5",
        "claude-sonnet-4-5",
        True,
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
    result.first_chunk_ns, result.chunks = now + 300_000_000, 40
    result.output_text = ["Let me look at the file. " * 10]
    ctx.tool_results = [ToolResult(f"toolu_{i - 1}")] if i else []
    ctx.cost_usd, ctx.status = 0.0123, 200
    return ctx


async def run(tel: Telemetry | None, n: int) -> float:
    contexts = [make_ctx(i) for i in range(n)]
    warm = [make_ctx(i) for i in range(200)]
    if tel is not None:
        for ctx in warm:
            await tel.filter.request(ctx)
            await tel.filter.done(ctx)
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


def build(mode: str) -> Telemetry | None:
    if mode == "off":
        return None
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: ASYNC230 - the access log binds stdout at construction
    results = {}
    try:
        for mode in ("off", "metrics", "otlp", "capture"):
            tel = build(mode)
            results[mode] = await run(tel, args.n)
            if tel is not None:
                await tel.shutdown()
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    base = results["off"]
    for mode, micros in results.items():
        extra = micros - base
        print(
            f"{mode:8s} {micros:8.1f} µs/request  (telemetry: {extra:6.1f} µs = {extra / 300 * 100:5.1f} % of 0.3 ms)"
        )


if __name__ == "__main__":
    asyncio.run(main())
