"""The official openai SDK through otelgate: Chat Completions and Responses, streaming and not."""

from __future__ import annotations

import json

import openai
import pytest
from aiohttp import web

from conftest import OPENAI_TEST_KEY
from proxyutil import gateway, serving

MESSAGES = [{"role": "user", "content": "Say hello"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup", "description": "look up", "parameters": {"type": "object", "properties": {}}},
    }
]


def client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.openai_url, api_key=OPENAI_TEST_KEY, max_retries=0)


async def test_chat_completion(gw, sim):
    sim.script([{"text": "Hello!", "usage": {"input_tokens": 7, "output_tokens": 2}}])
    response = await client(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert response.choices[0].message.content == "Hello!"
    assert response.usage.prompt_tokens == 7 and response.usage.completion_tokens == 2
    assert sim.requests[-1].route == "/v1/chat/completions"
    assert sim.requests[-1].headers["authorization"] == f"Bearer {OPENAI_TEST_KEY}"


async def test_chat_stream_with_tool_calls_and_usage(gw, sim):
    sim.script([{"tool_call": {"name": "lookup", "input": {"q": "otel"}}}])
    stream = await client(gw).chat.completions.create(
        model="gpt-test", messages=MESSAGES, tools=TOOLS, stream=True, stream_options={"include_usage": True}
    )
    arguments, name, finish, usage = "", None, None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name = call.function.name or name
                arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "lookup" and json.loads(arguments) == {"q": "otel"}
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens > 0


async def test_chat_stream_text(gw, sim):
    sim.script([{"text": "one two three four", "chunks": 4}])
    stream = await client(gw).chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    parts = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(parts) == "one two three four" and len(parts) >= 2


async def test_responses_api(gw, sim):
    sim.script([{"text": "Hi from responses."}, {"text": "Streamed answer.", "chunks": 3}])
    c = client(gw)
    response = await c.responses.create(model="gpt-test", input="hello")
    assert response.output_text == "Hi from responses."
    stream = await c.responses.create(model="gpt-test", input="hello", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert sim.requests[-1].route == "/v1/responses"


async def test_models_list_is_openai_shaped_without_anthropic_version(gw, sim):
    models = await client(gw).models.list()
    assert [m.id async for m in models]
    assert sim.requests[-1].route == "/v1/models"


async def test_openai_prefix_route(gw, sim):
    c = openai.AsyncOpenAI(base_url=gw.url + "/openai/v1", api_key=OPENAI_TEST_KEY, max_retries=0)
    response = await c.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert response.choices[0].message.content
    assert sim.requests[-1].route == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("status", "exception"),
    [(400, openai.BadRequestError), (401, openai.AuthenticationError), (429, openai.RateLimitError)],
)
async def test_upstream_errors_reach_the_sdk_unchanged(gw, sim, status, exception):
    sim.script([{"status": status, "message": f"upstream says {status}"}] * 4)
    with pytest.raises(exception) as info:
        await client(gw).chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert info.value.status_code == status
    assert f"upstream says {status}" in info.value.message


async def test_mid_stream_reset_raises_in_the_sdk(gw, sim):
    sim.script([{"text": "a b c d e f g h", "chunks": 8, "fault": "reset_mid_stream", "after_events": 3}])
    stream = await client(gw).chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_an_upstream_that_refuses_stream_options_still_streams():
    """The gateway asks Chat streams for usage (stream_options.include_usage). An OpenAI-compatible server that
    does not know the field (older Azure API versions, some local servers) answers 400: the agent's own request is
    sent instead, and that upstream is not asked again."""
    seen: list[dict] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        if "stream_options" in body:
            return web.json_response({"error": {"message": "Unrecognized request argument supplied: stream_options",
                                                "type": "invalid_request_error", "param": None, "code": None}},
                                     status=400)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for delta, finish in (({"role": "assistant", "content": "still "}, None), ({"content": "here"}, None),
                              ({}, "stop")):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with serving(web.AppRunner(app)) as upstream, gateway(
            {"upstreams": {"openai": {"base_url": upstream + "/v1"}}}, None, telemetry=None) as gw:
        c = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=OPENAI_TEST_KEY, max_retries=0)
        try:
            for _ in range(2):
                stream = await c.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
                text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
                assert text == "still here"
        finally:
            await c.close()
    assert ["stream_options" in body for body in seen] == [True, False, False]


@pytest.mark.parametrize("options", [None, {"include_usage": False}, {"include_obfuscation": False}, "junk"])
def test_asking_a_chat_stream_for_usage_can_be_taken_back(options):
    """What the gateway sends when an upstream refuses stream_options is exactly the agent's own field."""
    from otelgate.providers import OPENAI, Route

    route = Route("openai", "chat_completions", "chat", "/chat/completions", "POST", True)
    body = {"model": "m", "stream": True, "messages": MESSAGES}
    if options is not None:
        body["stream_options"] = options
    sent = json.loads(json.dumps(body))
    undo = OPENAI.ask_stream_usage(body, route)
    assert undo is not None and body["stream_options"]["include_usage"] is True
    undo(body)
    assert body == sent
