"""`otelgate demo`: no key, no network.

Starts the simulated upstream and the gateway on free loopback ports, runs a small tool-using agent through the
gateway with the official `anthropic` SDK (exactly as a real agent would: only its base URL changes), and shows
what the gateway saw: calls, retries, tokens, cost, a blocked injection, a session limit, and the trace.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from otelgate.app import create_app, make_telemetry, runner_for
from otelgate.config import Settings, key_hash
from otelgate.context import RequestContext
from otelgate.demo.agent import run_agent
from otelgate.demo.report import CallRecord, print_calls, print_header, print_trace
from otelgate.sim import SimUpstream

DEMO_KEY = "sk-ant-demo-not-a-real-key"
SMALL_KEY = "sk-ant-demo-small-budget-key"


class Recorder:
    """A filter that keeps what the gateway saw of each call, for the summary."""

    name = "demo-recorder"
    # An observer's `done` runs after every policy filter's, so cost and refusals are known by then.
    observer = True

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []

    async def request(self, ctx: RequestContext) -> None:
        return None

    async def done(self, ctx: RequestContext) -> None:
        if not ctx.route.generates:
            return
        self.calls.append(CallRecord.from_context(ctx))


def demo_settings(sim: SimUpstream, store: str) -> Settings:
    fast_retry = {"base_delay": 0.05, "max_delay": 0.2}
    return Settings(
        server={"port": 0},
        upstreams={
            "anthropic": {"base_url": sim.url, "retry": fast_retry},
            "openai": {"base_url": sim.openai_base_url, "retry": fast_retry},
        },
        keys=[
            {
                "id": "demo-agent",
                "key_sha256": key_hash(DEMO_KEY),
                "team": "demo",
                "limits": {"max_tokens_per_request": 1024, "session": {"max_calls": 4}},
                "budgets": [{"window": "day", "usd": 5.0}],
            },
            {
                "id": "demo-intern",
                "key_sha256": key_hash(SMALL_KEY),
                "team": "demo",
                "budgets": [{"window": "day", "usd": 0.02}],
            },
        ],
        teams=[{"id": "demo", "budgets": [{"window": "month", "usd": 100.0}]}],
        budgets={"store": store},
        screening={"mode": "block", "scan": ["user", "tool_result"]},
        # The demo prints its own summary; per-call JSON access lines would drown it.
        telemetry={"log_requests": False},
    )


@contextmanager
def running_gateway(settings: Settings, recorder: Recorder, span_exporter: Any) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        try:
            telemetry = make_telemetry(settings, extra_span_exporter=span_exporter) if span_exporter else None
        except TypeError:
            telemetry = make_telemetry(settings)
        state["telemetry"] = telemetry
        app = create_app(settings, telemetry=telemetry, extra_filters=[recorder])
        runner = runner_for(app, settings)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        state["url"] = f"http://127.0.0.1:{port}"
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield state["url"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def _span_exporter() -> Any:
    try:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:  # pragma: no cover
        return None
    return InMemorySpanExporter()


def run_demo() -> int:
    import logging
    import tempfile

    logging.getLogger().setLevel(logging.WARNING)  # SDK request logs would drown the summary
    # Budget-threshold alerts are shown in the summary's refusals; their log lines would interleave with it.
    logging.getLogger("otelgate.budget").setLevel(logging.ERROR)

    recorder = Recorder()
    exporter = _span_exporter()
    with tempfile.TemporaryDirectory() as tmp, SimUpstream.in_thread(chunks=4) as sim:
        settings = demo_settings(sim, f"sqlite:///{tmp}/demo.db")
        with running_gateway(settings, recorder, exporter) as url:
            print_header(url, sim.url)
            scenarios = [
                (
                    "1. A tool-using agent; the upstream is overloaded once (529) and otelgate retries",
                    "What's the weather in Paris and Tokyo?",
                    [
                        {"status": 529, "headers": {"retry-after-ms": "50"}},
                        {"tool_call": {"name": "get_weather", "input": {"city": "Paris"}}},
                        {"tool_call": {"name": "get_weather", "input": {"city": "Tokyo"}}},
                        {"text": "Paris is 18°C and sunny; Tokyo is 22°C with light rain.", "chunks": 6},
                    ],
                    "run-weather",
                ),
                (
                    "2. A web page fetched by a tool hides a prompt injection: otelgate blocks it",
                    "Summarise https://example.test/blog",
                    [{"tool_call": {"name": "fetch_url", "input": {"url": "https://example.test/blog"}}},
                     {"text": "(never reached)"}],
                    "run-injection",
                ),
                (
                    "3. A looping agent hits its session limit of 4 calls",
                    "Keep searching until you are sure.",
                    [{"tool_call": {"name": "search", "input": {"q": f"attempt {n}"}}} for n in range(8)],
                    "run-loop",
                ),
            ]
            for title, question, script, session in scenarios:
                sim.script(script)
                print(f"\n\033[1m{title}\033[0m\n  agent> {question}")
                outcome = run_agent(url, DEMO_KEY, question, session=session)
                print(f"  {outcome}")
                sim.reset()
            print("\n\033[1m4. Another key with a daily budget of $0.02 asks question after question\033[0m")
            for n in range(1, 9):
                sim.script([{"text": f"Answer number {n}.", "usage": {"input_tokens": 900, "output_tokens": 400}}])
                outcome = run_agent(url, SMALL_KEY, f"Question {n}?", session=f"run-budget-{n}")
                print(f"  agent> Question {n}?  {outcome}")
                if "refused" in outcome:
                    break
        print_calls(recorder.calls)
        if exporter is not None:
            # The first scenario's calls: a retried call, tool executions, a streamed answer.
            spans = exporter.get_finished_spans()
            first = [s for s in spans if dict(s.attributes or {}).get("gen_ai.conversation.id") == "run-weather"]
            traces = {s.context.trace_id for s in first}
            print_trace([s for s in spans if s.context.trace_id in traces] or spans)
    return 0
