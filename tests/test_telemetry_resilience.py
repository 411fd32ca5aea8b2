"""An exporter that is down, refusing or stalled changes nothing for requests; failures and drops are counted."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import aiohttp
import anthropic
import pytest

from conftest import ANTHROPIC_TEST_KEY
from otlp_receiver import OtlpReceiver
from proxyutil import gateway, wait_until

CALLS = 20


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("mode", ["closed", "refuse", "stall"])
async def test_broken_exporter_never_slows_requests(mode: str, sim, tmp_path: Path, monkeypatch) -> None:
    async with OtlpReceiver(mode="refuse" if mode == "closed" else mode) as rx:
        endpoint = f"http://127.0.0.1:{closed_port()}" if mode == "closed" else rx.endpoint
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
        monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
        monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
        sim.script([{"text": "ok", "chunks": 2}] * CALLS)
        async with gateway({"budgets": {"store": f"sqlite:///{tmp_path}/b.db"}}, sim) as gw:
            client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0)
            slowest = 0.0
            for _ in range(CALLS):
                started = time.perf_counter()
                async with client.messages.stream(
                    model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
                ) as stream:
                    await stream.get_final_message()
                slowest = max(slowest, time.perf_counter() - started)
            # The exporter timeout is 1 s: a request that waited on it would take at least that.
            assert slowest < 0.5, f"a request took {slowest:.3f}s with the exporter {mode}"

            tel = gw.telemetry
            stats = tel.providers.stats
            assert await wait_until(lambda: stats.failures["traces"] and stats.failures["metrics"], within=10), stats
            health = tel.health()
            assert health["ok"] is False and "otlp" in health["exporter"]
            if mode == "stall":
                # 20 calls x 3+ spans into a queue of 8 behind a stalled export: the overflow is dropped, counted.
                assert health["dropped"] > 0
            async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as response:
                text = await response.text()
            failures = [
                line for line in text.splitlines() if line.startswith("otelgate_telemetry_export_failures_total")
            ]
            assert any('signal="traces"' in line and not line.endswith(" 0") for line in failures), failures
            assert "otelgate_telemetry_dropped_total" in text

            started = time.perf_counter()
            await tel.shutdown(timeout=1.5)
            assert time.perf_counter() - started < 3.0, "shutdown must be bounded even with a stuck exporter"
