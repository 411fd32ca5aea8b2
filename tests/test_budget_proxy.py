"""Budgets and session limits through the real proxy: the official SDKs call the gateway, the gateway calls the
sim, the ledger is a real SQLite file or a real redis-server. What is checked is what an agent or an operator
sees: the SDK's exception and message, retry-after, /admin/usage."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from otelgate.config import key_hash, merge_into
from otelgate.sim import SimUpstream
from proxyutil import Gateway, gateway
from redisutil import RedisServer, redis_factory_fixture, redis_fixture

redis_server = redis_fixture(scope="module")
redis_factory = redis_factory_fixture()

ADMIN = "admin-test-key-0123456789"
KEY_A, KEY_B = "sk-ant-agent-a-SECRET", "sk-ant-agent-b-SECRET"
MODEL = "test-model"  # priced below at $1000 per million tokens: one token costs $0.001
PRICE = {"input": 1000.0, "output": 1000.0, "cache_read": 100.0, "cache_write": 1250.0}
# Every sim answer: 10 input + 5 output tokens = $0.015.
FIXED = json.dumps({"text": "one two three four five", "usage": {"input_tokens": 10, "output_tokens": 5}})


def config(store: str, key_a: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "auth": {"admin_key": ADMIN},
        # These tests are about what the budgets decide; a machine busy with other work must not turn a slow
        # store answer into a 503 (the store-error tests below set their own timeout).
        "budgets": {"store": store, "pricing": {MODEL: PRICE}, "store_timeout": 5.0},
        "keys": [
            {"id": "agent-a", "key_sha256": key_hash(KEY_A), "team": "t1", **(key_a or {})},
            {"id": "agent-b", "key_sha256": key_hash(KEY_B), "team": "t1"},
        ],
        "teams": [{"id": "t1"}],
    }
    return merge_into(cfg, extra)


_OPEN: list[anthropic.AsyncAnthropic] = []


def client(gw: Gateway, key: str = KEY_A, session: str | None = None, **headers: str) -> anthropic.AsyncAnthropic:
    default = {"x-sim-fault": FIXED, **headers}
    if session:
        default["x-otelgate-session"] = session
    c = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0, default_headers=default)
    _OPEN.append(c)
    return c


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _OPEN:
        await _OPEN.pop().close()


async def ask(c: anthropic.AsyncAnthropic, max_tokens: int = 10) -> Any:
    return await c.messages.create(model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": "hi"}])


async def usage_rows(gw: Gateway, **query: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
        f"{gw.url}/admin/usage", params=query, headers={"x-admin-key": ADMIN}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["usage"])


def msg(exc: anthropic.APIStatusError) -> str:
    """The error message as the gateway wrote it (the SDK's `message` prefixes status and body)."""
    assert isinstance(exc.body, dict)
    return str(exc.body["error"]["message"])


def row(rows: list[dict[str, Any]], scope: str, sid: str, unit: str) -> dict[str, Any]:
    found = [r for r in rows if (r["scope"], r["id"], r["unit"]) == (scope, sid, unit)]
    assert len(found) == 1, rows
    return found[0]


@pytest.fixture
async def sim() -> AsyncIterator[SimUpstream]:
    async with SimUpstream(chunks=2) as upstream:
        yield upstream


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ledger.db"


# -- session limits -----------------------------------------------------------------------------------------
async def test_session_call_limit_stops_the_fourth_call(sim: SimUpstream, tmp_path: Path) -> None:
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 3}}})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw, session="run-42")
        for _ in range(3):
            await ask(c)
        with pytest.raises(anthropic.RateLimitError) as err:
            await ask(c)
        assert err.value.status_code == 429
        assert "session limit of 3 calls for session agent-a/run-42 reached" in msg(err.value)
        # Waiting will not help: the SDK is told not to retry, and there is no retry-after.
        assert err.value.response.headers.get("x-should-retry") == "false"
        assert "retry-after" not in err.value.response.headers
        assert len(sim.requests) == 3
        # Another session of the same key is not affected.
        await ask(client(gw, session="run-43"))
        calls = row(await usage_rows(gw, scope="session", id="agent-a/run-42"), "session", "agent-a/run-42", "calls")
        assert (calls["spent"], calls["reserved"], calls["limit"]) == (3, 0, 3)


