"""Providers and exporters, configured by the standard OTEL_* variables.

Nothing here touches the network at construction. Exporters run on the SDK's background threads behind bounded
queues; every exporter is wrapped so a failed batch is counted, and the batch processors count what they drop,
which `otelgate.telemetry.export_failures` / `otelgate.telemetry.dropped` and `Telemetry.health()` report.
OpenTelemetry's globals are left alone: each `Telemetry` owns its providers (tests run several side by side).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from otelgate import __version__
from otelgate.telemetry import semconv as sc
from otelgate.telemetry.aggregate import LocalMetrics

# False: the SDK's own OTLP encoders for http/protobuf too — an escape hatch (OTELGATE_OTLP_SDK_ENCODER=true) and
# what bench/telemetry_overhead.py compares against.
USE_WIRE_ENCODER = os.environ.get("OTELGATE_OTLP_SDK_ENCODER", "").strip().lower() not in ("1", "true", "yes")

# Process-wide: one instance id per process, as service.instance.id requires.
INSTANCE_ID = str(uuid.uuid4())


@dataclass
class ExportStats:
    """Counters shared by the wrappers (written from exporter threads; int += under the GIL is enough here)."""

    failures: dict[str, int] = field(
        default_factory=lambda: {sc.SIGNAL_TRACES: 0, sc.SIGNAL_METRICS: 0, sc.SIGNAL_LOGS: 0}
    )
    dropped: dict[str, int] = field(
        default_factory=lambda: {sc.SIGNAL_TRACES: 0, sc.SIGNAL_METRICS: 0, sc.SIGNAL_LOGS: 0}
    )
    exports: int = 0
    last_ok: bool = True
    last_error_time: float | None = None

    def record(self, signal: str, ok: bool) -> None:
        self.exports += 1
        self.last_ok = ok
        if not ok:
            self.failures[signal] += 1
            self.last_error_time = time.time()


def _env(name: str, signal: str | None = None) -> str | None:
    if signal:
        value = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}")
        if value:
            return value
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{name}") or None


def otlp_endpoint(signal: str) -> str | None:
    return _env("ENDPOINT", signal)


def otlp_protocol(signal: str) -> str:
    return (_env("PROTOCOL", signal) or "http/protobuf").strip().lower()


def build_resource() -> Resource:
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (which wins over our default).
    attributes: dict[str, Any] = {
        sc.SERVICE_VERSION: __version__,
        sc.SERVICE_INSTANCE_ID: INSTANCE_ID,
    }
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes[sc.SERVICE_NAME] = "otelgate"
    resource = Resource.create(attributes)
    if not os.environ.get("OTEL_SERVICE_NAME") and resource.attributes.get(sc.SERVICE_NAME) == "unknown_service":
        resource = resource.merge(Resource({sc.SERVICE_NAME: "otelgate"}))
    return resource


# --- counting wrappers -------------------------------------------------------------------------------------------
class CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, stats: ExportStats) -> None:
        self._inner, self._stats = inner, stats

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        self._stats.record(sc.SIGNAL_TRACES, result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class CountingMetricExporter(MetricExporter):
    def __init__(self, inner: MetricExporter, stats: ExportStats) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner, self._stats = inner, stats

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            result = MetricExportResult.FAILURE
        self._stats.record(sc.SIGNAL_METRICS, result is MetricExportResult.SUCCESS)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class CountingLogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter, stats: ExportStats) -> None:
        self._inner, self._stats = inner, stats

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        try:
            result = self._inner.export(batch)
        except Exception:
            result = LogRecordExportResult.FAILURE
        self._stats.record(sc.SIGNAL_LOGS, result is LogRecordExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _queue_full(processor: Any) -> bool:
    # The SDK drops silently (a log line) when its deque is full; peek at it to count the drop. Guarded: if a
    # future SDK renames these internals we only lose the count, never a request.
    inner = getattr(processor, "_batch_processor", None)
    queue = getattr(inner, "_queue", None)
    limit = getattr(inner, "_max_queue_size", None)
    return queue is not None and limit is not None and len(queue) >= limit


class CountingBatchSpanProcessor(BatchSpanProcessor):
    def __init__(self, exporter: SpanExporter, stats: ExportStats) -> None:
        super().__init__(exporter)
        self._stats = stats
        # Once per span: the inner batch processor resolved here rather than through getattr chains per call.
        inner = getattr(self, "_batch_processor", None)
        direct = inner is not None and all(hasattr(inner, a) for a in ("_queue", "_max_queue_size", "emit"))
        self._inner = inner if direct else None

    def on_end(self, span: ReadableSpan) -> None:
        inner = self._inner
        if inner is None:  # a future SDK without these internals: the generic path
            if _queue_full(self):
                self._stats.dropped[sc.SIGNAL_TRACES] += 1
            super().on_end(span)
            return
        if len(inner._queue) >= inner._max_queue_size:
            self._stats.dropped[sc.SIGNAL_TRACES] += 1
        if span.context.trace_flags.sampled:  # what BatchSpanProcessor.on_end checks before emitting
            inner.emit(span)


class CountingBatchLogProcessor(BatchLogRecordProcessor):
    def __init__(self, exporter: LogRecordExporter, stats: ExportStats) -> None:
        super().__init__(exporter)
        self._stats = stats

    def on_emit(self, log_record: Any) -> None:
        if _queue_full(self):
            self._stats.dropped[sc.SIGNAL_LOGS] += 1
        super().on_emit(log_record)


class AccessRecordProcessor(CountingBatchLogProcessor):
    """The bounded batch processor fed `otlp_http.AccessRecord`s directly by the access log (no SDK LogRecord)."""

    def emit_record(self, record: Any) -> None:
        if _queue_full(self):
            self._stats.dropped[sc.SIGNAL_LOGS] += 1
        self._batch_processor.emit(record)


# --- exporters from the environment --------------------------------------------------------------------------------
def _span_exporter(protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpan

        return GrpcSpan()
    if not USE_WIRE_ENCODER:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpan

        return HttpSpan()
    # http/protobuf: the SDK exporter with otelgate's wire encoder (otlp_http.py).
    from otelgate.telemetry.otlp_http import WireSpanExporter

    return WireSpanExporter()


def _metric_exporter(protocol: str) -> MetricExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetric

        return GrpcMetric()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetric

    return HttpMetric()


def _log_exporter(protocol: str) -> LogRecordExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLog

        return GrpcLog()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLog

    return HttpLog()


def _exporter_enabled(signal: str) -> bool:
    # OTEL_TRACES_EXPORTER=none (etc.) turns one signal off, as in any SDK.
    choice = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower()
    return choice != "none" and otlp_endpoint(signal) is not None


@dataclass
class Providers:
    resource: Resource
    stats: ExportStats
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider | None
    span_processors: list[SpanProcessor]
    description: str  # for health(): which exporter, where
    local_metrics: LocalMetrics
    access_records: AccessRecordProcessor | None = None  # OTLP/HTTP logs: access records go here, not to the SDK
    shutdown_hooks: list[Callable[[], None]] = field(default_factory=list)

    def shutdown(self, timeout_millis: int) -> None:
        # Called on a daemon thread (see Telemetry.shutdown): each step is bounded by the SDK's own timeouts
        # and the caller stops waiting after `timeout_millis` anyway.
        for processor in self.span_processors:
            try:
                if isinstance(processor, BatchSpanProcessor):
                    processor._batch_processor.shutdown(timeout_millis=timeout_millis)
                else:
                    processor.shutdown()
            except Exception:
                pass
        try:
            self.meter_provider.shutdown(timeout_millis=timeout_millis)
        except Exception:
            pass
        if self.logger_provider is not None:
            try:
                self.logger_provider.shutdown()
            except Exception:
                pass
        for hook in self.shutdown_hooks:
            try:
                hook()
            except Exception:
                pass


def build_providers(
    readers: Sequence[MetricReader],
    extra_span_exporter: SpanExporter | None = None,
) -> Providers:
    resource = build_resource()
    stats = ExportStats()
    described: list[str] = []

    # Tracer provider: the sampler comes from OTEL_TRACES_SAMPLER (parent-based always-on by default).
    tracer_provider = TracerProvider(resource=resource)
    processors: list[SpanProcessor] = []
    if _exporter_enabled(sc.SIGNAL_TRACES):
        protocol = otlp_protocol(sc.SIGNAL_TRACES)
        processors.append(CountingBatchSpanProcessor(CountingSpanExporter(_span_exporter(protocol), stats), stats))
        described.append(f"traces: otlp {protocol} {otlp_endpoint(sc.SIGNAL_TRACES)}")
    if extra_span_exporter is not None:
        processors.append(SimpleSpanProcessor(extra_span_exporter))
    for processor in processors:
        tracer_provider.add_span_processor(processor)

    all_readers = list(readers)
    if _exporter_enabled(sc.SIGNAL_METRICS):
        protocol = otlp_protocol(sc.SIGNAL_METRICS)
        interval = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000"))
        timeout = float(os.environ.get("OTEL_METRIC_EXPORT_TIMEOUT", "30000"))
        exporter = CountingMetricExporter(_metric_exporter(protocol), stats)
        all_readers.append(
            PeriodicExportingMetricReader(exporter, export_interval_millis=interval, export_timeout_millis=timeout)
        )
        described.append(f"metrics: otlp {protocol} {otlp_endpoint(sc.SIGNAL_METRICS)}")
    meter_provider = MeterProvider(resource=resource, metric_readers=all_readers)
    local_metrics = LocalMetrics(sc.INSTRUMENTATION_SCOPE)
    for reader in all_readers:
        local_metrics.attach(reader, resource)

    logger_provider: LoggerProvider | None = None
    access_records: AccessRecordProcessor | None = None
    if _exporter_enabled(sc.SIGNAL_LOGS):
        protocol = otlp_protocol(sc.SIGNAL_LOGS)
        logger_provider = LoggerProvider(resource=resource)
        access_records = _access_record_processor(protocol, resource, stats)
        logger_provider.add_log_record_processor(
            access_records or CountingBatchLogProcessor(CountingLogExporter(_log_exporter(protocol), stats), stats)
        )
        described.append(f"logs: otlp {protocol} {otlp_endpoint(sc.SIGNAL_LOGS)}")

    return Providers(
        resource=resource,
        stats=stats,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        span_processors=processors,
        description="; ".join(described) or "none",
        local_metrics=local_metrics,
        access_records=access_records,
    )


def _access_record_processor(protocol: str, resource: Resource, stats: ExportStats) -> AccessRecordProcessor | None:
    """OTLP/HTTP: access records encoded by otelgate; None (the SDK's log pipeline) for grpc, or if the SDK's
    internals this relies on are not there."""
    if protocol == "grpc" or not USE_WIRE_ENCODER:
        return None
    from otelgate.telemetry.otlp_http import WireLogExporter

    exporter = WireLogExporter(resource, sc.INSTRUMENTATION_SCOPE, sc.ACCESS_LOGGER)
    processor = AccessRecordProcessor(CountingLogExporter(exporter, stats), stats)
    if not hasattr(exporter, "_client") or not hasattr(processor, "_batch_processor"):
        processor.shutdown()
        return None
    return processor


def run_bounded(fn: Callable[[], None], timeout: float) -> threading.Thread:
    """Run fn on a daemon thread (a stuck exporter must not keep the process alive at exit)."""
    thread = threading.Thread(target=fn, name="otelgate-telemetry-shutdown", daemon=True)
    thread.start()
    return thread
