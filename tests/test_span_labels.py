"""Labels a stage attaches to a call (ctx.log_fields, e.g. the eval runner's case name) tag its SERVER span."""

from __future__ import annotations

import anthropic
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from conftest import ANTHROPIC_TEST_KEY
from otelgate.app import make_telemetry
from proxyutil import gateway, settings_for


class CaseLabel:
    name = "case-label"
    observer = True

    async def request(self, ctx) -> None:
        ctx.log_fields["eval.case"] = "weather-paris"
        ctx.log_fields["not.a.label"] = {"nested": "ignored"}


async def test_log_fields_become_server_span_attributes(sim, tmp_path):
    settings = settings_for({"budgets": {"store": f"sqlite:///{tmp_path}/s.db"}}, sim)
    exporter = InMemorySpanExporter()
    telemetry = make_telemetry(settings, extra_span_exporter=exporter)
    async with gateway(settings, telemetry=telemetry, extra_filters=[CaseLabel()]) as gw:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0)
        await client.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    telemetry.force_flush()
    server = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server and server[-1].attributes["eval.case"] == "weather-paris"
    assert "not.a.label" not in server[-1].attributes