async def test_a_derived_session_belongs_to_its_key(sim: SimUpstream, tmp_path: Path) -> None:
    """Without a session header the session comes from the conversation's first messages. Two keys whose agents
    open the same way (one product, many customers) still run separate sessions, each with its own cap."""
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 2}}})
    cfg["keys"][1]["limits"] = {"session": {"max_calls": 2}}
    async with gateway(cfg, sim, telemetry=None) as gw:
        a, b = client(gw, KEY_A), client(gw, KEY_B)
        for _ in range(2):
            await ask(a)
        with pytest.raises(anthropic.RateLimitError) as err:
            await ask(a)
        assert "session limit of 2 calls" in msg(err.value)
        for _ in range(2):
            await ask(b)  # the same opening message, another key: not agent-a's session
        with pytest.raises(anthropic.RateLimitError):
            await ask(b)
        assert len(sim.requests) == 4


@pytest.mark.parametrize("asks_for_usage", [False, True])
async def test_a_streamed_chat_completion_is_charged_what_it_used(sim: SimUpstream, tmp_path: Path,
                                                                  asks_for_usage: bool) -> None:
    """A Chat Completions stream reports usage only if the request sets stream_options.include_usage, which most
    agents do not. The gateway asks for it, so the call is charged its real usage ($0.015) instead of the reserved
    worst case (~$1 for max_tokens 1000), and takes the added usage chunk out: the agent gets what it asked for."""
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 100.0}]})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0,
                               default_headers={"x-sim-fault": FIXED, "accept-encoding": "gzip"})
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if asks_for_usage else {}
        try:
            stream = await c.chat.completions.create(model=MODEL, max_tokens=1000, stream=True,
                                                     messages=[{"role": "user", "content": "Count to five."}], **extra)
            chunks = [chunk async for chunk in stream]
        finally:
            await c.close()
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == "one two three four five"
        assert sim.requests[-1].json()["stream_options"] == {"include_usage": True}
        usage_chunks = [ch for ch in chunks if ch.usage is not None]
        if asks_for_usage:
            assert [ch.choices for ch in usage_chunks] == [[]]
            assert usage_chunks[0].usage.completion_tokens == 5  # type: ignore[union-attr]
        else:
            assert usage_chunks == [] and all(ch.choices for ch in chunks)
        spent = row(await usage_rows(gw, scope="key", id="agent-a"), "key", "agent-a", "usd")
        assert spent["spent"] == pytest.approx(0.015) and spent["reserved"] == 0


async def test_stream_usage_can_be_left_unasked_for_upstreams_that_refuse_it(sim: SimUpstream, tmp_path: Path) -> None:
    """`upstreams.openai.stream_usage: false` sends the agent's body as it came (for OpenAI-compatible servers that
    refuse stream_options): usage stays unknown and the call is charged its reserved worst case."""
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 100.0}]},
                 upstreams={"openai": {"stream_usage": False}})
    body = {"model": MODEL, "max_tokens": 1000, "stream": True, "messages": [{"role": "user", "content": "Hi."}]}
    async with gateway(cfg, sim, telemetry=None) as gw:
        async with aiohttp.ClientSession() as http, http.post(
            f"{gw.url}/v1/chat/completions", json=body,
            headers={"authorization": f"Bearer {KEY_A}", "x-sim-fault": FIXED},
        ) as response:
            assert response.status == 200
            await response.read()
        assert sim.requests[-1].body == json.dumps(body).encode()  # forwarded byte for byte
        spent = row(await usage_rows(gw, scope="key", id="agent-a"), "key", "agent-a", "usd")
        assert spent["spent"] > 0.5  # the worst case at max_tokens 1000, not the $0.015 used


