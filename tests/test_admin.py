"""The admin API through the real proxy: it needs the admin key, shows spend per key/team/global/window,
resets a budget, and never shows a secret."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from otelgate.config import key_hash
from otelgate.sim import SimUpstream
from proxyutil import Gateway, gateway

ADMIN = "admin-key-do-not-print-0123456789"
KEY = "sk-ant-agent-SECRET-value"
UPSTREAM_KEY = "sk-ant-upstream-SECRET-value"
FIXED = json.dumps({"text": "ok", "usage": {"input_tokens": 100, "output_tokens": 20}})


def config(tmp_path: Path, admin: str | None = ADMIN) -> dict[str, Any]:
    return {
        "auth": {"admin_key": admin, "mode": "virtual_keys"},
        "upstreams": {"anthropic": {"api_key": UPSTREAM_KEY}},
        "budgets": {"store": f"sqlite:///{tmp_path}/ledger.db", "global": [{"window": "month", "usd": 1000.0}],
                    "pricing": {"test-model": {"input": 1000.0, "output": 1000.0}}},
        "keys": [{"id": "agent", "key_sha256": key_hash(KEY), "team": "blue",
                  "limits": {"max_tokens_per_request": 500},
                  "budgets": [{"window": "day", "usd": 10.0, "tokens": 100000}]}],
        "teams": [{"id": "blue", "budgets": [{"hours": 24, "usd": 50.0}]}],
    }


@pytest.fixture
async def sim() -> AsyncIterator[SimUpstream]:
    async with SimUpstream(chunks=2) as upstream:
        yield upstream


async def call(gw: Gateway) -> None:
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0,
                                        default_headers={"x-sim-fault": FIXED}) as c:
        await c.messages.create(model="test-model", max_tokens=50, messages=[{"role": "user", "content": "hi"}])


async def get(gw: Gateway, path: str, method: str = "GET", **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.request(method, gw.url + path, headers=headers) as resp:
        return resp.status, await resp.text()


def no_secret(text: str) -> None:
    for secret in (ADMIN, KEY, UPSTREAM_KEY, "SECRET"):
        assert secret not in text


async def test_admin_needs_the_admin_key(sim: SimUpstream, tmp_path: Path) -> None:
    async with gateway(config(tmp_path), sim, telemetry=None) as gw:
        for path, method in (("/admin/usage", "GET"), ("/admin/keys", "GET"),
                             ("/admin/budgets/key/agent/reset", "POST")):
            status, body = await get(gw, path, method)
            assert status == 401 and "admin key required" in body
            status, body = await get(gw, path, method, **{"x-admin-key": ADMIN + "x"})
            assert status == 401
            status, body = await get(gw, path, method, authorization=f"Bearer {KEY}")  # an agent key is not it
            assert status == 401
            no_secret(body)
        assert (await get(gw, "/admin/usage", authorization=f"Bearer {ADMIN}"))[0] == 200
        assert (await get(gw, "/admin/usage", **{"x-admin-key": ADMIN}))[0] == 200


async def test_admin_routes_do_not_exist_without_an_admin_key(sim: SimUpstream, tmp_path: Path) -> None:
    async with gateway(config(tmp_path, admin=None), sim, telemetry=None) as gw:
        for path, method in (("/admin/usage", "GET"), ("/admin/keys", "GET"),
                             ("/admin/budgets/key/agent/reset", "POST")):
            status, _ = await get(gw, path, method, **{"x-admin-key": ADMIN})
            assert status == 404


async def test_usage_keys_and_reset(sim: SimUpstream, tmp_path: Path) -> None:
    async with gateway(config(tmp_path), sim, telemetry=None) as gw:
        auth = {"x-admin-key": ADMIN}
        status, text = await get(gw, "/admin/usage", **auth)
        assert status == 200
        before = json.loads(text)["usage"]
        assert {(r["scope"], r["id"], r["window"], r["unit"]) for r in before} == {
            ("key", "agent", "day@UTC", "usd"), ("key", "agent", "day@UTC", "tokens"),
            ("team", "blue", "hours:24", "usd"), ("global", "all", "month@UTC", "usd"),
        }
        assert all(r["spent"] == 0 for r in before)
        await call(gw)
        await call(gw)
        status, text = await get(gw, "/admin/usage", **auth)
        no_secret(text)
        rows = {(r["scope"], r["unit"]): r for r in json.loads(text)["usage"]}
        usd = rows[("key", "usd")]
        assert usd["spent"] == pytest.approx(0.24)  # 2 x 120 tokens at $1000/M
        assert usd["limit"] == 10.0 and usd["remaining"] == pytest.approx(9.76) and usd["reserved"] == 0
        assert usd["reset_at"].endswith("T00:00:00Z")
        assert rows[("key", "tokens")]["spent"] == 240
        assert rows[("team", "usd")]["spent"] == pytest.approx(0.24)
        assert rows[("global", "usd")]["spent"] == pytest.approx(0.24)
        only = json.loads((await get(gw, "/admin/usage?key=agent", **auth))[1])["usage"]
        assert {r["scope"] for r in only} == {"key", "team", "global"}

        status, text = await get(gw, "/admin/keys", **auth)
        assert status == 200
        no_secret(text)
        keys = json.loads(text)["keys"]
        assert keys == [{"id": "agent", "team": "blue", "key_sha256": key_hash(KEY),
                         "limits": {"max_tokens_per_request": 500, "on_max_tokens": "clamp"},
                         "budgets": [{"window": "day", "usd": 10.0, "tokens": 100000}], "allowed_tools": None}]

        status, text = await get(gw, "/admin/budgets/key/agent/reset", "POST", **auth)
        assert status == 200
        after = {(r["scope"], r["unit"]): r for r in json.loads(text)["usage"]}
        assert after[("key", "usd")]["spent"] == 0 and after[("key", "tokens")]["spent"] == 0
        rows = {(r["scope"], r["unit"]): r for r in json.loads((await get(gw, "/admin/usage", **auth))[1])["usage"]}
        assert rows[("team", "usd")]["spent"] == pytest.approx(0.24)  # only the key's budget was reset
        status, _ = await get(gw, "/admin/budgets/planet/x/reset", "POST", **auth)
        assert status == 400
