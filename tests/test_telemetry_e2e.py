"""Telemetry end to end: the official SDK → otelgate → simulated upstream, exported over OTLP/HTTP to a real
receiver. One tool-using agent run with a retry and a streamed answer; every span, metric and log is checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anthropic
import pytest

from conftest import ANTHROPIC_TEST_KEY
from otlp_receiver import OtlpReceiver
from proxyutil import gateway

AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"
SESSION = "run-42"
QUESTION = "What is the weather in Paris today, in detail?"
ANSWER = "It is sunny and twenty-two degrees in Paris."
TOOL_OUTPUT = "sunny, 22C, wind 5 km/h"
TOOLS = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch):
    async with OtlpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "otelgate-test")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
        monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
        yield rx


async def agent_run(gw, sim) -> None:
    """Two turns of a tool-using agent: a retried call that asks for a tool, then a streamed final answer."""
    sim.script(
        [
            {"status": 529, "message": "overloaded"},
            {
                "tool_call": {"name": "get_weather", "input": {"city": "Paris"}, "id": "toolu_weather_1"},
                "usage": {"input_tokens": 50, "output_tokens": 12, "cache_read_input_tokens": 100},
            },
            {
                "text": ANSWER,
                "chunks": 5,
                "usage": {"input_tokens": 70, "output_tokens": 9, "cache_creation_input_tokens": 30},
            },
        ]
    )
    client = anthropic.AsyncAnthropic(
        base_url=gw.url,
        api_key=ANTHROPIC_TEST_KEY,
        max_retries=0,
        default_headers={"traceparent": TRACEPARENT, "x-otelgate-session": SESSION},
    )
    messages = [{"role": "user", "content": QUESTION}]
    first = await client.messages.create(model="claude-test", max_tokens=256, messages=messages, tools=TOOLS)
    call = next(b for b in first.content if b.type == "tool_use")
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": TOOL_OUTPUT}]},
    ]
    async with client.messages.stream(model="claude-test", max_tokens=256, messages=messages, tools=TOOLS) as s:
        text = "".join([piece async for piece in s.text_stream])
    assert text == ANSWER


async def test_agent_run_exports_the_whole_story(receiver: OtlpReceiver, sim, tmp_path: Path) -> None:
    config = {"budgets": {"store": f"sqlite:///{tmp_path}/b.db"}}
    async with gateway(config, sim) as gw:
        await agent_run(gw, sim)
        await asyncio.to_thread(gw.telemetry.force_flush)
        spans = await receiver.wait_for(lambda: len(receiver.spans()) >= 8 and receiver.spans())
        await receiver.wait_for(lambda: "gen_ai.client.operation.duration" in receiver.metrics())
        await receiver.wait_for(lambda: len(receiver.logs()) >= 2)

    by_kind = {}
    for span in spans:
        by_kind.setdefault((span.kind, span.name.split(" ")[0]), []).append(span)
    servers = sorted(by_kind[("SERVER", "POST")], key=lambda s: s.start_ns)
    chats = sorted(by_kind[("CLIENT", "chat")], key=lambda s: s.start_ns)
    attempts = sorted(by_kind[("CLIENT", "POST")], key=lambda s: s.start_ns)
    tools = by_kind[("INTERNAL", "execute_tool")]
    assert (len(servers), len(chats), len(attempts), len(tools)) == (2, 2, 3, 1)

    # Trace continuity: both calls continue the agent's trace under the agent's span.
    for server in servers:
        assert server.trace_id == AGENT_TRACE and server.parent_span_id == AGENT_SPAN
        assert server.attributes["http.request.method"] == "POST"
        assert server.attributes["url.path"] == "/v1/messages"
        assert server.attributes["http.response.status_code"] == 200
        assert server.resource["service.name"] == "otelgate-test"
        assert server.resource["deployment.environment.name"] == "test"
        assert server.resource["service.version"] and server.resource["service.instance.id"]
    for chat, server in zip(chats, servers, strict=True):
        assert chat.parent_span_id == server.span_id and chat.name == "chat claude-test"

    first, second = chats
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-test",
        "gen_ai.request.max_tokens": 256,
        "gen_ai.conversation.id": SESSION,
        "server.address": "127.0.0.1",
        "server.port": int(sim.url.rsplit(":", 1)[1]),
        "otelgate.screening.flagged": False,
        "otelgate.outcome": "ok",
    }
    for chat in chats:
        for name, value in common.items():
            assert chat.attributes[name] == value, name
        assert chat.attributes["gen_ai.response.id"].startswith("msg_")
        assert chat.attributes["gen_ai.response.model"]
        assert chat.attributes["otelgate.key"].startswith("sha256:")
        # "claude-test" has no list price: whether a cost was computed depends on the budget stage's pricing.
        assert isinstance(chat.attributes["otelgate.price.known"], bool)
        assert chat.status_code != 2 and "error.type" not in chat.attributes
    assert first.attributes["gen_ai.request.stream"] is False
    assert first.attributes["gen_ai.response.finish_reasons"] == ["tool_use"]
    assert first.attributes["gen_ai.usage.input_tokens"] == 150  # 50 + 100 cache read
    assert first.attributes["gen_ai.usage.cache_read.input_tokens"] == 100
    assert first.attributes["gen_ai.usage.output_tokens"] == 12
    assert first.attributes["otelgate.retries"] == 1
    assert "gen_ai.response.time_to_first_chunk" not in first.attributes
    assert second.attributes["gen_ai.request.stream"] is True
    assert second.attributes["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert second.attributes["gen_ai.usage.input_tokens"] == 100  # 70 + 30 cache creation
    assert second.attributes["gen_ai.usage.cache_creation.input_tokens"] == 30
    assert second.attributes["otelgate.retries"] == 0
    ttfc = second.attributes["gen_ai.response.time_to_first_chunk"]
    assert 0 < ttfc <= (second.end_ns - servers[1].start_ns) / 1e9

    # One HTTP span per upstream attempt, children of the chat span, with real times.
    retried, succeeded, streamed = attempts
    assert retried.parent_span_id == succeeded.parent_span_id == first.span_id
    assert streamed.parent_span_id == second.span_id
    assert retried.attributes["http.response.status_code"] == 529 and retried.attributes["error.type"] == "529"
    assert retried.status_code == 2 and "http.request.resend_count" not in retried.attributes
    assert retried.attributes["otelgate.retry.reason"]
    assert succeeded.attributes["http.request.resend_count"] == 1
    assert succeeded.attributes["http.response.status_code"] == 200
    assert retried.end_ns <= succeeded.start_ns
    for attempt in attempts:
        assert attempt.attributes["url.full"] == sim.url + "/v1/messages"
        assert attempt.attributes["http.request.method"] == "POST"
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert first.start_ns <= attempt.start_ns or attempt is streamed

    # The tool run: in the second request's trace, under its SERVER span, linked to the asking chat span,
    # from the end of the first response to the arrival of the second request.
    (tool,) = tools
    assert tool.name == "execute_tool get_weather"
    assert tool.parent_span_id == servers[1].span_id and tool.trace_id == AGENT_TRACE
    assert tool.links == [(AGENT_TRACE, first.span_id)]
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "get_weather"
    assert tool.attributes["gen_ai.tool.call.id"] == "toolu_weather_1"
    assert tool.attributes["gen_ai.conversation.id"] == SESSION
    assert tool.status_code != 2
    assert first.end_ns <= tool.start_ns <= tool.end_ns == servers[1].start_ns

    metrics = receiver.metrics()
    duration = metrics["gen_ai.client.operation.duration"]
    assert duration.unit == "s" and duration.type == "histogram"
    assert duration.points[0].bounds == DURATION_BUCKETS
    assert sum(p.count for p in duration.points) == 2
    point = duration.points[0]
    assert point.attributes["gen_ai.operation.name"] == "chat"
    assert point.attributes["gen_ai.provider.name"] == "anthropic"
    assert point.attributes["gen_ai.request.model"] == "claude-test"
    assert point.attributes["server.address"] == "127.0.0.1"
    exemplars = receiver.exemplars("gen_ai.client.operation.duration")
    # One exemplar per bucket is kept (both calls may share a bucket): each points at a chat span.
    assert exemplars and exemplars <= {(AGENT_TRACE, first.span_id), (AGENT_TRACE, second.span_id)}
    tokens = metrics["gen_ai.client.token.usage"]
    assert tokens.unit == "{token}" and tokens.points[0].bounds == TOKEN_BUCKETS
    totals = {p.attributes["gen_ai.token.type"]: p.sum for p in tokens.points}
    assert totals == {"input": 250, "output": 21}
    ttfc_metric = metrics["gen_ai.client.operation.time_to_first_chunk"]
    assert ttfc_metric.unit == "s" and ttfc_metric.points[0].count == 1
    assert ttfc_metric.points[0].bounds == DURATION_BUCKETS
    assert metrics["gen_ai.client.operation.time_per_output_chunk"].points[0].count == 1
    responses = {
        p.attributes["http.response.status_code"]: p.value for p in metrics["otelgate.upstream.responses"].points
    }
    assert responses == {529: 1, 200: 2}
    assert sum(p.value for p in metrics["otelgate.upstream.retries"].points) == 1
    tool_calls = metrics["otelgate.tool.calls"].points
    assert [(p.attributes["gen_ai.tool.name"], p.attributes["outcome"], p.value) for p in tool_calls] == [
        ("get_weather", "ok", 1)
    ]
    assert metrics["otelgate.tool.duration"].unit == "s"
    assert metrics["otelgate.sessions"].points[0].value == 1
    assert metrics["otelgate.session.calls"].points[0].sum == 3  # positions 1 and 2

    logs = receiver.logs()
    assert {(log.trace_id, log.span_id) for log in logs} == {
        (AGENT_TRACE, first.span_id),
        (AGENT_TRACE, second.span_id),
    }
    body = next(log.body for log in logs if log.span_id == first.span_id)
    assert body["model"] == "claude-test" and body["status"] == 200 and body["attempts"] == 2
    assert body["input_tokens"] == 150 and body["session_id"] == SESSION

    # Not one secret, and (capture off) not one piece of message content, in any exported byte.
    everything = b"".join(receiver.raw)
    for forbidden in (ANTHROPIC_TEST_KEY, ANTHROPIC_TEST_KEY[-12:], QUESTION, ANSWER, TOOL_OUTPUT, "Paris"):
        assert forbidden.encode() not in everything, forbidden


async def test_content_capture_is_opt_in_and_redacted(
    receiver: OtlpReceiver, sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    sim.script([{"text": "Noted.", "chunks": 2}])
    leaked = "sk-ant-api03-" + "x" * 40
    async with gateway({"budgets": {"store": f"sqlite:///{tmp_path}/b.db"}}, sim) as gw:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0)
        await client.messages.create(
            model="claude-test",
            max_tokens=32,
            system="You are terse.",
            messages=[{"role": "user", "content": f"remember my key {leaked} please"}],
        )
        await asyncio.to_thread(gw.telemetry.force_flush)
        spans = await receiver.wait_for(lambda: [s for s in receiver.spans() if s.name.startswith("chat")])
    import json

    chat = spans[0]
    messages = json.loads(chat.attributes["gen_ai.input.messages"])
    assert messages[0]["role"] == "user" and messages[0]["parts"][0]["type"] == "text"
    assert "remember my key" in messages[0]["parts"][0]["content"]
    assert json.loads(chat.attributes["gen_ai.system_instructions"]) == [{"type": "text", "content": "You are terse."}]
    output = json.loads(chat.attributes["gen_ai.output.messages"])
    assert output[0]["role"] == "assistant" and output[0]["finish_reason"] == "end_turn"
    everything = b"".join(receiver.raw)
    i = everything.find(leaked.encode())
    assert i < 0, everything[max(0, i - 300) : i + 100]
    assert ANTHROPIC_TEST_KEY.encode() not in everything