async def charged_for(sim: SimUpstream, tmp_path: Path, stream: bool, usage: dict[str, int]) -> tuple[Any, float]:
    """One Anthropic SDK call (streamed or not) whose answer reports `usage`: the final message, and the USD the
    key's budget was charged for it."""
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 100.0}]})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw, **{"x-sim-fault": json.dumps({"text": "done", "usage": usage})})
        if stream:
            async with c.messages.stream(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
                final = await s.get_final_message()
        else:
            final = await ask(c)
        spent = row(await usage_rows(gw, scope="key", id="agent-a"), "key", "agent-a", "usd")
        return final, spent["spent"]


@pytest.mark.parametrize("stream", [False, True])
async def test_one_hour_cache_writes_are_charged_at_their_own_rate(sim: SimUpstream, tmp_path: Path,
                                                                   stream: bool) -> None:
    """Anthropic bills a one-hour cache write at 2x input and a five-minute one at 1.25x; usage.cache_creation says
    how many of the written tokens were which. 10 input + 5 output + 1 000 written (600 of them for an hour) at
    $1 000 / $1 000 / $1 250 / $2 000 per million: $0.015 + $0.5 + $1.2 = $1.715."""
    final, spent = await charged_for(sim, tmp_path, stream, {"input_tokens": 10, "output_tokens": 5,
                                                             "cache_creation_input_tokens": 1000,
                                                             "cache_creation_1h_input_tokens": 600})
    assert final.usage.cache_creation is not None and final.usage.cache_creation.ephemeral_1h_input_tokens == 600
    assert spent == pytest.approx(1.715)


async def test_a_chat_request_for_several_completions_reserves_each_of_them(sim: SimUpstream, tmp_path: Path) -> None:
    """`n: 3` can produce three completions of max_tokens each: the worst case held against the budget is three
    times the output cap, or the budget could be overspent beyond its documented bound."""
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 0.2}]})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0,
                               default_headers={"x-sim-fault": FIXED})
        messages = [{"role": "user", "content": "Name a colour."}]
        try:
            await c.chat.completions.create(model=MODEL, max_tokens=100, messages=messages)  # worst case ~$0.11
            with pytest.raises(openai.RateLimitError) as err:
                await c.chat.completions.create(model=MODEL, max_tokens=100, n=3, messages=messages)  # ~$0.31
        finally:
            await c.close()
        assert "budget" in err.value.message
        assert len(sim.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_server_side_web_searches_are_charged(sim: SimUpstream, tmp_path: Path, stream: bool) -> None:
    """Anthropic bills its web search tool per search ($10 per 1 000) on top of the tokens; the answer's
    usage.server_tool_use says how many ran. 10 input + 5 output tokens ($0.015) and 3 searches ($0.03)."""
    final, spent = await charged_for(sim, tmp_path, stream, {"input_tokens": 10, "output_tokens": 5,
                                                             "web_search_requests": 3})
    assert final.usage.server_tool_use is not None and final.usage.server_tool_use.web_search_requests == 3
    assert spent == pytest.approx(0.045)


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_built_in_search_tools_are_charged(sim: SimUpstream, tmp_path: Path, stream: bool) -> None:
    """OpenAI bills the Responses API's web_search ($10 per 1 000 searches) and file_search ($2.50 per 1 000 calls)
    per call, on top of the tokens; the usage block counts tokens only, the output items say which tools ran.
    10 input + 5 output tokens ($0.015), 3 web searches ($0.03), 2 file searches ($0.005): $0.05."""
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 100.0}]})
    fault = json.dumps({"text": "done", "usage": {"input_tokens": 10, "output_tokens": 5, "web_search_requests": 3,
                                                  "file_search_requests": 2}})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0,
                               default_headers={"x-sim-fault": fault})
        try:
            tools: Any = [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}]
            if stream:
                events = await c.responses.create(model=MODEL, input="Find it.", tools=tools, stream=True)
                (final,) = [e.response async for e in events if e.type == "response.completed"]
            else:
                final = await c.responses.create(model=MODEL, input="Find it.", tools=tools)
        finally:
            await c.close()
        kinds = [item.type for item in final.output]
        assert kinds.count("web_search_call") == 3 and kinds.count("file_search_call") == 2
        spent = row(await usage_rows(gw, scope="key", id="agent-a"), "key", "agent-a", "usd")
        assert spent["spent"] == pytest.approx(0.05) and spent["reserved"] == 0


