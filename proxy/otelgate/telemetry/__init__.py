"""OpenTelemetry for otelgate: one span tree, GenAI + gateway metrics and an access log per call.

tel = Telemetry.from_settings(settings)      # reads OTEL_*; no network at construction
chain = [tel.filter, ...]                     # first in the chain, so its `done` runs last
app.router.add_get("/metrics", tel.metrics_handler)
await tel.shutdown()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web

from otelgate.telemetry import semconv
from otelgate.telemetry.content import capture_enabled
from otelgate.telemetry.logs import AccessLog
from otelgate.telemetry.metrics import CircuitSource, InflightSource, Metrics
from otelgate.telemetry.prometheus import CONTENT_TYPE, PullReader, render
from otelgate.telemetry.setup import Providers, build_providers, run_bounded
from otelgate.telemetry.spans import CallSpans, SpanWriter, inject
from otelgate.telemetry.tools import SessionTracker, ToolTracker

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from otelgate.config import Settings, TelemetryConfig
    from otelgate.context import RequestContext
    from otelgate.filters.telemetry import TelemetryFilter

__all__ = ["Telemetry", "semconv"]

STATE_KEY = "telemetry"  # ctx.state entry of the telemetry filter


class Telemetry:
    _by_settings: ClassVar[dict[int, Telemetry]] = {}

    def __init__(self, settings: Settings, extra_span_exporter: SpanExporter | None = None) -> None:
        from otelgate.config import TelemetryConfig

        self.settings = settings
        self.config: TelemetryConfig = getattr(settings, "telemetry", None) or TelemetryConfig()
        self.capture_content = capture_enabled(self.config.capture_content)
        self._reader = PullReader() if self.config.prometheus else None
        self.providers: Providers = build_providers([self._reader] if self._reader else [], extra_span_exporter)
        self.tracer = self.providers.tracer_provider.get_tracer(semconv.INSTRUMENTATION_SCOPE)
        self.spans = SpanWriter(self.providers.tracer_provider, semconv.INSTRUMENTATION_SCOPE)
        self.meter = self.providers.meter_provider.get_meter(semconv.INSTRUMENTATION_SCOPE)
        self.metrics = Metrics(self.meter, self.config, self.providers.stats, self.providers.local_metrics)
        self.tools = ToolTracker(self.config.tool_state_max_conversations, self.config.tool_state_ttl_seconds)
        self.sessions = SessionTracker(self.config.tool_state_max_conversations, self.config.tool_state_ttl_seconds)
        self.access_log = AccessLog(
            self.providers.stats,
            to_stdout=self.config.log_requests,
            logger_provider=self.providers.logger_provider,
            record_sink=self.providers.access_records,
        )
        upstreams = getattr(settings, "upstreams", None)
        self._propagate = {
            name: bool(getattr(getattr(upstreams, name, None), "propagate_trace_context", False))
            for name in ("anthropic", "openai")
        }
        self._filter: TelemetryFilter | None = None
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, *, extra_span_exporter: SpanExporter | None = None
    ) -> Telemetry:
        """Idempotent per process for the same settings object (a second call returns the same instance)."""
        if settings is None:
            from otelgate.config import Settings

            settings = Settings()
        existing = cls._by_settings.get(id(settings))
        if (
            existing is not None
            and not existing._closed
            and existing.settings is settings
            and extra_span_exporter is None
        ):
            return existing
        instance = cls(settings, extra_span_exporter)
        cls._by_settings[id(settings)] = instance
        return instance

    # --- for the app --------------------------------------------------------------------------------------
    @property
    def filter(self) -> TelemetryFilter:
        if self._filter is None:
            from otelgate.filters.telemetry import TelemetryFilter

            self._filter = TelemetryFilter(self)
        return self._filter

    async def metrics_handler(self, request: web.Request) -> web.Response:
        if self._reader is None:
            return web.Response(status=404, text="metrics are disabled (telemetry.prometheus: false)\n")
        text = render(self._reader.scrape())
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    def health(self) -> dict[str, Any]:
        stats = self.providers.stats
        recent_error = stats.last_error_time is not None and time.time() - stats.last_error_time < 120
        return {
            "ok": stats.last_ok or not recent_error,
            "exporter": self.providers.description,
            "failures": sum(stats.failures.values()),
            "dropped": sum(stats.dropped.values()),
        }

    def propagates(self, provider: str) -> bool:
        return self._propagate.get(provider, False)

    def inject_upstream_headers(self, ctx: RequestContext) -> dict[str, str]:
        """W3C traceparent/tracestate of the call's chat span, for the upstream request (when configured)."""
        spans: CallSpans | None = ctx.state.get(STATE_KEY)
        return inject(spans) if spans is not None else {}

    def set_budget_gauge(self, scope: str, id: str, window: str, unit: str, spent: float, limit: float) -> None:
        """Budget state for otelgate_budget_{utilization,spent,limit}{scope,id,window,unit}: unit is usd|tokens."""
        self.metrics.set_budget(scope, id, window, unit, spent, limit)

    def register_circuit_source(self, fn: CircuitSource) -> None:
        """fn() yields (server_address, model or None, state) with state 0 closed, 1 half-open, 2 open."""
        self.metrics.add_circuit_source(fn)

    def register_inflight_source(self, fn: InflightSource) -> None:
        """fn() returns an int, or yields (server_address, count)."""
        self.metrics.add_inflight_source(fn)

    def force_flush(self, timeout_millis: int = 5000) -> None:
        """Push everything buffered now (tests, `otelgate demo`); blocks up to the timeout per signal."""
        self.access_log.flush(timeout_millis / 1000)
        self.providers.tracer_provider.force_flush(timeout_millis)
        self.providers.meter_provider.force_flush(timeout_millis)
        if self.providers.logger_provider is not None:
            self.providers.logger_provider.force_flush(timeout_millis)

    async def shutdown(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a bound, not a cancel scope
        """Flush and stop exporters, waiting at most `timeout` seconds (a stuck exporter is abandoned)."""
        if self._closed:
            return
        self._closed = True
        if self._by_settings.get(id(self.settings)) is self:
            del self._by_settings[id(self.settings)]
        self.access_log.close()
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def work() -> None:
            try:
                self.providers.shutdown(int(timeout * 1000))
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be gone if we stopped waiting
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        run_bounded(work, timeout)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            pass
