"""The span tree of one agent request, built mostly after the fact from the request context.

SERVER span (continues the agent's traceparent) → CLIENT `chat {model}` span (the logical LLM call) → one HTTP
CLIENT span per upstream attempt. The SERVER and chat spans are opened when the request enters the chain, so the
chat span can parent the attempts and be propagated upstream; the attempts are recorded as plain data by the
upstream client and become spans at the end with their real start and end times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otelgate.telemetry import semconv as sc

if TYPE_CHECKING:
    from otelgate.context import Attempt, RequestContext

PROPAGATOR = TraceContextTextMapPropagator()
_PRIMITIVES = (str, bool, int, float)


class CallSpans:
    """The open spans of one request (kept in ctx.state['telemetry'])."""

    __slots__ = ("chat", "chat_context", "server", "server_context")

    def __init__(self, server: Span, server_context: Context, chat: Span | None, chat_context: Context | None):
        self.server = server
        self.server_context = server_context
        self.chat = chat
        self.chat_context = chat_context

    @property
    def current(self) -> Context:
        """The context metrics and logs are recorded in (exemplars and log records point at this span)."""
        return self.chat_context if self.chat_context is not None else self.server_context


def start(tracer: Tracer, ctx: RequestContext) -> CallSpans:
    request = ctx.request
    parent = PROPAGATOR.extract(request.headers) if "traceparent" in request.headers else None
    path = request.path
    server_attributes: dict[str, Any] = {
        sc.HTTP_REQUEST_METHOD: request.method,
        sc.URL_PATH: path,
        sc.HTTP_ROUTE: path,
    }
    if request.remote:
        server_attributes[sc.CLIENT_ADDRESS] = request.remote
    if ctx.request_id:
        server_attributes[sc.OTELGATE_REQUEST_ID] = ctx.request_id
    server = tracer.start_span(
        f"{request.method} {path}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes=server_attributes,
        start_time=ctx.start_ns,
    )
    server_context = trace.set_span_in_context(server)
    chat = chat_context = None
    if ctx.route.operation == sc.OP_CHAT:
        chat = tracer.start_span(
            sc.chat_span_name(ctx.model),
            context=server_context,
            kind=SpanKind.CLIENT,
            attributes={sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT, sc.GEN_AI_PROVIDER_NAME: ctx.provider.name},
        )
        chat_context = trace.set_span_in_context(chat, server_context)
    return CallSpans(server, server_context, chat, chat_context)


def inject(spans: CallSpans) -> dict[str, str]:
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=spans.current)
    return carrier


def error_type(ctx: RequestContext) -> str | None:
    """A low-cardinality error.type for the call, None when it succeeded (list documented in docs/telemetry.md)."""
    outcome = ctx.outcome
    if outcome == "ok":
        return str(ctx.status) if ctx.status is not None and ctx.status >= 400 else None
    if outcome == "rejected":
        return ctx.rejected_reason or "rejected"
    if outcome == "upstream_error":
        last = ctx.attempts[-1] if ctx.attempts else None
        return (
            ctx.result.error_type
            or (last.error_type if last else None)
            or (str(ctx.status) if ctx.status else sc.ERROR_TYPE_OTHER)
        )
    if outcome == "stream_error":
        return ctx.result.error_type or "stream_error"
    return outcome  # client_disconnected, gateway_error


def _clean(value: Any) -> Any:
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, _PRIMITIVES) for v in value):
        return list(value)
    return str(value)


def _strip_query(url: str) -> str:
    # Query strings can carry keys (?key=...): url.full never keeps them.
    if "?" not in url and "@" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _attempt_span(tracer: Tracer, parent: Context, attempt: Attempt, end_default: int) -> None:
    attributes: dict[str, Any] = {
        sc.HTTP_REQUEST_METHOD: "POST",
        sc.URL_FULL: _strip_query(attempt.url),
        sc.SERVER_ADDRESS: attempt.server_address,
    }
    if attempt.server_port is not None:
        attributes[sc.SERVER_PORT] = attempt.server_port
    if attempt.number > 0:  # semconv: set only on resends
        attributes[sc.HTTP_REQUEST_RESEND_COUNT] = attempt.number
    if attempt.status is not None:
        attributes[sc.HTTP_RESPONSE_STATUS_CODE] = attempt.status
    if attempt.model:
        attributes[sc.GEN_AI_REQUEST_MODEL] = attempt.model
    if attempt.retry_reason:
        attributes[sc.OTELGATE_RETRY_REASON] = attempt.retry_reason
        attributes[sc.OTELGATE_BACKOFF_S] = attempt.backoff_s
    failed = attempt.error_type or (attempt.status is not None and attempt.status >= 400)
    if failed:
        attributes[sc.ERROR_TYPE] = attempt.error_type or str(attempt.status)
    span = tracer.start_span(
        "POST", context=parent, kind=SpanKind.CLIENT, attributes=attributes, start_time=attempt.start_ns
    )
    if failed:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=attempt.end_ns or end_default)


def finish(
    tracer: Tracer,
    spans: CallSpans,
    ctx: RequestContext,
    end_ns: int,
    err: str | None,
    ttfc_s: float | None,
    content: dict[str, str] | None,
) -> None:
    chat = spans.chat
    target = chat if chat is not None else spans.server
    for event in ctx.events:
        target.add_event(event.name, {k: _clean(v) for k, v in event.attributes.items()}, event.time_ns)
    if chat is not None:
        _finish_chat(chat, ctx, err, ttfc_s, content)
    parent = spans.chat_context if spans.chat_context is not None else spans.server_context
    for attempt in ctx.attempts:
        _attempt_span(tracer, parent, attempt, end_ns)
    if chat is not None:
        chat.end(end_time=end_ns)
    server = spans.server
    if ctx.status is not None:
        server.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, ctx.status)
    if (ctx.status is not None and ctx.status >= 500) or ctx.outcome in ("gateway_error", "stream_error"):
        server.set_attribute(sc.ERROR_TYPE, err or str(ctx.status))
        server.set_status(Status(StatusCode.ERROR))
    server.end(end_time=end_ns)


def _finish_chat(
    chat: Span, ctx: RequestContext, err: str | None, ttfc_s: float | None, content: dict[str, str] | None
) -> None:
    result = ctx.result
    usage = result.usage
    attributes: dict[str, Any] = {sc.GEN_AI_REQUEST_STREAM: ctx.stream}
    if ctx.model:
        attributes[sc.GEN_AI_REQUEST_MODEL] = ctx.model
        chat.update_name(sc.chat_span_name(ctx.model))
    if ctx.max_tokens is not None:
        attributes[sc.GEN_AI_REQUEST_MAX_TOKENS] = ctx.max_tokens
    if result.response_id:
        attributes[sc.GEN_AI_RESPONSE_ID] = result.response_id
    response_model = result.response_model or ctx.served_model
    if response_model:
        attributes[sc.GEN_AI_RESPONSE_MODEL] = response_model
    if result.finish_reasons:
        attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = list(result.finish_reasons)
    if usage.known:
        attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] = usage.total_input
        attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
        attributes[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
        attributes[sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
    if ctx.session_id:
        attributes[sc.GEN_AI_CONVERSATION_ID] = ctx.session_id
    if ttfc_s is not None:
        attributes[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttfc_s
    if ctx.attempts:
        last = ctx.attempts[-1]
        attributes[sc.SERVER_ADDRESS] = last.server_address
        if last.server_port is not None:
            attributes[sc.SERVER_PORT] = last.server_port
    principal = ctx.principal
    if principal is not None:
        attributes[sc.OTELGATE_KEY] = principal.key_id
        if principal.team:
            attributes[sc.OTELGATE_TEAM] = principal.team
    if ctx.cost_usd is not None:
        attributes[sc.OTELGATE_COST_USD] = ctx.cost_usd
    attributes[sc.OTELGATE_PRICE_KNOWN] = ctx.price_known
    attributes[sc.OTELGATE_RETRIES] = max(0, len(ctx.attempts) - 1)
    if ctx.fallback:
        attributes[sc.OTELGATE_FALLBACK] = ctx.fallback
    attributes[sc.OTELGATE_SCREENING_FLAGGED] = any(v.get("flagged", True) for v in ctx.verdicts)
    if ctx.rejected_reason:
        attributes[sc.OTELGATE_REJECTED_REASON] = ctx.rejected_reason
    attributes[sc.OTELGATE_OUTCOME] = ctx.outcome
    if err:
        attributes[sc.ERROR_TYPE] = err
        chat.set_status(Status(StatusCode.ERROR, result.error_message or err))
    if content:
        attributes.update(content)
    chat.set_attributes(attributes)


def tool_span(
    tracer: Tracer,
    parent: Context,
    *,
    tool: str,
    call_id: str,
    start_ns: int,
    end_ns: int,
    is_error: bool,
    asked_by: trace.SpanContext | None,
    conversation: str | None,
    provider: str,
    evidence: str,
) -> None:
    attributes: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_PROVIDER_NAME: provider,
        sc.GEN_AI_TOOL_NAME: tool,
        sc.GEN_AI_TOOL_CALL_ID: call_id,
        sc.GEN_AI_TOOL_TYPE: sc.TOOL_TYPE_FUNCTION,
        sc.OTELGATE_TOOL_EVIDENCE: evidence,
    }
    if conversation:
        attributes[sc.GEN_AI_CONVERSATION_ID] = conversation
    links = [Link(asked_by)] if asked_by is not None and asked_by.is_valid else None
    span = tracer.start_span(
        sc.tool_span_name(tool),
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        links=links,
        start_time=start_ns,
    )
    if is_error:
        span.set_attribute(sc.ERROR_TYPE, "tool_error")
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=max(end_ns, start_ns))