async def test_a_derived_session_survives_prompt_caching_markers(sim: SimUpstream, tmp_path: Path) -> None:
    """An agent loop that marks its newest message for prompt caching (the SDKs' documented pattern) moves
    `cache_control` off the first user message after turn one. The loop is still one session: its cap holds."""
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 3}}})
    system = [{"type": "text", "text": "You are a release bot.", "cache_control": {"type": "ephemeral"}}]
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw)
        history: list[dict[str, Any]] = [{"role": "user", "content": "Ship version 2."}]

        async def turn() -> None:
            messages = [dict(m) for m in history]
            last = messages[-1]
            last["content"] = [{"type": "text", "text": str(last["content"]), "cache_control": {"type": "ephemeral"}}]
            await c.messages.create(model=MODEL, max_tokens=10, system=system, messages=messages)
            history.extend([{"role": "assistant", "content": "Working on it."}, {"role": "user", "content": "Go on."}])

        for _ in range(3):
            await turn()
        with pytest.raises(anthropic.RateLimitError) as err:
            await turn()
        assert "session limit of 3 calls" in msg(err.value)
        assert len(sim.requests) == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_a_responses_run_continued_by_id_is_one_session(sim: SimUpstream, tmp_path: Path, stream: bool) -> None:
    """A Responses agent that carries on with `previous_response_id` sends only the new turn (here the tool's
    output, no user message): each turn still belongs to the run its first request began, so the cap holds."""
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 3}}})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0,
                               default_headers={"x-sim-fault": FIXED})

        async def create(**kwargs: Any) -> str:
            if not stream:
                return (await c.responses.create(model=MODEL, max_output_tokens=10, **kwargs)).id
            events = await c.responses.create(model=MODEL, max_output_tokens=10, stream=True, **kwargs)
            ids = [e.response.id async for e in events if e.type == "response.completed"]
            return ids[0]

        try:
            previous = await create(input="Count the files.")
            for n in range(2):
                output = [{"type": "function_call_output", "call_id": f"call_{n}", "output": "42"}]
                previous = await create(input=output, previous_response_id=previous)
            with pytest.raises(openai.RateLimitError) as err:
                await create(input=[{"type": "function_call_output", "call_id": "call_9", "output": "42"}],
                             previous_response_id=previous)
            assert "session limit of 3 calls" in err.value.message
            # A run that stores nothing (store: false) sends its whole history each turn: the opening identifies it.
            await create(input="Something else.", store=False)
        finally:
            await c.close()
        assert len(sim.requests) == 4


async def test_a_conversations_api_id_is_the_session(sim: SimUpstream, tmp_path: Path) -> None:
    """Responses requests that name a conversation (`conversation: "conv_…"` or `{"id": …}`) are that run."""
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 2}}})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0,
                               default_headers={"x-sim-fault": FIXED})
        try:
            await c.responses.create(model=MODEL, input="One.", conversation="conv_7")
            await c.responses.create(model=MODEL, input="Two.", conversation={"id": "conv_7"})
            with pytest.raises(openai.RateLimitError) as err:
                await c.responses.create(model=MODEL, input="Three.", conversation="conv_7")
            assert "session agent-a/conv_7" in err.value.message
        finally:
            await c.close()


async def test_two_keys_naming_their_runs_alike_have_separate_sessions(sim: SimUpstream, tmp_path: Path) -> None:
    """Session names are the agent's choice ("main", "run-1"): a tenant that picks another's name must not spend
    that tenant's session cap, or exhaust it on purpose."""
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 2}}})
    cfg["keys"][1]["limits"] = {"session": {"max_calls": 2}}
    async with gateway(cfg, sim, telemetry=None) as gw:
        a, b = client(gw, KEY_A, session="main"), client(gw, KEY_B, session="main")
        for _ in range(2):
            await ask(b)
        with pytest.raises(anthropic.RateLimitError):
            await ask(b)
        for _ in range(2):
            await ask(a)  # agent-b used up *its* "main"; agent-a's is untouched
        with pytest.raises(anthropic.RateLimitError) as err:
            await ask(a)
        assert "session limit of 2 calls for session agent-a/main reached" in msg(err.value)
        assert len(sim.requests) == 4


