"""Bad input gets a clear error in the caller's provider shape; nothing crashes, nothing is forwarded."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json

import aiohttp
import anthropic
import pytest
from aiohttp import web

from conftest import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from proxyutil import gateway, serving, wait_until

ANTHROPIC_HEADERS = {"authorization": f"Bearer {ANTHROPIC_TEST_KEY}", "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"authorization": f"Bearer {OPENAI_TEST_KEY}"}


async def post(url: str, *, data: bytes | str, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=data, headers=headers) as response:
            return response.status, await response.json(content_type=None)


def anthropic_error(body: dict) -> tuple[str, str]:
    assert body["type"] == "error", body
    return body["error"]["type"], body["error"]["message"]


def openai_error(body: dict) -> tuple[str, str]:
    return body["error"]["type"], body["error"]["message"]


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "empty"),
        (b'{"max_tokens": 5, "messages": []}', "model: field required"),
        (b'{"model": 42, "max_tokens": 5, "messages": []}', "model: must be a string"),
        (b'{"model": "m", "max_tokens": 5, "messages": "hi"}', "messages: must be an array"),
        (b'{"model": "m", "max_tokens": "lots", "messages": []}', "max_tokens: must be a positive integer"),
        (b'{"model": "m", "messages": [], "stream": "yes"}', "stream: must be a boolean"),
        (b"{\"model\": \"\xff\"}", "not valid"),
    ],
)
async def test_anthropic_bad_bodies(gw, sim, data, fragment):
    status, body = await post(gw.url + "/v1/messages", data=data, headers={**ANTHROPIC_HEADERS, **JSON})
    assert status == 400
    kind, message = anthropic_error(body)
    assert kind == "invalid_request_error"
    assert fragment in message
    assert not sim.requests


async def test_openai_bad_body_in_openai_shape(gw, sim):
    status, body = await post(
        gw.url + "/v1/chat/completions", data=b'{"model": "gpt", "messages": 3}', headers={**OPENAI_HEADERS, **JSON}
    )
    assert status == 400
    kind, message = openai_error(body)
    assert kind == "invalid_request_error" and "messages" in message


async def test_wrong_content_type(gw, sim):
    status, body = await post(
        gw.url + "/v1/messages", data="model=x", headers={**ANTHROPIC_HEADERS, "content-type": "text/plain"}
    )
    assert status == 400
    assert "content-type must be application/json" in anthropic_error(body)[1]


async def test_deeply_nested_json_is_refused(gw, sim):
    deep = '{"model": "m", "max_tokens": 5, "messages": [], "x": ' + "[" * 5000 + "]" * 5000 + "}"
    status, body = await post(gw.url + "/v1/messages", data=deep, headers={**ANTHROPIC_HEADERS, **JSON})
    assert status == 400
    assert "nested deeper" in anthropic_error(body)[1]


async def test_too_many_messages(sim, tmp_path):
    async with gateway({"server": {"max_messages": 3}}, sim, telemetry=None) as g:
        body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}] * 4})
        status, data = await post(g.url + "/v1/messages", data=body, headers={**ANTHROPIC_HEADERS, **JSON})
    assert status == 400 and "exceed the limit of 3" in anthropic_error(data)[1]


async def test_body_over_limit_is_413(sim):
    async with gateway({"server": {"max_body_bytes": 4096}}, sim, telemetry=None) as g:
        body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 5000}]})
        status, data = await post(g.url + "/v1/messages", data=body, headers={**ANTHROPIC_HEADERS, **JSON})
        kind, message = anthropic_error(data)
        assert status == 413 and kind == "request_too_large" and "4096" in message
        # Also when the client streams the body without a Content-Length.
        async def chunks():
            for _ in range(10):
                yield b"x" * 1000

        async with aiohttp.ClientSession() as http:
            async with http.post(g.url + "/v1/messages", data=chunks(), headers={**ANTHROPIC_HEADERS, **JSON}) as r:
                assert r.status == 413
    assert not sim.requests


async def test_unknown_route_is_404_in_provider_shape(gw, sim):
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/v1/files", headers=ANTHROPIC_HEADERS) as response:
            body = await response.json()
            assert response.status == 404 and anthropic_error(body)[0] == "not_found_error"
        async with http.post(gw.url + "/v1/embeddings", headers=OPENAI_HEADERS, json={}) as response:
            body = await response.json()
            assert response.status == 404 and "no route" in openai_error(body)[1]
    assert not sim.requests


async def test_wrong_method(gw, sim):
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/v1/messages", headers=ANTHROPIC_HEADERS) as response:
            body = await response.json()
    assert response.status == 405
    assert "GET is not allowed" in anthropic_error(body)[1]


async def test_invalid_timeout_header(gw, sim):
    status, body = await post(
        gw.url + "/v1/messages",
        data=json.dumps({"model": "m", "max_tokens": 5, "messages": []}),
        headers={**ANTHROPIC_HEADERS, **JSON, "x-otelgate-timeout": "soon"},
    )
    assert status == 400 and "x-otelgate-timeout" in anthropic_error(body)[1]


async def test_agent_disconnect_cancels_the_upstream_request(gw, sim):
    sim.script([{"fault": "stall_before_headers", "seconds": 30}])
    c = anthropic.AsyncAnthropic(base_url=gw.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0, timeout=30)
    task = asyncio.create_task(
        c.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    )
    assert await wait_until(lambda: sim.requests)
    assert gw.inflight == 1
    task.cancel()
    assert await wait_until(lambda: gw.inflight == 0, within=5)
    assert gw.inflight == 0, "the gateway must stop waiting on the upstream once the agent is gone"


async def test_gzip_upstream_body_is_relayed_and_still_accounted(sim):
    # A provider that compresses its answers: the gateway relays the compressed bytes and still reads usage.
    answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "zipped"}], "usage": {"input_tokens": 3, "output_tokens": 1},
    }

    async def handler(request: web.Request) -> web.Response:
        assert "gzip" in request.headers.get("accept-encoding", "")
        return web.Response(body=gzip.compress(json.dumps(answer).encode()),
                            headers={"content-encoding": "gzip", "content-type": "application/json"})

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    async with serving(web.AppRunner(app)) as upstream:
        config = {"upstreams": {"anthropic": {"base_url": upstream}}}
        async with gateway(config, sim, telemetry=None) as g:
            c = anthropic.AsyncAnthropic(base_url=g.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0)
            message = await c.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert message.content[0].text == "zipped"


async def test_gzip_request_body_is_decoded_and_forwarded(gw, sim):
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "zipped"}]}).encode()
    status, data = await post(
        gw.url + "/v1/messages",
        data=gzip.compress(body),
        headers={**ANTHROPIC_HEADERS, **JSON, "content-encoding": "gzip"},
    )
    assert status == 200, data
    assert sim.requests[-1].body == body
    assert "content-encoding" not in sim.requests[-1].headers


async def test_gzip_bomb_stops_at_the_body_limit(sim):
    async with gateway({"server": {"max_body_bytes": 65536}}, sim, telemetry=None) as g:
        bomb = gzip.compress(b"{" + b" " * 10_000_000 + b"}")
        status, data = await post(
            g.url + "/v1/messages", data=bomb, headers={**ANTHROPIC_HEADERS, **JSON, "content-encoding": "gzip"}
        )
    assert status == 413 and "decoded request body exceeds" in anthropic_error(data)[1]
    assert not sim.requests


async def test_a_missing_upstream_key_fails_once_and_says_why(sim):
    # Virtual keys with no provider key configured is the operator's mistake, not an outage: the SDK must not
    # retry it (a 503 kept Claude Code retrying for three minutes), and the answer names the setting to fix.
    config = {"auth": {"mode": "virtual_keys"},
              "keys": [{"id": "agent", "key_sha256": hashlib.sha256(b"sk-virtual-agent-1").hexdigest()}]}
    arrived: list[str] = []

    class CountArrivals:  # an observer runs first, on every request the gateway receives
        name = "count"
        observer = True

        async def request(self, ctx) -> None:
            arrived.append(ctx.request.path)

    async with gateway(config, sim, extra_filters=[CountArrivals()]) as gw:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-virtual-agent-1", max_retries=3)
        with pytest.raises(anthropic.InternalServerError) as caught:
            await client.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert arrived == ["/v1/messages"], "the SDK retried a configuration error"
    assert "upstreams.anthropic.api_key" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert not sim.requests
