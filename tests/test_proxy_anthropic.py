"""The official anthropic SDK through otelgate, against the simulated upstream."""

from __future__ import annotations

import json

import aiohttp
import anthropic
import pytest

from conftest import ANTHROPIC_TEST_KEY

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def client(gw, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0, **kw)


async def test_non_streaming_message(gw, sim):
    sim.script([{"text": "Paris.", "usage": {"input_tokens": 12, "output_tokens": 2}}])
    message = await client(gw).messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
    assert message.content[0].text == "Paris."
    assert message.usage.input_tokens == 12 and message.usage.output_tokens == 2
    assert message.stop_reason == "end_turn"
    assert sim.requests[-1].route == "/v1/messages"


async def test_streaming_text_with_stream_helper(gw, sim):
    sim.script([{"text": "The capital of France is Paris.", "chunks": 6}])
    async with client(gw).messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) >= 2, "the answer must arrive in several deltas, not buffered into one"
    assert "".join(pieces) == "The capital of France is Paris."
    assert final.usage.output_tokens > 0


async def test_streaming_tool_use_assembles_input(gw, sim):
    sim.script([{"tool_call": {"name": "get_weather", "input": {"city": "Paris", "unit": "celsius"}}}])
    tools = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}]
    async with client(gw).messages.stream(
        model="claude-test", max_tokens=64, messages=MESSAGES, tools=tools
    ) as stream:
        final = await stream.get_final_message()
    block = next(b for b in final.content if b.type == "tool_use")
    assert block.name == "get_weather"
    assert block.input == {"city": "Paris", "unit": "celsius"}
    assert final.stop_reason == "tool_use"


async def test_raw_stream_events_are_relayed_in_order(gw, sim):
    sim.script([{"text": "one two three", "chunks": 3}])
    stream = await client(gw).messages.create(model="claude-test", max_tokens=64, messages=MESSAGES, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_delta") == 3


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, anthropic.BadRequestError),
        (401, anthropic.AuthenticationError),
        (403, anthropic.PermissionDeniedError),
        (404, anthropic.NotFoundError),
        (429, anthropic.RateLimitError),
        (529, anthropic.OverloadedError),
    ],
)
async def test_upstream_errors_reach_the_sdk_unchanged(gw, sim, status, exception):
    sim.script([{"status": status, "message": f"upstream says {status}"}] * 4)
    c = client(gw)
    with pytest.raises(exception) as info:
        await c.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
    assert info.value.status_code == status
    assert f"upstream says {status}" in info.value.message


async def test_count_tokens_and_models(gw, sim):
    c = client(gw)
    count = await c.messages.count_tokens(model="claude-test", messages=MESSAGES)
    assert count.input_tokens > 0
    models = await c.models.list()
    assert [m.id for m in models.data]
    assert sim.requests[-1].route == "/v1/models"
    assert sim.requests[-2].route == "/v1/messages/count_tokens"


async def test_bearer_auth_is_forwarded_as_bearer_only(gw, sim):
    await client(gw).messages.create(model="claude-test", max_tokens=16, messages=MESSAGES)
    headers = sim.requests[-1].headers
    assert headers["authorization"] == f"Bearer {ANTHROPIC_TEST_KEY}"
    assert "x-api-key" not in headers


async def test_x_api_key_auth_is_forwarded_as_x_api_key_only(gw, sim):
    # Claude Code and older clients send x-api-key.
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gw.url + "/v1/messages",
            json={"model": "claude-test", "max_tokens": 16, "messages": MESSAGES},
            headers={"x-api-key": ANTHROPIC_TEST_KEY, "anthropic-version": "2023-06-01"},
        ) as response:
            assert response.status == 200
    headers = sim.requests[-1].headers
    assert headers["x-api-key"] == ANTHROPIC_TEST_KEY
    assert "authorization" not in headers


async def test_missing_key_is_401_in_anthropic_shape(gw, sim):
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gw.url + "/v1/messages",
            json={"model": "claude-test", "max_tokens": 16, "messages": MESSAGES},
            headers={"anthropic-version": "2023-06-01"},
        ) as response:
            body = await response.json()
    assert response.status == 401
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert not sim.requests, "nothing may be forwarded for an unauthenticated request"


async def test_headers_and_body_are_forwarded_unchanged(gw, sim):
    raw = b'{"model":"claude-test",  "max_tokens":16,"messages":[{"role":"user","content":"hi \\u00e9"}],"x_extra":1}'
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gw.url + "/v1/messages",
            data=raw,
            headers={
                "content-type": "application/json",
                "authorization": f"Bearer {ANTHROPIC_TEST_KEY}",
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "tools-2099-01-01",
                "x-stainless-lang": "python",
                "x-custom-header": "kept",
                "connection": "keep-alive, x-hop",
                "x-hop": "dropped",
                "x-otelgate-session": "run-1",
            },
        ) as response:
            assert response.status == 200
            assert response.headers.get("request-id"), "upstream response headers must reach the agent"
    received = sim.requests[-1]
    assert received.body == raw, "an unmodified request body must be forwarded byte for byte"
    for name, value in [
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "tools-2099-01-01"),
        ("x-stainless-lang", "python"),
        ("x-custom-header", "kept"),
    ]:
        assert received.headers.get(name) == value
    assert "x-hop" not in received.headers, "headers named in Connection are hop-by-hop"
    assert "x-otelgate-session" not in received.headers, "otelgate's own control headers stay at the gateway"


async def test_large_body_passes(gw, sim):
    paragraph = (
        "The quarterly report shows revenue grew by 12 percent, driven by strong demand in the European market. "
        "Operating costs remained stable while the team shipped three major releases. "
    )
    big = paragraph * (3 * 1024 * 1024 // len(paragraph) + 1)
    c = client(gw)
    message = await c.messages.create(
        model="claude-test", max_tokens=16, messages=[{"role": "user", "content": big}]
    )
    assert message.content
    assert len(sim.requests[-1].body) > 3 * 1024 * 1024


async def test_mid_stream_reset_surfaces_as_an_error(gw, sim):
    sim.script([{"text": "a b c d e f g h", "chunks": 8, "fault": "reset_mid_stream", "after_events": 4}])
    c = client(gw)
    with pytest.raises(anthropic.APIError):
        async with c.messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as stream:
            async for _ in stream.text_stream:
                pass


async def test_stream_error_event_is_well_formed(gw, sim):
    sim.script([{"text": "a b c d e f", "chunks": 6, "fault": "reset_mid_stream", "after_events": 3}])
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gw.url + "/v1/messages",
            json={"model": "claude-test", "max_tokens": 16, "messages": MESSAGES, "stream": True},
            headers={"authorization": f"Bearer {ANTHROPIC_TEST_KEY}", "anthropic-version": "2023-06-01"},
        ) as response:
            text = (await response.read()).decode()
    events = [block for block in text.split("\n\n") if block.strip()]
    last = events[-1].splitlines()
    assert last[0] == "event: error"
    payload = json.loads(last[1].removeprefix("data: "))
    assert payload["type"] == "error" and payload["error"]["type"] in ("api_error", "overloaded_error")
    assert "message_stop" not in text