async def test_claude_code_runs_are_sessions_by_their_own_session_id(sim: SimUpstream, tmp_path: Path) -> None:
    """Claude Code sends metadata.user_id with a device id shared by every run on the machine and a session id
    per run (JSON now, "user_<hash>_account__session_<uuid>" before): the run is the session, not the device."""
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 2}}})
    device = "e88f8461b26216c3f4f3db96c58c21ca03d36936fa7efac247a33e2cdec76560"
    runs = ["0b5e2c4e-6f0e-4d1e-9d59-6d1a2f0c9a11", "7c1d0a7e-2b4f-4a43-8f0c-1f7e9b3d5c22"]
    user_ids = [json.dumps({"device_id": device, "account_uuid": "", "session_id": runs[0]}),
                f"user_{device}_account__session_{runs[1]}"]
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw)
        for user_id, run in zip(user_ids, runs, strict=True):
            for _ in range(2):
                await c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                                        metadata={"user_id": user_id})
            with pytest.raises(anthropic.RateLimitError) as err:
                await c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                                        metadata={"user_id": user_id})
            assert f"session limit of 2 calls for session agent-a/{run} reached" in msg(err.value)
            assert device not in msg(err.value)
        assert len(sim.requests) == 4  # the second run was not charged with the first one's calls


async def test_an_end_user_id_is_not_a_run(sim: SimUpstream, tmp_path: Path) -> None:
    """OpenAI `user` / `safety_identifier` / `prompt_cache_key` and Anthropic `metadata.user_id` name the end user
    (or a cache bucket) an application serves, not one agent run: a support bot that passes its customer's id, as
    both providers recommend, must not have every run of that customer for a day count as one session. The id
    still keeps two customers apart whose runs open alike."""
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 2}}})
    async with gateway(cfg, sim, telemetry=None) as gw:
        oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0,
                                default_headers={"x-sim-fault": FIXED})
        an = client(gw)

        async def turn(via: str, end_user: str, opening: str, turns: int) -> None:
            history: list[dict[str, Any]] = [{"role": "user", "content": opening}]
            for n in range(turns):
                if via == "openai":
                    await oa.chat.completions.create(model=MODEL, max_tokens=10, messages=history, user=end_user)
                else:
                    await an.messages.create(model=MODEL, max_tokens=10, messages=history,
                                             metadata={"user_id": end_user})
                history += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": f"and {n}?"}]

        try:
            for via in ("openai", "anthropic"):
                await turn(via, f"customer-42-{via}", "Where is my order?", 2)
                # The same run's next call: its session cap holds with an end-user id as much as without one.
                with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)) as err:
                    await turn(via, f"customer-42-{via}", "Where is my order?", 1)
                assert "session limit of 2 calls" in str(err.value)
                assert f"customer-42-{via}" not in str(err.value)  # the session id is a hash: no end-user id
                await turn(via, f"customer-42-{via}", "Cancel my subscription.", 2)  # the same customer's next run
                await turn(via, f"customer-7-{via}", "Where is my order?", 2)  # another customer, same opening
        finally:
            await oa.close()
        assert len(sim.requests) == 2 * (2 + 2 + 2)  # per provider: a run to its cap, the next run, another user


async def test_a_derived_session_is_forgotten_sooner_than_a_named_one(sim: SimUpstream, tmp_path: Path) -> None:
    """A session the gateway derived from the conversation's opening cannot tell two runs with the same prompt
    apart (a scheduled job, a test suite): only the pause between them can, so it is forgotten after
    budgets.derived_session_ttl_seconds without a call. A run the caller names keeps budgets.session_ttl_seconds."""
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_calls": 5}}},
                 budgets={"session_ttl_seconds": 7200, "derived_session_ttl_seconds": 600})
    async with gateway(cfg, sim, telemetry=None) as gw:
        await ask(client(gw))
        await ask(client(gw, session="named-run"))
        rows = await usage_rows(gw, scope="session")
        windows = {r["id"].split("/", 1)[1].split("-")[0]: r["window"] for r in rows if r["unit"] == "calls"}
        assert windows == {"conv": "session:600", "named": "session:7200"}


async def test_session_token_limit(sim: SimUpstream, tmp_path: Path) -> None:
    cfg = config(sqlite_url(tmp_path), {"limits": {"session": {"max_tokens": 100}}})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw, session="tok")
        served = 0
        with pytest.raises(anthropic.RateLimitError) as err:
            for _ in range(20):
                await ask(c, max_tokens=30)
                served += 1
        assert "session limit of 100 tokens for session agent-a/tok reached" in msg(err.value)
        tokens = row(await usage_rows(gw, scope="session", id="agent-a/tok"), "session", "agent-a/tok", "tokens")
        assert tokens["spent"] == 15 * served  # each call settled its real 15 tokens, not the reservation
        assert tokens["spent"] <= 100 and tokens["reserved"] == 0
        assert served >= 3


# -- budgets ------------------------------------------------------------------------------------------------
async def test_daily_key_budget_refusal_names_limit_and_reset(sim: SimUpstream, tmp_path: Path) -> None:
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 0.05}]})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw)
        served = 0
        with pytest.raises(anthropic.RateLimitError) as err:
            for _ in range(10):
                await ask(c)
                served += 1
        assert msg(err.value) == "daily budget of $0.05 for key agent-a reached; resets at 00:00 UTC"
        now = datetime.now(UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        retry_after = int(err.value.response.headers["retry-after"])
        assert abs(retry_after - (midnight - now).total_seconds()) < 5
        # $0.015 each, reserved at ~$0.016 worst case: after three ($0.045) the fourth does not fit.
        assert served == 3
        usd = row(await usage_rows(gw), "key", "agent-a", "usd")
        assert usd["spent"] == pytest.approx(0.045) and usd["reserved"] == 0
        assert usd["reset_at"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
        # Another key is not affected by agent-a's budget.
        await ask(client(gw, KEY_B))


async def test_team_budget_is_shared_by_its_keys(sim: SimUpstream, tmp_path: Path) -> None:
    cfg = config(sqlite_url(tmp_path), teams=[{"id": "t1", "budgets": [{"window": "month", "usd": 0.04}]}])
    async with gateway(cfg, sim, telemetry=None) as gw:
        await ask(client(gw, KEY_A))
        await ask(client(gw, KEY_A))
        with pytest.raises(anthropic.RateLimitError) as err:
            await ask(client(gw, KEY_B))
        assert msg(err.value).startswith("monthly budget of $0.04 for team t1 reached; resets at 00:00 UTC on ")
        assert int(err.value.response.headers["retry-after"]) > 0
        usd = row(await usage_rows(gw), "team", "t1", "usd")
        assert usd["spent"] == pytest.approx(0.03)


async def test_settled_usage_is_the_real_usage(sim: SimUpstream, tmp_path: Path) -> None:
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 100.0, "tokens": 100000}]})
    step = {"text": "fine", "usage": {"input_tokens": 1000, "output_tokens": 200, "cache_read_input_tokens": 500}}
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw, **{"x-sim-fault": json.dumps(step)})
        for stream in (False, True):
            if stream:
                async with c.messages.stream(model=MODEL, max_tokens=300,
                                             messages=[{"role": "user", "content": "hi"}]) as s:
                    await s.get_final_message()
            else:
                await ask(c, max_tokens=300)
        rows = await usage_rows(gw)
        # 1000 x $1000/M + 200 x $1000/M + 500 x $100/M = $1.25 per call
        assert row(rows, "key", "agent-a", "usd")["spent"] == pytest.approx(2 * 1.25)
        assert row(rows, "key", "agent-a", "tokens")["spent"] == 2 * 1700
        assert row(rows, "key", "agent-a", "usd")["reserved"] == 0


async def test_broken_stream_is_charged_its_partial_usage(sim: SimUpstream, tmp_path: Path) -> None:
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 100.0, "tokens": 100000}]})
    # message_start (input 40, output 1), content_block_start, ping — then the connection is reset.
    step = {"fault": "reset_mid_stream", "after_events": 3, "text": "a b c d e f g h",
            "usage": {"input_tokens": 40, "output_tokens": 8}}
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw, **{"x-sim-fault": json.dumps(step)})
        with pytest.raises(anthropic.APIError):
            async with c.messages.stream(model=MODEL, max_tokens=50,
                                         messages=[{"role": "user", "content": "hi"}]) as s:
                await s.get_final_message()
        rows = await usage_rows(gw)
        assert row(rows, "key", "agent-a", "tokens")["spent"] == 41
        assert row(rows, "key", "agent-a", "usd")["spent"] == pytest.approx(0.041)
        assert row(rows, "key", "agent-a", "usd")["reserved"] == 0


