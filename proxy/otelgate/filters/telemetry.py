"""The telemetry filter: first in the chain, so its `done` runs last, after cost and verdicts are known.

`request` opens the SERVER and chat spans (cheap: two span starts) so the chat span exists to parent the upstream
attempts and, when configured, to be propagated upstream. `done` does the rest from the recorded context: span
attributes and ends, attempt spans, tool executions, metrics, the access log line. Telemetry must never break a
request: any exception here is logged once per kind and swallowed.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from otelgate.telemetry import STATE_KEY
from otelgate.telemetry import semconv as sc
from otelgate.telemetry.content import capture
from otelgate.telemetry.logs import access_fields
from otelgate.telemetry.spans import CallSpans, abandon, error_type, finish, inject, start, tool_span

if TYPE_CHECKING:
    from otelgate.context import RequestContext
    from otelgate.telemetry import Telemetry

log = logging.getLogger(__name__)


class TelemetryFilter:
    name = "telemetry"
    observer = True  # runs before ingress: sees every request, also those refused while parsing

    def __init__(self, telemetry: Telemetry) -> None:
        self.tel = telemetry
        self._reported: set[str] = set()

    async def request(self, ctx: RequestContext) -> None:
        try:
            spans = start(self.tel.spans, ctx)
        except Exception as exc:
            self._report("start", exc)
            return
        ctx.state[STATE_KEY] = spans
        if self.tel.propagates(ctx.provider.name):
            ctx.trace_headers.update(inject(spans))

    def response(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        return None

    async def done(self, ctx: RequestContext) -> None:
        spans: CallSpans | None = ctx.state.get(STATE_KEY)
        if spans is None:
            return
        try:
            self._done(ctx, spans)
        except Exception as exc:
            self._report("done", exc)
            try:
                abandon(self.tel.spans, spans, time.time_ns())  # never lose the trace's root
            except Exception as again:
                self._report("abandon", again)

    def _done(self, ctx: RequestContext, spans: CallSpans) -> None:
        tel = self.tel
        end_ns = time.time_ns()
        err = error_type(ctx)
        first = ctx.result.first_chunk_ns
        ttfc_s = (first - ctx.start_ns) / 1e9 if ctx.stream and first is not None and first >= ctx.start_ns else None
        content = capture(ctx, tel.config.content_max_bytes) if tel.capture_content and spans.chat else None
        span_context = spans.current_span.context
        exemplar = tel.metrics.local.exemplar_for(span_context)
        if ctx.session_id:
            self._tools(ctx, spans, end_ns)
        finish(tel.spans, spans, ctx, end_ns, err, ttfc_s, content)
        tel.metrics.record_call(ctx, exemplar, (end_ns - ctx.start_ns) / 1e9, err, ttfc_s, end_ns)
        if ctx.session_id and ctx.route.operation == sc.OP_CHAT:
            new, position = tel.sessions.call(ctx.session_id, ctx.start_ns)
            tel.metrics.record_session(new, position, tel.metrics.who(ctx), exemplar, end_ns)
        if tel.access_log.enabled:
            fields = access_fields(ctx, f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}", end_ns, ttfc_s)
            tel.access_log.emit(fields, span_context if tel.access_log.otlp else None)

    def _tools(self, ctx: RequestContext, spans: CallSpans, end_ns: int) -> None:
        tel = self.tel
        session = ctx.session_id or ""
        if ctx.tool_results:
            for match in tel.tools.resolve(session, ctx.tool_results, ctx.start_ns):
                call, result = match.call, match.result
                tool_span(
                    tel.spans,
                    spans.server.context,
                    tool=call.name,
                    call_id=call.call_id,
                    start_ns=call.asked_ns,
                    end_ns=ctx.start_ns,
                    is_error=result.is_error,
                    asked_by=call.asked_by,
                    conversation=ctx.session_id,
                    provider=ctx.provider.name,
                    evidence="matched",
                )
                duration = max(0.0, (ctx.start_ns - call.asked_ns) / 1e9)
                tel.metrics.record_tool(
                    call.name,
                    "error" if result.is_error else "ok",
                    duration,
                    tel.metrics.local.exemplar_for(spans.server.context),
                    end_ns,
                )
        if ctx.result.tool_calls and spans.chat is not None:
            evicted = tel.tools.expect(session, ctx.result.tool_calls, end_ns, spans.chat.context)
            for call in evicted:
                tel.metrics.record_tool(call.name, "unanswered", None, None, end_ns)

    def _report(self, where: str, exc: Exception) -> None:
        kind = f"{where}:{type(exc).__name__}"
        if kind not in self._reported:
            self._reported.add(kind)
            log.exception("telemetry %s failed (reported once per kind; requests are not affected)", where)
