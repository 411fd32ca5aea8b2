"""Hardening: random input into the request parser (over HTTP, against a real gateway and sim) and into the SSE
parsers, oversized headers. Every answer is a provider-shaped error or a success, never a crash or a hang."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import astuple
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelgate.context import Result
from otelgate.providers import PROVIDERS, Route
from otelgate.sim import SimUpstream
from otelgate.sse import SSEError, SSEEvent, SSEParser
from proxyutil import gateway_thread

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10)
MESSAGES = Route("anthropic", "messages", "chat", "/v1/messages", "POST", True)
CHAT = Route("openai", "chat_completions", "chat", "/chat/completions", "POST", True)
RESPONSES = Route("openai", "responses", "chat", "/responses", "POST", True)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    store = f"sqlite:///{tmp_path_factory.mktemp('hardening')}/b.db"
    with SimUpstream.in_thread(port=0, chunks=3) as sim, gateway_thread(
        {"budgets": {"store": store}}, sim, telemetry=None
    ) as g:
        yield g


# ------------------------------------------------------------------------------------------- request parser

json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["model", "messages", "max_tokens", "stream", "tools", "tool_choice", "system", "input", "metadata", "user"]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mutated", "json", "bytes", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_value)).encode()
    if kind == "deep":
        depth = draw(st.integers(50, 3000))
        return b'{"model":"m","messages":' + b"[" * depth + b"]" * depth + b"}"
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": draw(st.booleans()),
    }
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()):
            body.pop(field, None)
        else:
            body[field] = draw(json_value)
    return json.dumps(body).encode()


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers_strategy = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(["application/json", "text/plain", "application/x+json", "", "a/b; x=1"]),
        "x-otelgate-timeout": header_text,
        "x-otelgate-session": header_text,
        "anthropic-version": header_text,
        "content-encoding": st.just("identity"),  # gzip/br: see the two encoding tests below
        "accept-encoding": header_text,
        "x-random": header_text,
    },
)


def provider_shaped(path: str, status: int, data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    if path == "/v1/messages":
        return data.get("type") == "error" and isinstance(data.get("error", {}).get("message"), str)
    error = data.get("error")
    return isinstance(error, dict) and isinstance(error.get("message"), str)


async def post(url: str, body: bytes, headers: dict[str, str], auth: bool) -> tuple[int, str, bytes]:
    headers = dict(headers)
    if auth:
        headers["authorization"] = "Bearer sk-test-hardening"
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http, http.post(
        url, data=body, headers=headers
    ) as response:
        return response.status, response.headers.get("content-type", ""), await response.read()


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
@PROPERTY
@given(body=bodies(), headers=headers_strategy, auth=st.booleans())
def test_random_requests_get_a_clean_answer(gw, path, body, headers, auth):
    status, content_type, raw = asyncio.run(post(gw.url + path, body, headers, auth))
    assert status != 500, raw[:300]
    if status >= 400:
        assert provider_shaped(path, status, json.loads(raw)), raw[:300]
    elif "text/event-stream" in content_type:
        assert raw.endswith(b"\n\n")
    else:
        assert isinstance(json.loads(raw), dict)


def test_undecodable_gzip_body_is_a_400(gw):
    status, _, raw = asyncio.run(post(gw.url + "/v1/messages", b"\0\0", {"content-encoding": "gzip"}, True))
    assert status == 400 and provider_shaped("/v1/messages", status, json.loads(raw))


def test_unsupported_content_encoding_is_provider_shaped(gw):
    status, _, raw = asyncio.run(post(gw.url + "/v1/messages", b"{}", {"content-encoding": "br"}, True))
    assert status in (400, 415) and provider_shaped("/v1/messages", status, json.loads(raw))


@pytest.mark.parametrize("size", [70_000, 200_000])
def test_oversized_header_is_refused_not_a_crash(gw, size):
    async def go() -> int:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http, http.post(
            gw.url + "/v1/messages", data=b"{}", headers={"x-big": "a" * size, "authorization": "Bearer k"}
        ) as response:
            return response.status

    assert asyncio.run(go()) in (400, 431)
    # and the gateway still serves
    assert asyncio.run(post(gw.url + "/v1/messages", b"{}", {}, True))[0] == 400


def test_many_headers_are_refused_or_served(gw):
    headers = {f"x-h-{i}": "v" * 100 for i in range(500)}
    status, _, _ = asyncio.run(post(gw.url + "/v1/chat/completions", b"{}", headers, True))
    assert status in (400, 431)


# ------------------------------------------------------------------------------------------------ SSE parsers


def _capture(sim_url: str, path: str, body: dict[str, Any], step: dict[str, Any]) -> bytes:
    async def go() -> bytes:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
            async with http.post(sim_url + "/_sim/script", json={"steps": [step]}) as scripted:
                assert scripted.status == 200
            async with http.post(sim_url + path, json=body, headers={"authorization": "Bearer k"}) as response:
                return await response.read()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def streams() -> dict[str, bytes]:
    step = {"text": "Let me check that for you.", "tool_calls": [{"name": "search", "input": {"q": "x", "n": 2}}]}
    base = {"model": "m", "stream": True}
    with SimUpstream.in_thread(port=0, chunks=4) as sim:
        return {
            "messages": _capture(
                sim.url, "/v1/messages",
                {**base, "max_tokens": 64, "messages": [{"role": "user", "content": "q"}]}, step,
            ),
            "chat_completions": _capture(
                sim.url, "/v1/chat/completions",
                {**base, "messages": [{"role": "user", "content": "q"}], "stream_options": {"include_usage": True}},
                step,
            ),
            "responses": _capture(sim.url, "/v1/responses", {**base, "input": "q"}, step),
        }


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def parse_with(route: Route, pieces: list[bytes]) -> tuple[Any, ...]:
    result = Result(output_text=[])
    parser = PROVIDERS[route.provider].stream_parser(route, result)
    for piece in pieces:
        parser.feed(piece)
    calls = [(c.id, c.name, c.arguments) for c in result.tool_calls]
    return (result.response_id, result.finish_reasons, calls, astuple(result.usage), result.chunks,
            "".join(result.output_text or []), parser.complete, parser.at_boundary)


@PROPERTY
@given(cuts=st.lists(st.integers(0, 10**6), max_size=40))
def test_sse_parser_is_split_invariant(streams, cuts):
    for data in streams.values():
        whole = SSEParser().feed(data)
        parser = SSEParser()
        pieced = [event for piece in split(data, cuts) for event in parser.feed(piece)]
        assert pieced == whole and parser.at_boundary


@PROPERTY
@given(cuts=st.lists(st.integers(0, 10**6), max_size=40))
def test_provider_stream_parsers_are_split_invariant(streams, cuts):
    for route in (MESSAGES, CHAT, RESPONSES):
        data = streams[route.kind]
        whole = parse_with(route, [data])
        assert whole[6] and whole[2], "the captured stream is complete and carries the tool call"
        assert parse_with(route, split(data, cuts)) == whole


@PROPERTY
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 500), max_size=8))
def test_random_bytes_give_events_or_sse_error(data, cuts):
    parser = SSEParser()
    for piece in split(data, cuts):
        try:
            parser.feed(piece)
        except SSEError:
            return


EVENT_NAMES = ["message_start", "content_block_start", "content_block_delta", "message_delta", "message_stop",
               "error", "ping", "response.created", "response.output_item.added", "response.completed", None]


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """Well-framed SSE whose JSON payloads are random: the shape a confused or hostile upstream sends."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        name = draw(st.sampled_from(EVENT_NAMES))
        payload = json.dumps(draw(json_value)) if draw(st.booleans()) else draw(st.text(max_size=20))
        head = f"event: {name}\n" if name else ""
        out.append(f"{head}data: {payload}\n\n".replace("\r", ""))
    return "".join(out).encode()