async def poll(check: Any, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


async def test_agent_disconnect_settles_exactly_once(sim: SimUpstream, tmp_path: Path) -> None:
    cfg = config(sqlite_url(tmp_path), {"budgets": [{"window": "day", "usd": 100.0}],
                                        "limits": {"session": {"max_calls": 10}}})
    step = {"fault": "slow_drip", "interval": 0.2, "text": " ".join(["w"] * 20),
            "usage": {"input_tokens": 30, "output_tokens": 20}}
    async with gateway(cfg, sim, telemetry=None) as gw:
        body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01", "x-otelgate-session": "gone",
                   "x-sim-fault": json.dumps(step)}
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{gw.url}/v1/messages", json=body, headers=headers)
            assert resp.status == 200
            first = await resp.content.readline()
            assert first.startswith(b"event: message_start")
            resp.close()  # the agent goes away mid-stream

        async def settled() -> list[dict[str, Any]] | None:
            rows = await usage_rows(gw, scope="session", id="agent-a/gone")
            calls = row(rows, "session", "agent-a/gone", "calls")
            return rows if calls["spent"] == 1 and calls["reserved"] == 0 else None

        rows = await poll(settled)
        assert rows, "the disconnected call was never settled"
        assert gw.inflight == 0
        usd = row(await usage_rows(gw), "key", "agent-a", "usd")
        # Charged what had been reported when the agent left (input 30 + the first output token) — once.
        assert usd["spent"] == pytest.approx(0.031) and usd["reserved"] == 0


# -- the last dollar, raced through HTTP --------------------------------------------------------------------
async def race(gw: Gateway, n: int) -> tuple[int, int]:
    c = client(gw)

    async def one() -> bool:
        try:
            await ask(c)
            return True
        except anthropic.RateLimitError as exc:
            assert msg(exc).startswith("daily budget of $0.50 for key agent-a reached")
            return False

    results = await asyncio.gather(*(one() for _ in range(n)))
    return results.count(True), results.count(False)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_hundred_requests_race_for_the_last_dollar(
    store: str, sim: SimUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        srv: RedisServer = request.getfixturevalue("redis_server")
        url = srv.url.replace("/0", "/2")
    # The 100 SDK clients, the gateway and the sim share one event loop here, so a store call can wait far
    # longer than the 0.25 s default store_timeout for its turn; this test is about the bound, not the timeout.
    cfg = config(url, {"budgets": [{"window": "day", "usd": 0.5}]}, budgets={"store_timeout": 10.0})
    async with gateway(cfg, sim, telemetry=None) as gw:
        served, refused = await race(gw, 100)
        usd = row(await usage_rows(gw), "key", "agent-a", "usd")
    assert served + refused == 100
    # Each call reserves its worst case (~$0.02) and settles $0.015: never more than the limit is spent, and
    # the budget is not left mostly idle either (at least what fits at the worst case).
    assert usd["spent"] <= 0.5 + 1e-9
    assert usd["spent"] == pytest.approx(0.015 * served)
    assert 0.5 // 0.021 <= served < 100
    assert usd["reserved"] == 0
    assert len(sim.requests) == served


# -- the store going away -----------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_store_down(policy: str, sim: SimUpstream, redis_factory: Any) -> None:
    srv: RedisServer = redis_factory()
    cfg = config(srv.url, {"budgets": [{"window": "day", "usd": 10.0}]},
                 budgets={"on_store_error": policy, "store_timeout": 0.2})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = client(gw)
        await ask(c)
        srv.stop()
        if policy == "closed":
            with pytest.raises(anthropic.APIStatusError) as err:
                await ask(c)
            assert err.value.status_code == 503
            assert "budget store unavailable" in msg(err.value)
            assert len(sim.requests) == 1
        else:
            await ask(c)  # served, accounted locally and journaled for replay
            assert len(sim.requests) == 2
        async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/health/deep") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["store"]["ok"] is False
