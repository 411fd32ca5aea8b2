"""OTLP/HTTP exporters for spans and access-log records that encode with `otlp_wire` instead of the SDK's encoder.

Everything else is the SDK's OTLP/HTTP exporter: endpoint, headers, timeout, compression, certificates and retries
all come from the same OTEL_EXPORTER_OTLP_* variables, and the bytes go through its HTTP client. Only http/protobuf
takes this path; grpc keeps the SDK exporters (setup.py chooses).

Access-log records skip the SDK's logs pipeline as well: instead of `Logger.emit` (an SDK LogRecord, a copy of it
and its context in `BatchLogRecordProcessor.on_emit`, and the body re-copied without None values) the request path
queues one small `AccessRecord` (the fields dict it already built for the stdout line, shared, never copied) into the
same bounded batch processor, and the export thread encodes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otelgate.telemetry import otlp_wire

logger = logging.getLogger(__name__)

SEVERITY_INFO = 9  # SeverityNumber.INFO


def _send(exporter: Any, records: Sequence[Any], encode: Any) -> bool | None:
    """Encode and post through the SDK exporter's own HTTP client; None when that client is not there (a future
    SDK renamed it): the caller then uses the SDK's export unchanged."""
    client = getattr(exporter, "_client", None)
    if client is None or getattr(exporter, "_shutdown", False):
        return None
    try:
        data = encode(records)
    except Exception as exc:
        logger.error("Failed to encode OTLP batch: %s", exc)
        return False
    limit = getattr(exporter, "_max_request_size", 0) or 0
    if 0 < limit < len(data):
        logger.warning("Dropping OTLP batch: %d bytes exceeds max_request_size %d", len(data), limit)
        return False
    return bool(client.export(data).success)


class WireSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter with otelgate's encoder."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = _send(self, spans, otlp_wire.encode_spans)
        if ok is None:
            return super().export(spans)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class AccessRecord:
    """One access-log record as queued by the request path: timestamps, the chat span's ids, and the fields."""

    __slots__ = ("fields", "flags", "span_id", "time_ns", "trace_id")

    def __init__(self, time_ns: int, trace_id: int, span_id: int, flags: int, fields: dict[str, Any]) -> None:
        self.time_ns, self.trace_id, self.span_id, self.flags, self.fields = time_ns, trace_id, span_id, flags, fields


class WireLogExporter(OTLPLogExporter):
    """The SDK's OTLP/HTTP log exporter for `AccessRecord`s: INFO, event_name, the fields (minus None) as a
    structured body, under the provider's resource and otelgate's instrumentation scope — what `Logger.emit`
    with the same arguments produces."""

    def __init__(self, resource: Resource, scope_name: str, event_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resource = resource
        self._scope = InstrumentationScope(scope_name)
        self._event_name = event_name

    def _encode(self, batch: Sequence[AccessRecord]) -> bytes:
        event = self._event_name
        encoded = [
            otlp_wire.log_record(
                r.time_ns, r.time_ns, SEVERITY_INFO, "INFO", r.fields, r.trace_id, r.span_id, r.flags, event, True
            )
            for r in batch
        ]
        return otlp_wire.encode_logs([(self._resource, [(self._scope, encoded)])])

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        ok = _send(self, batch, self._encode)
        if ok is None:
            logger.error("OTLP log exporter without an HTTP client: access records dropped")
            return LogRecordExportResult.FAILURE
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE
