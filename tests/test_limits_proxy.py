"""Per-request caps and rate limits through the real proxy, seen from the official SDKs and from the sim (what
the upstream actually received)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from otelgate.config import key_hash
from otelgate.sim import SimUpstream
from proxyutil import gateway

KEY = "sk-ant-limited-SECRET"
MODEL = "test-model"  # $1000 per million tokens: one token costs $0.001
FIXED = json.dumps({"text": "one two three", "usage": {"input_tokens": 10, "output_tokens": 3}})


def config(tmp_path: Path, limits: dict[str, Any]) -> dict[str, Any]:
    return {
        "budgets": {"store": f"sqlite:///{tmp_path}/ledger.db",
                    "pricing": {MODEL: {"input": 1000.0, "output": 1000.0}}},
        "keys": [{"id": "capped", "key_sha256": key_hash(KEY), "limits": limits}],
    }


@pytest.fixture
async def sim() -> AsyncIterator[SimUpstream]:
    async with SimUpstream(chunks=2) as upstream:
        yield upstream


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for c in made:
        await c.close()


def ant(url: str, made: list[Any]) -> anthropic.AsyncAnthropic:
    c = anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0, default_headers={"x-sim-fault": FIXED})
    made.append(c)
    return c


def msg(exc: anthropic.APIStatusError | openai.APIStatusError) -> str:
    assert isinstance(exc.body, dict)
    error = exc.body.get("error", exc.body)
    return str(error["message"])


async def test_max_tokens_is_clamped_and_said(sim: SimUpstream, tmp_path: Path, clients: list[Any]) -> None:
    async with gateway(config(tmp_path, {"max_tokens_per_request": 100}), sim, telemetry=None) as gw:
        c = ant(gw.url, clients)
        raw = await c.messages.with_raw_response.create(
            model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-otelgate-max-tokens-clamped"] == "1000->100"
        assert (await raw.parse()).content[0].text == "one two three"
        assert sim.requests[-1].json()["max_tokens"] == 100  # the upstream saw the cap
        raw = await c.messages.with_raw_response.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert "x-otelgate-max-tokens-clamped" not in raw.headers
        assert sim.requests[-1].json()["max_tokens"] == 50
        # OpenAI: an unset cap gets the limit; a larger one is lowered in whichever field it came.
        oc = openai.AsyncOpenAI(base_url=gw.openai_url, api_key=KEY, max_retries=0)
        clients.append(oc)
        raw_o = await oc.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw_o.headers["x-otelgate-max-tokens-clamped"] == "unset->100"
        await oc.chat.completions.create(model=MODEL, max_completion_tokens=5000,
                                         messages=[{"role": "user", "content": "hi"}])
        assert sim.requests[-1].json()["max_completion_tokens"] == 100


async def test_max_tokens_refused(sim: SimUpstream, tmp_path: Path, clients: list[Any]) -> None:
    cfg = config(tmp_path, {"max_tokens_per_request": 100, "on_max_tokens": "refuse"})
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = ant(gw.url, clients)
        with pytest.raises(anthropic.BadRequestError) as err:
            await c.messages.create(model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
        assert msg(err.value) == "max_tokens 1,000 exceeds the per-request limit of 100 for key capped"
        assert sim.requests == []
        await c.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
        assert len(sim.requests) == 1


async def test_input_token_cap(sim: SimUpstream, tmp_path: Path, clients: list[Any]) -> None:
    async with gateway(config(tmp_path, {"max_input_tokens": 200}), sim, telemetry=None) as gw:
        c = ant(gw.url, clients)
        await c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "short"}])
        with pytest.raises(anthropic.BadRequestError) as err:
            await c.messages.create(model=MODEL, max_tokens=10,
                                    messages=[{"role": "user", "content": "word " * 400}])
        assert "exceeds the per-request limit of 200 input tokens for key capped" in msg(err.value)
        assert len(sim.requests) == 1


async def test_per_request_cost_cap(sim: SimUpstream, tmp_path: Path, clients: list[Any]) -> None:
    async with gateway(config(tmp_path, {"max_usd_per_request": 0.05}), sim, telemetry=None) as gw:
        c = ant(gw.url, clients)
        await c.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.BadRequestError) as err:  # 100 output tokens alone are $0.10
            await c.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
        text = msg(err.value)
        assert "exceeds the per-request limit of $0.05 for key capped" in text
        assert "max_tokens 100 on test-model" in text
        assert len(sim.requests) == 1


async def test_requests_per_minute(sim: SimUpstream, tmp_path: Path, clients: list[Any]) -> None:
    async with gateway(config(tmp_path, {"requests_per_minute": 2}), sim, telemetry=None) as gw:
        c = ant(gw.url, clients)
        for _ in range(2):
            await c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.RateLimitError) as err:
            await c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert msg(err.value).startswith("rate limit of 2 requests per minute for key capped reached; retry in ")
        assert 25 <= int(err.value.response.headers["retry-after"]) <= 30  # one request refills every 30 s
        assert len(sim.requests) == 2


async def test_tokens_per_minute_larger_than_the_bucket(
    sim: SimUpstream, tmp_path: Path, clients: list[Any]
) -> None:
    async with gateway(config(tmp_path, {"tokens_per_minute": 500}), sim, telemetry=None) as gw:
        c = ant(gw.url, clients)
        await c.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.RateLimitError) as err:  # asks more than a whole minute's allowance
            await c.messages.create(model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
        assert "rate limit of 500 tokens per minute for key capped reached" in msg(err.value)
        assert err.value.response.headers["x-should-retry"] == "false"  # waiting cannot help
        assert len(sim.requests) == 1


async def test_rate_limit_and_budget_are_one_all_or_nothing_check(
    sim: SimUpstream, tmp_path: Path, clients: list[Any]
) -> None:
    """The rate limit is checked inside the budget reserve (one store call): a request the budget refuses takes
    nothing from the rate buckets, so two small requests still pass after it, and the third is rate limited."""
    cfg = config(tmp_path, {"requests_per_minute": 2})
    cfg["keys"][0]["budgets"] = [{"window": "day", "usd": 0.08}]
    async with gateway(cfg, sim, telemetry=None) as gw:
        c = ant(gw.url, clients)
        with pytest.raises(anthropic.RateLimitError) as err:  # worst case over $0.10: the budget refuses
            await c.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
        assert msg(err.value).startswith("daily budget of $0.08 for key capped reached")
        for _ in range(2):
            await c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.RateLimitError) as err:
            await c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert msg(err.value).startswith("rate limit of 2 requests per minute for key capped reached; retry in ")
        assert len(sim.requests) == 2
