"""The telemetry filter on request contexts built directly (real aiohttp requests, in-memory span exporter):
the parts an agent run through the simulator does not reach — cost, fallbacks, refusals, screening, timeouts,
label folding, tool-state bounds, content shapes, the Prometheus text and the console tree."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otelgate.config import Settings
from otelgate.context import Attempt, Principal, RequestContext, ToolCall, ToolResult
from otelgate.providers import PROVIDERS, Route
from otelgate.telemetry import Telemetry
from otelgate.telemetry.console import render_trace_tree
from otelgate.telemetry.content import request_messages
from otelgate.telemetry.prometheus import metric_name
from otelgate.telemetry.tools import ToolTracker
from proxyutil import serving

ROUTE = Route("anthropic", "messages", "chat", "/v1/messages", "POST", True)
Scenario = Callable[[RequestContext], None]


@pytest.fixture(autouse=True)
def _no_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"):
        monkeypatch.delenv(name, raising=False)


class Harness:
    """A loopback aiohttp server whose handler runs the filter around a scenario that fills the context."""

    def __init__(self, tel: Telemetry) -> None:
        self.tel = tel
        self.scenario: Scenario = lambda ctx: None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        ctx = RequestContext(request=request, provider=PROVIDERS["anthropic"], route=ROUTE, request_id="r1")
        await self.tel.filter.request(ctx)
        self.scenario(ctx)
        await self.tel.filter.done(ctx)
        return web.json_response({"trace_headers": ctx.trace_headers})

    async def call(self, scenario: Scenario, headers: dict[str, str] | None = None) -> dict[str, Any]:
        self.scenario = scenario
        async with aiohttp.ClientSession() as session, session.post(self.url, headers=headers or {}) as response:
            return await response.json()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url.replace("/v1/messages", "/metrics")) as r:
            return await r.text()


@pytest.fixture
async def harness() -> AsyncIterator[tuple[Harness, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    settings = Settings(
        telemetry={"max_model_labels": 2, "log_requests": False},
        upstreams={"anthropic": {"base_url": "https://api.anthropic.com", "propagate_trace_context": True}},
    )
    tel = Telemetry.from_settings(settings, extra_span_exporter=exporter)
    h = Harness(tel)
    app = web.Application()
    app.router.add_post("/v1/messages", h.handle)
    app.router.add_get("/metrics", tel.metrics_handler)
    async with serving(web.AppRunner(app)) as url:
        h.url = url + "/v1/messages"
        yield h, exporter
    await tel.shutdown()


def base(ctx: RequestContext, model: str = "claude-x") -> None:
    ctx.model = ctx.served_model = model
    ctx.principal = Principal(key_id="team-a-bot", team="team-a", limits=None)  # type: ignore[arg-type]
    now = time.time_ns()
    ctx.attempts.append(
        Attempt(0, "https://api.example.com/v1/messages?key=s3cr3t", "api.example.com", 443, model, now)
    )
    ctx.attempts[-1].end_ns = now + 1000
    ctx.attempts[-1].status = 200
    ctx.status = 200


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


async def test_cost_fallback_screening_and_timeouts(harness) -> None:
    h, exporter = harness

    def scenario(ctx: RequestContext) -> None:
        base(ctx)
        first = ctx.attempts[0]
        first.status, first.error_type, first.retry_reason = None, "first_byte_timeout", "first_byte_timeout"
        ctx.attempts.append(
            Attempt(
                1,
                "https://other.example.com/v1/messages",
                "other.example.com",
                None,
                "claude-y",
                time.time_ns(),
                time.time_ns(),
                200,
            )
        )
        ctx.fallback, ctx.served_model = "claude-y", "claude-y"
        ctx.cost_usd, ctx.price_known = 0.0125, False
        ctx.verdicts.append(
            {
                "flagged": True,
                "rules": [{"id": "ignore-previous", "match": "SECRET TEXT"}],
                "location": "tool_result",
                "action": "flag",
            }
        )
        ctx.event("otelgate.screening.flagged", rule="ignore-previous", score=0.9, detail={"nested": 1})

    reply = await h.call(scenario, {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert reply["trace_headers"]["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    chat = spans["chat claude-x"]
    assert chat.attributes["otelgate.cost.usd"] == 0.0125 and chat.attributes["otelgate.price.known"] is False
    assert chat.attributes["otelgate.fallback"] == "claude-y" and chat.attributes["gen_ai.response.model"] == "claude-y"
    assert chat.attributes["otelgate.screening.flagged"] is True and chat.attributes["otelgate.team"] == "team-a"
    assert chat.attributes["server.address"] == "other.example.com"  # the upstream that answered
    event = chat.events[0]
    assert event.name == "otelgate.screening.flagged" and event.attributes["detail"] == "{'nested': 1}"
    # The propagated context is the chat span's.
    assert reply["trace_headers"]["traceparent"].split("-")[2] == f"{chat.context.span_id:016x}"
    attempt = next(s for s in exporter.get_finished_spans() if s.name == "POST" and s.kind.name == "CLIENT")
    assert attempt.attributes["url.full"] == "https://api.example.com/v1/messages"  # no query secrets
    assert attempt.attributes["error.type"] == "first_byte_timeout"

    text = await h.metrics()
    assert sample(text, "otelgate_cost_usd_total", otelgate_key="team-a-bot", otelgate_team="team-a") == 0.0125
    assert sample(text, "otelgate_fallbacks_total", gen_ai_request_model="claude-x", otelgate_fallback="claude-y") == 1
    assert sample(text, "otelgate_upstream_timeouts_total", kind="first_byte") == 1
    assert sample(text, "otelgate_upstream_retries_total", reason="first_byte_timeout") == 1
    detections = dict(rule="ignore-previous", location="tool_result", action="flag")
    assert sample(text, "otelgate_screening_detections_total", **detections) == 1
    assert "SECRET TEXT" not in text


async def test_refusal_is_an_error_with_its_reason(harness) -> None:
    h, exporter = harness

    def scenario(ctx: RequestContext) -> None:
        ctx.model = "claude-x"
        ctx.principal = Principal(key_id="team-a-bot", team=None, limits=None)  # type: ignore[arg-type]
        ctx.outcome, ctx.rejected_reason, ctx.status = "rejected", "budget", 429

    await h.call(scenario)
    chat = next(s for s in exporter.get_finished_spans() if s.name.startswith("chat"))
    assert chat.attributes["error.type"] == "budget" and chat.status.status_code.name == "ERROR"
    assert chat.attributes["otelgate.rejected.reason"] == "budget"
    server = next(s for s in exporter.get_finished_spans() if s.kind.name == "SERVER")
    assert server.attributes["http.response.status_code"] == 429 and server.status.status_code.name != "ERROR"
    text = await h.metrics()
    assert sample(text, "otelgate_requests_rejected_total", reason="budget", otelgate_key="team-a-bot") == 1
    assert sample(text, "gen_ai_client_operation_duration_seconds_count", error_type="budget") == 1


async def test_model_labels_fold_into_other(harness) -> None:
    h, _ = harness
    for model in ("m1", "m2", "m3", "m4"):
        await h.call(lambda ctx, m=model: base(ctx, m))
    text = await h.metrics()
    models = {
        line.split('gen_ai_request_model="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("gen_ai_client_operation_duration_seconds_count")
    }
    assert models == {"m1", "m2", "_OTHER"}


async def test_tool_error_and_unanswered(harness) -> None:
    h, exporter = harness

    def ask(ctx: RequestContext) -> None:
        base(ctx)
        ctx.session_id = "s1"
        ctx.result.tool_calls = [ToolCall("call_a", "run_tests"), ToolCall("call_b", "deploy")]

    def answer(ctx: RequestContext) -> None:
        base(ctx)
        ctx.session_id = "s1"
        ctx.tool_results = [ToolResult("call_a", is_error=True)]

    await h.call(ask)
    await h.call(answer)
    tool = next(s for s in exporter.get_finished_spans() if s.name == "execute_tool run_tests")
    assert tool.status.status_code.name == "ERROR" and tool.attributes["error.type"] == "tool_error"
    text = await h.metrics()
    assert sample(text, "otelgate_tool_calls_total", gen_ai_tool_name="run_tests", outcome="error") == 1


def test_tool_state_is_bounded_by_count_and_time() -> None:
    tracker = ToolTracker(max_conversations=2, ttl_s=1.0)
    t0 = 10**18
    tracker.expect("a", [ToolCall("1", "x")], t0, None)
    tracker.expect("b", [ToolCall("2", "y")], t0, None)
    evicted = tracker.expect("c", [ToolCall("3", "z")], t0, None)
    assert [c.name for c in evicted] == ["x"] and len(tracker) == 2
    evicted = tracker.expect("d", [ToolCall("4", "w")], t0 + 2 * 10**9, None)
    assert sorted(c.name for c in evicted) == ["y", "z"]
    assert tracker.resolve("d", [ToolResult("4")], t0 + 3 * 10**9 + 1) == []  # answered after the TTL


def test_openai_and_responses_shapes() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    }
    messages, system = request_messages(chat, "openai")
    assert system == [{"type": "text", "content": "be brief"}]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["parts"] == [{"type": "tool_call", "id": "c1", "name": "f", "arguments": "{}"}]
    assert messages[2]["parts"] == [{"type": "tool_call_response", "id": "c1", "response": "42"}]
    responses = {"instructions": "sys", "input": [{"type": "function_call_output", "call_id": "c2", "output": "ok"}]}
    messages, system = request_messages(responses, "openai")
    assert system[0]["content"] == "sys" and messages[0]["parts"][0]["id"] == "c2"


def test_prometheus_names_follow_the_collector_rules() -> None:
    assert metric_name("gen_ai.client.operation.duration", "s", False) == "gen_ai_client_operation_duration_seconds"
    assert metric_name("gen_ai.client.token.usage", "{token}", False) == "gen_ai_client_token_usage"
    assert metric_name("otelgate.cost.usd", "{USD}", True) == "otelgate_cost_usd_total"
    assert metric_name("otelgate.tool.duration", "s", False) == "otelgate_tool_duration_seconds"
    assert metric_name("otelgate.budget.utilization", "{ratio}", False) == "otelgate_budget_utilization"


async def test_console_tree_and_disabled_metrics(harness) -> None:
    h, exporter = harness
    await h.call(base)
    tree = render_trace_tree(exporter.get_finished_spans())
    lines = tree.splitlines()
    assert lines[0].startswith("trace ") and lines[1].startswith("POST /v1/messages")
    assert "└─ chat claude-x" in tree and "status=200" in tree
    off = Telemetry.from_settings(Settings(telemetry={"prometheus": False, "log_requests": False}))
    response = await off.metrics_handler(None)  # type: ignore[arg-type]
    assert response.status == 404
    await off.shutdown()
    assert json.dumps(off.health())
