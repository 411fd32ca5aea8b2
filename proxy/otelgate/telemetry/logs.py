"""One access-log record per call: a JSON line on stdout, and an OTLP log record joined to the trace.

The request path only builds a small dict and enqueues it; a listener thread formats and writes, so a slow or
blocked stdout never stalls a request (a full queue drops the line and counts it). Never a secret; message
content never appears here at all (content capture only feeds span attributes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.trace import NonRecordingSpan, SpanContext

try:  # faster JSON when it happens to be installed; never a dependency
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None  # type: ignore[assignment]

from otelgate.telemetry import semconv as sc
from otelgate.telemetry.otlp_http import AccessRecord

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider

    from otelgate.context import RequestContext
    from otelgate.telemetry.setup import AccessRecordProcessor, ExportStats

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


def _json_line(fields: dict[str, Any]) -> str:
    if _orjson is not None:
        try:
            return _orjson.dumps(fields, default=str, option=_orjson.OPT_NON_STR_KEYS).decode()
        except Exception:
            pass  # e.g. an int beyond 64 bits from ctx.log_fields: the stdlib encoder takes anything
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str)


class _LineWriter:
    """A daemon thread that formats and writes access lines in batches.

    On an event loop the request path only appends to a list: the lines of the next `FLUSH_SECONDS` go to the
    thread together, so it wakes (and takes the GIL from the loop) once per batch rather than once per line.
    A stalled stdout fills the queue, and further lines are dropped and counted instead of stalling requests."""

    _STOP = object()
    FLUSH_SECONDS = 0.05

    def __init__(self, stream: TextIO, stats: ExportStats, limit: int) -> None:
        self._stream, self._stats, self._limit = stream, stats, limit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._queued = 0  # lines handed over and not yet written; changed under _lock
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="otelgate-access-log", daemon=True)
        self._thread.start()

    def put(self, ts: float, fields: dict[str, Any]) -> None:
        if self._queued + len(self._pending) >= self._limit:
            self._stats.dropped[sc.SIGNAL_LOGS] += 1
            return
        self._pending.append((ts, fields))
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on a loop: hand the line over now
                self.flush()
                return
            self._timer = loop.call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Hand the pending lines to the writer thread."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            with self._lock:
                self._queued += len(batch)
            self._queue.put(batch)

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batches = [get()]
            with contextlib.suppress(queue.Empty):
                while len(batches) < 64:
                    batches.append(get_nowait())
            lines = []
            stop = False
            taken = 0
            written: list[threading.Event] = []
            for batch in batches:
                if batch is self._STOP:
                    stop = True
                    continue
                if isinstance(batch, threading.Event):
                    written.append(batch)
                    continue
                taken += len(batch)
                for ts, fields in batch:
                    try:
                        lines.append(_json_line({"ts": round(ts, 6), **fields}))
                    except Exception:
                        self._stats.dropped[sc.SIGNAL_LOGS] += 1
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except Exception:
                    self._stats.dropped[sc.SIGNAL_LOGS] += len(lines)
            with self._lock:
                self._queued -= taken
            for event in written:
                event.set()
            if stop:
                return

    def wait_written(self, timeout: float) -> None:
        """Hand over what is pending and wait (at most `timeout`) until every line before now is written."""
        self.flush()
        written = threading.Event()
        self._queue.put(written)
        written.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is pending and queued (waiting at most `timeout`: a stuck stdout is abandoned)."""
        self.flush()
        self._queue.put(self._STOP)
        self._thread.join(timeout)


class AccessLog:
    def __init__(
        self,
        stats: ExportStats,
        *,
        to_stdout: bool,
        logger_provider: LoggerProvider | None,
        stream: TextIO | None = None,
        queue_size: int = 10_000,
        record_sink: AccessRecordProcessor | None = None,
    ) -> None:
        # stdout: our own writer thread rather than logging's QueueHandler/QueueListener — a LogRecord, the
        # handler locks and queue.Queue's condition variables cost ~8 µs per line on the request path.
        self._writer = _LineWriter(stream or sys.stdout, stats, queue_size) if to_stdout else None
        # OTLP: emitted straight to an OTel logger (no stdlib round trip) with the fields as a structured body
        # and the chat span's context, so the record carries trace_id/span_id.
        # With a record sink (OTLP/HTTP, see otlp_http.py) the record skips the SDK's LogRecord path entirely.
        self._sink = record_sink
        self._otel_logger = (
            logger_provider.get_logger(sc.INSTRUMENTATION_SCOPE) if logger_provider and record_sink is None else None
        )
        self.otlp = self._otel_logger is not None or record_sink is not None  # the caller passes the span only then
        self.enabled = self._writer is not None or self.otlp

    def emit(self, fields: dict[str, Any], span_context: SpanContext | None) -> None:
        """One access record. `fields` is shared with the writer and exporter threads: not changed afterwards."""
        if self._writer is not None:
            self._writer.put(time.time(), fields)
        if self._sink is not None and span_context is not None:
            flags = int(span_context.trace_flags)
            self._sink.emit_record(
                AccessRecord(time.time_ns(), span_context.trace_id, span_context.span_id, flags, fields)
            )
        elif self._otel_logger is not None:
            now = time.time_ns()
            self._otel_logger.emit(
                timestamp=now,
                observed_timestamp=now,
                context=trace.set_span_in_context(NonRecordingSpan(span_context)) if span_context else None,
                severity_text="INFO",
                severity_number=SeverityNumber.INFO,
                body={k: v for k, v in fields.items() if v is not None},
                event_name=sc.ACCESS_LOGGER,
            )

    def flush(self, timeout: float = 5.0) -> None:
        """Write out the access lines emitted so far (tests, `otelgate demo`)."""
        if self._writer is not None:
            self._writer.wait_written(timeout)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
