"""A real Prometheus scrapes the gateway's /metrics; PromQL finds the series dashboards are written against."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opsutil import prom_query, prometheus, wait_until, write_prometheus_config
from proxyutil import gateway
from test_telemetry_e2e import SESSION, agent_run


def value(base_url: str, expr: str) -> float | None:
    status, body = prom_query(base_url, expr)
    assert status == 200, body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


async def test_prometheus_scrapes_the_documented_series(sim, tmp_path: Path, monkeypatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    async with gateway({"budgets": {"store": f"sqlite:///{tmp_path}/b.db"}}, sim) as gw:
        tel = gw.telemetry
        tel.set_budget_gauge("key", "support-bot", "day", "usd", 2.5, 10.0)
        tel.register_circuit_source(lambda: [("127.0.0.1", None, 0)])
        tel.register_inflight_source(lambda: 0)
        await agent_run(gw, sim)
        target = gw.url.removeprefix("http://")
        config = write_prometheus_config(tmp_path / "prometheus.yml", scrape={"otelgate": [target]})
        expectations = {
            'sum(gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",'
            'gen_ai_provider_name="anthropic",gen_ai_request_model="claude-test"})': 2,
            'sum(gen_ai_client_token_usage_sum{gen_ai_token_type="input"})': 250,
            'sum(gen_ai_client_token_usage_sum{gen_ai_token_type="output"})': 21,
            'count(gen_ai_client_operation_time_to_first_chunk_seconds_bucket{le="81.92"})': 1,
            "sum(gen_ai_client_operation_time_per_output_chunk_seconds_count)": 1,
            'sum(otelgate_upstream_responses_total{http_response_status_code="529"})': 1,
            "sum(otelgate_upstream_retries_total)": 1,
            'otelgate_tool_calls_total{gen_ai_tool_name="get_weather",outcome="ok"}': 1,
            "sum(otelgate_tool_duration_seconds_count)": 1,
            'otelgate_budget_utilization{scope="key",id="support-bot",window="day",unit="usd"}': 0.25,
            'otelgate_budget_spent{id="support-bot"}': 2.5,
            'otelgate_budget_limit{id="support-bot"}': 10.0,
            'otelgate_circuit_state{server_address="127.0.0.1"}': 0,
            "otelgate_inflight": 0,
            "sum(otelgate_sessions_total)": 1,
            "sum(otelgate_session_calls_count)": 2,
            'otelgate_telemetry_export_failures_total{signal="traces"}': 0,
            'otelgate_telemetry_dropped_total{signal="traces"}': 0,
            'count(target_info{service_name="otelgate"})': 1,
        }

        def check() -> None:
            with prometheus(tmp_path, config) as prom:
                wait_until(lambda: value(prom.url, 'up{job="otelgate"}') == 1, timeout=20)
                for expr, expected in expectations.items():
                    assert value(prom.url, expr) == expected, expr
                # otelgate.key is a label on the cost and rejection counters; keys are hashes, never the key.
                status, body = prom_query(prom.url, 'count by (__name__) ({otelgate_key=~"sk-.*"})')
                assert status == 200 and body["data"]["result"] == []

        # Prometheus scrapes the gateway served by this event loop: query it from a thread.
        await asyncio.to_thread(check)
        assert SESSION
