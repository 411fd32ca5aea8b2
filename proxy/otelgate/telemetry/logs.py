"""One access-log record per call: a JSON line on stdout, and an OTLP log record joined to the trace.

The request path only builds a small dict and enqueues it; a listener thread formats and writes, so a slow or
blocked stdout never stalls a request (a full queue drops the line and counts it). Never a secret; message
content never appears here at all (content capture only feeds span attributes).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from opentelemetry._logs import SeverityNumber

from otelgate.telemetry import semconv as sc

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk._logs import LoggerProvider

    from otelgate.context import RequestContext
    from otelgate.telemetry.setup import ExportStats

FIELDS_ATTR = "otelgate_fields"
_VERDICT_KEYS = ("flagged", "action", "location", "rule", "rules", "score")


class JsonFormatter(logging.Formatter):
    """A JSON object per record: the access fields when present, else time, level, logger and message."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS_ATTR, None)
        if fields is None:
            fields = {"level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                fields["exc"] = self.formatException(record.exc_info)
        out = {"ts": round(record.created, 6), **fields}
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    def __init__(self, q: queue.Queue[Any], stats: ExportStats) -> None:
        super().__init__(q)
        self._stats = stats

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # the listener formats; keep the request path cheap

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._stats.dropped[sc.SIGNAL_LOGS] += 1


def _verdict(verdict: dict[str, Any]) -> dict[str, Any]:
    out = {k: verdict[k] for k in _VERDICT_KEYS if k in verdict}
    rules = out.get("rules")
    if isinstance(rules, list):  # rule ids only: a rule object may quote the matched text
        out["rules"] = [r.get("id") or r.get("name") if isinstance(r, dict) else r for r in rules]
    return out


def access_fields(
    ctx: RequestContext, trace_id: str, span_id: str, end_ns: int, ttfc_s: float | None
) -> dict[str, Any]:
    usage = ctx.result.usage
    principal = ctx.principal
    fields: dict[str, Any] = {
        "level": "info",
        "logger": sc.ACCESS_LOGGER,
        "trace_id": trace_id,
        "span_id": span_id,
        "request_id": ctx.request_id,
        "key": principal.key_id if principal else None,
        "team": principal.team if principal else None,
        "provider": ctx.provider.name,
        "route": ctx.route.kind,
        "model": ctx.model,
        "served_model": ctx.served_model or ctx.result.response_model,
        "stream": ctx.stream,
        "status": ctx.status,
        "outcome": ctx.outcome,
        "input_tokens": usage.total_input if usage.known else None,
        "output_tokens": usage.output_tokens if usage.known else None,
        "cache_read_tokens": usage.cache_read_tokens if usage.known else None,
        "cache_write_tokens": usage.cache_write_tokens if usage.known else None,
        "cost_usd": ctx.cost_usd,
        "price_known": ctx.price_known,
        "latency_ms": round((end_ns - ctx.start_ns) / 1e6, 3),
        "ttft_ms": round(ttfc_s * 1e3, 3) if ttfc_s is not None else None,
        "attempts": len(ctx.attempts),
        "retries": max(0, len(ctx.attempts) - 1),
        "fallback": ctx.fallback,
        "rejected_reason": ctx.rejected_reason,
        "verdicts": [_verdict(v) for v in ctx.verdicts] if ctx.verdicts else None,
        "session_id": ctx.session_id,
    }
    if ctx.log_fields:
        fields.update(ctx.log_fields)
    return fields


class AccessLog:
    def __init__(
        self,
        stats: ExportStats,
        *,
        to_stdout: bool,
        logger_provider: LoggerProvider | None,
        stream: TextIO | None = None,
        queue_size: int = 10_000,
    ) -> None:
        self.logger = logging.getLogger(sc.ACCESS_LOGGER)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # access lines are not application logs: keep them off the root handlers
        self._handlers: list[logging.Handler] = []
        self._listener: logging.handlers.QueueListener | None = None
        if to_stdout:
            q: queue.Queue[Any] = queue.Queue(queue_size)
            writer = logging.StreamHandler(stream or sys.stdout)
            writer.setFormatter(JsonFormatter())
            self._listener = logging.handlers.QueueListener(q, writer)
            self._listener.start()
            self._handlers.append(_DroppingQueueHandler(q, stats))
        # OTLP: emitted straight to an OTel logger (no stdlib round trip) with the fields as a structured body
        # and the chat span's context, so the record carries trace_id/span_id.
        self._otel_logger = logger_provider.get_logger(sc.INSTRUMENTATION_SCOPE) if logger_provider else None
        for handler in self._handlers:
            self.logger.addHandler(handler)
        self.otlp = self._otel_logger is not None  # the caller builds a trace Context only for OTLP records
        self.enabled = bool(self._handlers) or self.otlp

    def emit(self, fields: dict[str, Any], span_context: Context | None) -> None:
        if self._handlers:
            record = logging.LogRecord(sc.ACCESS_LOGGER, logging.INFO, __file__, 0, "access", None, None)
            setattr(record, FIELDS_ATTR, fields)
            self.logger.handle(record)
        if self._otel_logger is not None:
            now = time.time_ns()
            self._otel_logger.emit(
                timestamp=now,
                observed_timestamp=now,
                context=span_context,
                severity_text="INFO",
                severity_number=SeverityNumber.INFO,
                body={k: v for k, v in fields.items() if v is not None},
                event_name=sc.ACCESS_LOGGER,
            )

    def close(self) -> None:
        for handler in self._handlers:
            self.logger.removeHandler(handler)
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
