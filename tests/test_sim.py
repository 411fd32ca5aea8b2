"""otelgate.sim: the official SDKs straight against the simulated upstream (no proxy), plus faults and scripting."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelgate.sim import ScriptError, SimUpstream, parse_steps
from otelgate.sim import anthropic as ant
from otelgate.sim import openai as oai
from otelgate.sim.answers import build_reply, prompt_tokens

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
async def sim():
    async with SimUpstream(chunks=4) as s:
        yield s


def aclient(sim: SimUpstream, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=kw.pop("base_url", sim.url), api_key="sk-ant-test",
                                    max_retries=kw.pop("max_retries", 0), **kw)


def oclient(sim: SimUpstream, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=kw.pop("base_url", sim.openai_base_url), api_key="sk-test",
                              max_retries=kw.pop("max_retries", 0), **kw)


def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) per SSE event; asserts the framing (blank line after every event)."""
    text = raw.decode()
    assert text.endswith("\n\n")
    out = []
    for block in text[:-2].split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                event = value
            else:
                assert field == "data", line
                data.append(value)
        out.append((event, "\n".join(data)))
    return out


async def raw_post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers or {}) as r:
        return r.status, r.headers, await r.read()


# --- Anthropic through the official SDK ---

async def test_anthropic_default_answer_is_deterministic_with_realistic_headers(sim: SimUpstream) -> None:
    raw = await aclient(sim).messages.with_raw_response.create(model="claude-test", max_tokens=100, messages=USER)
    msg = await raw.parse()
    assert msg.id.startswith("msg_01") and msg.model == "claude-test"
    assert msg.content[0].text == "Simulated answer to: What is the capital of France?"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == prompt_tokens({"messages": USER}, "anthropic")
    assert msg.usage.output_tokens == 9  # words
    assert raw.headers["request-id"].startswith("req_01")
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "4000"
    assert raw.headers["content-type"].startswith("application/json")


async def test_anthropic_stream_text_with_scripted_usage(sim: SimUpstream) -> None:
    sim.script([{"text": "Paris is the capital of France.", "chunks": 3,
                 "usage": {"input_tokens": 11, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}}])
    deltas = []
    async with aclient(sim).messages.stream(model="claude-test", max_tokens=100, messages=USER) as stream:
        async for event in stream:
            if event.type == "text":
                deltas.append(event.text)
        final = await stream.get_final_message()
    assert len(deltas) == 3 and "".join(deltas) == "Paris is the capital of France."
    assert final.content[0].text == "Paris is the capital of France."
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 6)
    assert final.usage.cache_read_input_tokens == 100 and final.usage.cache_creation_input_tokens == 7


async def test_anthropic_stream_tool_use_input_assembled_by_sdk(sim: SimUpstream) -> None:
    tool_input = {"q": "weather in Paris", "days": [1, 2, 3], "nested": {"unit": "C"}}
    sim.script([{"text": "Let me check.", "tool_call": {"name": "search", "input": tool_input, "id": "toolu_opt"}}])
    client = aclient(sim)
    kinds = []
    async with client.messages.stream(model="claude-test", max_tokens=100, messages=USER) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    tool = final.content[1]
    assert (tool.id, tool.name, tool.input) == ("toolu_opt", "search", tool_input)
    assert final.stop_reason == "tool_use"
    assert kinds.count("input_json") >= 3  # the input arrived in several partial_json pieces


