"""Circuit state and in-flight requests reach /metrics (read from the upstreams at collection time)."""

from __future__ import annotations

import aiohttp
import anthropic

from conftest import ANTHROPIC_TEST_KEY
from proxyutil import gateway


async def test_circuit_state_and_inflight_gauges_are_exported(sim, tmp_path):
    async with gateway({"budgets": {"store": f"sqlite:///{tmp_path}/g.db"}}, sim) as gw:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0)
        await client.messages.create(model="claude-gauge", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as response:
            text = await response.text()
    circuit = [line for line in text.splitlines() if line.startswith("otelgate_circuit_state{")]
    assert any('gen_ai_request_model="claude-gauge"' in line and line.endswith(" 0") for line in circuit), circuit
    assert any(line.startswith("otelgate_inflight") for line in text.splitlines())