@PROPERTY
@given(data=hostile_streams() | st.binary(max_size=300))
def test_provider_stream_parsers_raise_only_sse_error(data):
    for route in (MESSAGES, CHAT, RESPONSES):
        parser = PROVIDERS[route.provider].stream_parser(route, Result(output_text=[]))
        try:
            parser.feed(data)
        except SSEError:
            pass


def reference_events(data: bytes) -> list[SSEEvent] | None:
    """The event-stream rules SSEParser follows, line by line with nothing clever: None where it must refuse."""
    events, name, lines = [], None, []
    *complete, _rest = data.split(b"\n")
    for line in complete:
        line = line[:-1] if line.endswith(b"\r") else line
        if not line:
            if lines or name is not None:
                events.append(SSEEvent(name, "\n".join(lines)))
            name, lines = None, []
        elif not line.startswith(b":"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                lines.append(value.decode("utf-8", "replace"))
            elif field == b"event":
                name = value.decode("utf-8", "replace")
            elif field not in (b"id", b"retry"):
                return None
    return events


SSE_LINES = st.sampled_from([b"data: x", b"data:y", b"data:  two spaces", b"data:", b"event: e", b"event:f",
                             b": comment", b"id: 7", b"retry: 10", b"", b"\r", b"data: caf\xc3\xa9", b"data: \xff",
                             b"event: message_start", b"bogus: z"])


@PROPERTY
@given(lines=st.lists(SSE_LINES, max_size=30), crlf=st.booleans(), cuts=st.lists(st.integers(0, 10**4), max_size=6))
def test_sse_parser_matches_the_plain_line_by_line_rules(lines, crlf, cuts):
    data = (b"\r\n" if crlf else b"\n").join(lines) + b"\n"
    expected = reference_events(data)
    parser = SSEParser()
    try:
        got = [event for piece in split(data, cuts) for event in parser.feed(piece)]
    except SSEError:
        assert expected is None
        return
    assert got == expected


def nesting(node: Any) -> int:
    """Levels of containers, counted plainly (the root container is level 1; a scalar is 0)."""
    if isinstance(node, dict):
        return 1 + max((nesting(v) for v in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((nesting(v) for v in node), default=0)
    return 0


@PROPERTY
@given(value=json_value, limit=st.integers(1, 8))
def test_depth_check_agrees_with_plain_counting(value, limit):
    from otelgate.pipeline import _depth_exceeds

    root = {"x": value}
    assert _depth_exceeds(root, limit) == (nesting(root) > limit)