async def test_anthropic_sse_wire_sequence_is_exact(sim: SimUpstream) -> None:
    sim.script([{"text": "one two three", "chunks": 2, "tool_call": {"name": "t", "input": {"a": 1}}}])
    status, headers, raw = await raw_post(sim.url + "/v1/messages", {
        "model": "m", "max_tokens": 50, "stream": True, "messages": USER})
    assert status == 200 and headers["content-type"] == "text/event-stream; charset=utf-8"
    events = parse_sse(raw)
    names = [e for e, _ in events]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_delta", "content_block_stop", "message_delta",
                     "message_stop"]
    data = [json.loads(d) for _, d in events]
    assert all(d["type"] == e for (e, _), d in zip(events, data, strict=True))
    start = data[0]["message"]
    assert start["usage"]["input_tokens"] > 0 and start["usage"]["cache_read_input_tokens"] == 0
    assert start["stop_reason"] is None
    partial = "".join(d["delta"]["partial_json"] for d in data[7:11])
    assert data[7]["delta"]["partial_json"] == "" and json.loads(partial) == {"a": 1}
    assert data[12]["delta"]["stop_reason"] == "tool_use" and data[12]["usage"]["output_tokens"] > 0


async def test_anthropic_count_tokens_and_models(sim: SimUpstream) -> None:
    client = aclient(sim)
    counted = await client.messages.count_tokens(model="claude-test", messages=USER)
    assert counted.input_tokens == prompt_tokens({"messages": USER}, "anthropic")
    page = await client.models.list()
    assert page.data[0].id.startswith("claude-") and page.data[0].display_name and not page.has_more
    assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    assert (await client.models.retrieve(page.data[1].id)).display_name == page.data[1].display_name
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-nonexistent")


async def test_anthropic_validation_and_max_tokens_cut(sim: SimUpstream) -> None:
    client = aclient(sim)
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(model="claude-test", messages=USER, max_tokens=0)
    assert err.value.type == "invalid_request_error"
    status, _, body = await raw_post(sim.url + "/v1/messages", {"model": "m", "messages": USER},
                                     {"anthropic-version": "2023-06-01"})
    assert status == 400 and json.loads(body)["error"] == {"type": "invalid_request_error",
                                                           "message": "max_tokens: Field required"}
    sim.script([{"text": "one two three four five"}])
    msg = await client.messages.create(model="claude-test", max_tokens=3, messages=USER)
    assert (msg.content[0].text, msg.stop_reason, msg.usage.output_tokens) == ("one two three", "max_tokens", 3)
    assert len(sim.requests) == 3  # invalid requests are recorded but consume no step


# --- OpenAI through the official SDK ---

async def test_openai_models_and_chat_non_stream_tool_calls(sim: SimUpstream) -> None:
    client = oclient(sim)
    models = await client.models.list()
    assert models.data[0].object == "model" and models.data[0].id.startswith("gpt-")
    assert (await client.models.retrieve("gpt-4o")).owned_by == "system"
    sim.script([{"tool_calls": [{"name": "search", "input": {"q": "x"}}, {"name": "read", "input": {}}]}])
    raw = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=USER)
    done = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_") and "x-ratelimit-limit-requests" in raw.headers
    assert done.id.startswith("chatcmpl-") and done.model == "gpt-test"
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["search", "read"] and calls[0].id.startswith("call_")
    assert json.loads(calls[0].function.arguments) == {"q": "x"}
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


async def test_openai_chat_stream_tool_call_deltas_and_usage_chunk(sim: SimUpstream) -> None:
    sim.script([{"text": "Looking.", "tool_call": {"name": "search", "input": {"q": "paris", "k": 3}}},
                {"text": "Plain answer here", "usage": {"input_tokens": 9, "cache_read_input_tokens": 4}}])
    async with oclient(sim).chat.completions.stream(
            model="gpt-test", messages=USER, stream_options={"include_usage": True}) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    msg = final.choices[0].message
    assert msg.content == "Looking." and final.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls[0].function.name == "search"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"q": "paris", "k": 3}
    assert final.usage is not None and final.usage.completion_tokens > 0

    _, _, raw = await raw_post(sim.openai_base_url + "/chat/completions", {
        "model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}})
    events = parse_sse(raw)
    assert all(e is None for e, _ in events) and events[-1][1] == "[DONE]"
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "Plain answer here"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["usage"] is None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 13
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 4


async def test_openai_responses_non_stream_and_stream(sim: SimUpstream) -> None:
    client = oclient(sim)
    resp = await client.responses.create(model="gpt-test", input="hello responses api")
    assert resp.id.startswith("resp_") and resp.status == "completed"
    assert resp.output_text == "Simulated answer to: hello responses api"
    assert resp.usage is not None and resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens

    sim.script([{"text": "Calling a tool.", "tool_call": {"name": "lookup", "input": {"id": 7}}}])
    kinds = []
    async with client.responses.stream(model="gpt-test", input="hi") as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_response()
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.output_text.delta" in kinds and "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert final.output_text == "Calling a tool."
    call = final.output[1]
    assert call.type == "function_call" and call.name == "lookup" and json.loads(call.arguments) == {"id": 7}
    assert final.usage is not None and final.usage.output_tokens > 0


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=1, max_size=80), chunks=st.integers(1, 12),
       tool_input=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=8)), max_size=3))
