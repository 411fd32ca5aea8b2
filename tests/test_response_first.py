"""The agent gets its answer before settlement and telemetry run: they never add to its latency."""

from __future__ import annotations

import asyncio

import anthropic

from conftest import ANTHROPIC_TEST_KEY
from proxyutil import gateway


class SlowBookkeeping:
    """A filter whose `done` cannot finish until the test lets it: stands for a slow store or exporter."""

    name = "slow-bookkeeping"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.finished = asyncio.Event()

    async def request(self, ctx) -> None:
        return None

    async def done(self, ctx) -> None:
        await self.release.wait()
        self.finished.set()


async def test_non_streaming_answer_arrives_before_done_runs(sim, tmp_path):
    slow = SlowBookkeeping()
    config = {"budgets": {"store": f"sqlite:///{tmp_path}/r.db"}}
    async with gateway(config, sim, telemetry=None, extra_filters=[slow]) as gw:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0, timeout=10)
        message = await asyncio.wait_for(
            client.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]), 10
        )
        assert message.content and not slow.finished.is_set(), "the answer came while done() was still waiting"
        slow.release.set()
        await asyncio.wait_for(slow.finished.wait(), 10)