def test_streams_reassemble_to_the_answer_for_any_text(text: str, chunks: int, tool_input: dict[str, Any]) -> None:
    """Whatever the text (unicode, newlines, quotes) and chunking, every stream carries it intact."""
    step = parse_steps([{"text": text, "chunks": chunks, "tool_call": {"name": "t", "input": tool_input}}])[0]
    body = {"model": "m", "messages": USER}
    reply = build_reply(step, body, "anthropic", 5)
    data = [json.loads(d) for _, d in parse_sse(b"".join(ant.events(reply, "msg_x")))]
    deltas = [d["delta"] for d in data if d["type"] == "content_block_delta"]
    assert "".join(d["text"] for d in deltas if d["type"] == "text_delta") == text
    assert len([d for d in deltas if d["type"] == "text_delta"]) == min(chunks, len(text))
    assert json.loads("".join(d.get("partial_json", "") for d in deltas)) == tool_input

    reply = build_reply(step, body, "chat", 5)
    chunks_ = [json.loads(d) for _, d in parse_sse(b"".join(oai.chat_chunks(reply, "c", 0, True)))[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks_ if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == text
    args = "".join(t["function"]["arguments"] for d in deltas for t in d.get("tool_calls", []))
    assert json.loads(args) == tool_input

    events = [json.loads(d) for _, d in parse_sse(b"".join(oai.response_events(reply, "r", 0, body)))]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = events[-1]["response"]["output"]
    assert done[0]["content"][0]["text"] == text and json.loads(done[1]["arguments"]) == tool_input


# --- errors and retries ---

async def test_scripted_errors_raise_the_right_sdk_exceptions(sim: SimUpstream) -> None:
    sim.script([{"status": 529, "message": "Overloaded right now", "headers": {"retry-after": "3"}},
                {"status": 429, "headers": {"x-should-retry": "false"}}])
    client = aclient(sim)
    with pytest.raises(anthropic.OverloadedError) as over:
        await client.messages.create(model="claude-test", max_tokens=10, messages=USER)
    assert over.value.status_code == 529 and over.value.api_message == "Overloaded right now"
    assert over.value.type == "overloaded_error" and over.value.response.headers["retry-after"] == "3"
    assert over.value.request_id and over.value.request_id.startswith("req_01")
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(model="claude-test", max_tokens=10, messages=USER)
    assert limited.value.type == "rate_limit_error"

    sim.script([{"status": 429, "message": "slow down"}, {"status": 500}])
    with pytest.raises(openai.RateLimitError) as rl:
        await oclient(sim).chat.completions.create(model="gpt-test", messages=USER)
    assert rl.value.body == {"message": "slow down", "type": "requests", "param": None,
                             "code": "rate_limit_exceeded"}
    with pytest.raises(openai.InternalServerError):
        await oclient(sim).responses.create(model="gpt-test", input="x")
    with pytest.raises(openai.BadRequestError) as bad:
        await oclient(sim).chat.completions.create(model="gpt-test", messages="nope")  # type: ignore[arg-type]
    assert bad.value.code == "invalid_type"


async def test_header_sequence_counts_retries_of_one_logical_request(sim: SimUpstream) -> None:
    seq = json.dumps([{"status": 529, "headers": {"retry-after-ms": "5"}},
                      {"status": 529, "headers": {"retry-after-ms": "5"}}, {"text": "third time lucky"}])
    client = aclient(sim, max_retries=3)
    msg = await client.messages.create(model="claude-test", max_tokens=10, messages=USER,
                                       extra_headers={"x-sim-sequence": seq, "x-sim-id": "req-A"})
    assert msg.content[0].text == "third time lucky"
    assert len(sim.requests) == 3
    # The last step repeats, and another id starts its own count.
    again = await client.messages.create(model="claude-test", max_tokens=10, messages=USER,
                                         extra_headers={"x-sim-sequence": seq, "x-sim-id": "req-A"})
    assert again.content[0].text == "third time lucky" and len(sim.requests) == 4
    with pytest.raises(anthropic.OverloadedError):
        await aclient(sim).messages.create(model="claude-test", max_tokens=10, messages=USER,
                                           extra_headers={"x-sim-sequence": seq, "x-sim-id": "req-B"})
    # x-sim-fault applies to every request carrying it.
    fault = json.dumps({"status": 403, "message": "nope"})
    for _ in range(2):
        with pytest.raises(openai.PermissionDeniedError):
            await oclient(sim).models.list(extra_headers={"x-sim-fault": fault})


async def test_named_queues_by_url_prefix_and_header(sim: SimUpstream) -> None:
    sim.script([{"text": "for alice"}], name="alice")
    sim.script([{"text": "for bob"}], name="bob")
    sim.script([{"text": "for default"}])
    bob = await oclient(sim, base_url=sim.queue_url("bob") + "/v1").chat.completions.create(
        model="gpt-test", messages=USER)
    alice = await aclient(sim, base_url=sim.queue_url("alice")).messages.create(
        model="claude-test", max_tokens=10, messages=USER)
    by_header = await aclient(sim, default_headers={"x-sim-script": "alice"}).messages.create(
        model="claude-test", max_tokens=10, messages=USER)
    plain = await aclient(sim).messages.create(model="claude-test", max_tokens=10, messages=USER)
    assert bob.choices[0].message.content == "for bob"
    assert alice.content[0].text == "for alice"
    assert by_header.content[0].text.startswith("Simulated answer")  # alice's queue is used up
    assert plain.content[0].text == "for default"
    assert [r.route for r in sim.requests_for("alice")] == ["/v1/messages", "/v1/messages"]
    assert sim.requests_for("bob")[0].path == "/_sim/q/bob/v1/chat/completions"
    assert sim.remaining("alice") == sim.remaining("bob") == sim.remaining() == 0


async def test_unknown_route_is_404_in_provider_shape(sim: SimUpstream) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(sim.url + "/v1/nope", headers={"anthropic-version": "2023-06-01"}) as r:
            assert r.status == 404 and (await r.json())["error"]["type"] == "not_found_error"
        async with s.get(sim.url + "/v1/nope") as r:
            assert r.status == 404 and (await r.json())["error"]["type"] == "invalid_request_error"


# --- faults, observed on the wire ---

async def test_reset_before_headers(sim: SimUpstream) -> None:
    sim.script([{"fault": "reset_before_headers"}])
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with s.post(sim.url + "/v1/messages", json={"model": "m", "max_tokens": 5, "messages": USER}):
                pass
    sim.script([{"fault": "reset_before_headers"}])
    with pytest.raises(anthropic.APIConnectionError):
        await aclient(sim).messages.create(model="m", max_tokens=5, messages=USER)


async def test_stalls_before_headers_and_mid_stream(sim: SimUpstream) -> None:
    sim.script([{"fault": "stall_before_headers", "seconds": 0.3},
                {"fault": "stall_mid_stream", "after_events": 2, "seconds": 0.3}])
    t0 = time.monotonic()
    msg = await aclient(sim).messages.create(model="m", max_tokens=50, messages=USER)
    assert time.monotonic() - t0 >= 0.3 and msg.stop_reason == "end_turn"

    async with aiohttp.ClientSession() as s, s.post(sim.url + "/v1/messages", json={
            "model": "m", "max_tokens": 50, "stream": True, "messages": USER}) as r:
        stamps = []
        async for _event in _events(r):
            stamps.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # The pause sits between the 2nd and 3rd event only (small allowance for a loaded machine).
    assert gaps[1] >= 0.25 and max(gaps[:1] + gaps[2:]) < 0.2


async def _events(resp: aiohttp.ClientResponse):  # type: ignore[no-untyped-def]
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            yield event


async def test_reset_mid_stream_after_n_events(sim: SimUpstream) -> None:
    sim.script([{"fault": "reset_mid_stream", "after_events": 3}])
    got: list[bytes] = []
    async with aiohttp.ClientSession() as s, s.post(sim.openai_base_url + "/chat/completions", json={
            "model": "m", "stream": True, "messages": USER}) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for event in _events(r):
                got.append(event)
    assert len(got) == 3 and all(e.startswith(b"data: {") for e in got)

    sim.script([{"fault": "reset_mid_stream", "after_events": 4}])
    with pytest.raises(httpx2.ReadError):  # the SDK sees a broken stream, not a clean end
        async with aclient(sim).messages.stream(model="m", max_tokens=50, messages=USER) as stream:
            await stream.get_final_message()


async def test_slow_drip_spaces_every_event(sim: SimUpstream) -> None:
    sim.script([{"fault": "slow_drip", "interval": 0.03, "text": "a b c d", "chunks": 2}])
    t0 = time.monotonic()
    status, _, raw = await raw_post(sim.openai_base_url + "/chat/completions",
                                    {"model": "m", "stream": True, "messages": USER})
    n = len(parse_sse(raw))
    assert status == 200 and n == 5 and time.monotonic() - t0 >= 0.03 * (n - 1)


async def test_malformed_sse_reaches_the_client_and_breaks_the_sdk(sim: SimUpstream) -> None:
    sim.script([{"fault": "malformed_sse", "after_events": 1}])
    _, _, raw = await raw_post(sim.url + "/v1/messages", {"model": "m", "max_tokens": 50, "stream": True,
                                                          "messages": USER})
    assert b"\n\nthis line is not server-sent events\n" in raw and raw.endswith(b"message_stop\"}\n\n")
    sim.script([{"fault": "malformed_sse", "after_events": 1}])
    with pytest.raises(ValueError):  # json.JSONDecodeError from the SDK's SSE decoder
        async with aclient(sim).messages.stream(model="m", max_tokens=50, messages=USER) as stream:
            await stream.get_final_message()


async def test_truncated_json_modes(sim: SimUpstream) -> None:
    sim.script([{"fault": "truncated_json"}, {"fault": "truncated_json", "mode": "invalid"}])
    body = {"model": "m", "max_tokens": 50, "messages": USER}
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/v1/messages", json=body) as r:
            announced = int(r.headers["content-length"])
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        async with s.post(sim.url + "/v1/messages", json=body) as r:
            text = await r.read()
            assert r.status == 200 and len(text) == int(r.headers["content-length"]) < announced
            with pytest.raises(ValueError):
                json.loads(text)


async def test_end_stream_early_and_error_mid_stream(sim: SimUpstream) -> None:
    sim.script([{"fault": "end_stream_early", "after_events": 3},
                {"fault": "error_mid_stream", "after_events": 3, "message": "overloaded mid-way"}])
    body = {"model": "m", "max_tokens": 50, "stream": True, "messages": USER}
    status, _, raw = await raw_post(sim.url + "/v1/messages", body)
    assert status == 200 and [e for e, _ in parse_sse(raw)] == ["message_start", "content_block_start", "ping"]
    with pytest.raises(anthropic.APIStatusError, match="overloaded mid-way") as err:
        async with aclient(sim).messages.stream(model="m", max_tokens=50, messages=USER) as stream:
            await stream.get_final_message()
    assert err.value.type == "overloaded_error"

    sim.script([{"fault": "error_mid_stream", "after_events": 2}])
    with pytest.raises(openai.APIError, match="server had an error"):
        async for _ in await oclient(sim).chat.completions.create(model="m", messages=USER, stream=True):
            pass


# --- scripting API, control API, helpers ---

def test_step_validation_names_the_problem() -> None:
    with pytest.raises(ScriptError, match=r"step 1: unknown key\(s\) \['txt'\]"):
        parse_steps([{"text": "ok"}, {"txt": "typo"}])
    with pytest.raises(ScriptError, match="unknown fault 'explode'"):
        parse_steps([{"fault": "explode"}])
    with pytest.raises(ScriptError, match="'status' must be an HTTP error status"):
        parse_steps([{"status": 200}])
    with pytest.raises(ScriptError, match="'seconds' must be a non-negative number"):
        parse_steps([{"fault": "stall_before_headers", "seconds": "soon"}])
    steps = parse_steps("llm:\n  - text: hi\n  - {status: 529, headers: {retry-after: 1}}\n"
                        "  - tool_call: {name: search, input: {q: x}}\n")
    assert [s.kind for s in steps] == ["answer", "error", "answer"]
    assert steps[1].headers == (("retry-after", "1"),) and steps[2].tool_calls[0].input == {"q": "x"}


async def test_control_api(sim: SimUpstream) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(sim.url + "/_sim/health") as r:
            assert (await r.json())["status"] == "ok"
        async with s.post(sim.url + "/_sim/script", json={"name": "q1", "steps": [{"text": "scripted"}]}) as r:
            assert r.status == 200 and (await r.json())["queued"] == 1
        async with s.post(sim.url + "/_sim/script", json={"steps": [{"bogus": 1}]}) as r:
            assert r.status == 400 and "bogus" in (await r.json())["error"]
        sent = {"model": "m", "max_tokens": 5, "messages": USER}
        async with s.post(sim.url + "/v1/messages", json=sent, headers={"x-sim-script": "q1"}) as r:
            assert (await r.json())["content"][0]["text"] == "scripted"
        async with s.get(sim.url + "/_sim/requests") as r:
            seen = await r.json()
        assert len(seen) == 1 and seen[0]["body"] == sent and seen[0]["queue"] == "q1"
        assert seen[0]["step"] == {"text": "scripted"} and seen[0]["headers"]["x-sim-script"] == "q1"
        async with s.post(sim.url + "/_sim/reset") as r:
            assert r.status == 200
        async with s.get(sim.url + "/_sim/requests") as r:
            assert await r.json() == []
    assert sim.requests == []


def test_in_thread_with_sync_sdk_clients() -> None:
    with SimUpstream.in_thread(chunks=2) as sim:
        sim.script([{"text": "from a thread"}])
        client = anthropic.Anthropic(base_url=sim.url, api_key="k", max_retries=0)
        with client.messages.stream(model="m", max_tokens=20, messages=USER) as stream:
            assert stream.get_final_text() == "from a thread"
        chat = openai.OpenAI(base_url=sim.openai_base_url, api_key="k", max_retries=0)
        assert chat.chat.completions.create(model="m", messages=USER).choices[0].finish_reason == "stop"
        assert [r.route for r in sim.requests] == ["/v1/messages", "/v1/chat/completions"]
        assert sim.requests[0].headers["AUTHORIZATION"] == "Bearer k" and sim.requests[0].json()["stream"] is True


async def test_standalone_cli_serves_and_stops_on_sigterm(tmp_path: Any) -> None:
    script = tmp_path / "case.yaml"
    script.write_text("llm:\n  - text: from the yaml script\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "otelgate.sim", "--port", "0", "--chunks", "2", "--script", str(script),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        msg = await client.messages.create(model="m", max_tokens=20, messages=USER)
        assert msg.content[0].text == "from the yaml script"
        msg = await client.messages.create(model="m", max_tokens=20, messages=USER)
        assert msg.content[0].text.startswith("Simulated answer")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
