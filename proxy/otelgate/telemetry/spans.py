"""The span tree of one agent request, built after the fact from the request context.

SERVER span (continues the agent's traceparent) → CLIENT `chat {model}` span (the logical LLM call) → one HTTP
CLIENT span per upstream attempt, plus `execute_tool` spans. Only the *identities* of the SERVER and chat spans are
made when the request enters the chain (ids and the sampling decision, so the chat span can parent the attempts
and be propagated upstream); every span is then written once, finished, in `done`.

Why not the SDK's `Tracer.start_span` / `Span.end`: each span costs ~15 µs there (attribute validation on every
set, locks, a mutable span then a `ReadableSpan` copy), ~4 spans a call — alone several times the per-request
budget. `SpanWriter` keeps the SDK's semantics that matter and skips the rest:
* the provider's sampler decides (OTEL_TRACES_SAMPLER honoured); a child of a local parent under the default
  `ParentBased` sampler inherits its parent's decision without a call, as that sampler would decide;
* ids come from the provider's id generator, trace flags (sampled, random-trace-id) and tracestate as the SDK sets;
* finished spans are the SDK's `ReadableSpan`, handed to the provider's span processors (`on_end`), so batch
  processors, exporters and the in-memory test exporter see what the SDK would have produced; attribute dicts
  of plain values are stored as they are (what the SDK's validation would leave), anything else — a list, a
  limit to apply — goes through the SDK's own `BoundedAttributes`;
* with no span processor at all (no OTLP, no test exporter) nothing is built: only ids, for logs and exemplars.
Not kept: `on_start` calls (the processors otelgate installs ignore them) and the SDK's self-metrics of spans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otelgate.telemetry import semconv as sc
from otelgate.telemetry import traceparent

if TYPE_CHECKING:
    from otelgate.context import Attempt, RequestContext

PROPAGATOR = traceparent.PROPAGATOR
_PRIMITIVES = (str, bool, int, float)
_PRIMITIVE_TYPES = frozenset((str, bool, int, float, bytes))
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_SAMPLED = TraceFlags.SAMPLED
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
_FLAGS = [TraceFlags(i) for i in range(256)]


def _event_value(value: Any) -> Any:
    # Other stages put anything in events; what is not an attribute value is kept as its text.
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, _PRIMITIVES) for v in value):
        return tuple(value)
    return str(value)


def _bounded(attributes: dict[str, Any], max_count: int | None, max_len: int | None) -> Any:
    """The attributes as the SDK would store them. Plain values (what otelgate sets) under the limits are stored
    as they are, which is what the SDK's validation would leave; anything else goes through the SDK's own
    `BoundedAttributes` (conversions, truncation, drops — exactly its rules)."""
    if max_len is None and (max_count is None or len(attributes) <= max_count):
        for value in attributes.values():
            if type(value) not in _PRIMITIVE_TYPES and not (
                type(value) is tuple and all(type(v) in _PRIMITIVE_TYPES for v in value)
            ):
                break
        else:
            return attributes
    return BoundedAttributes(max_count, attributes, immutable=True, max_value_len=max_len)


class OpenSpan:
    """A span whose identity exists (ids, sampling) but which is written only when finished."""

    __slots__ = ("attributes", "context", "kind", "name", "parent", "recording", "start_ns", "written")

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_ns: int,
        recording: bool,
    ) -> None:
        self.name, self.context, self.parent, self.kind = name, context, parent, kind
        self.attributes, self.start_ns, self.recording = attributes, start_ns, recording
        self.written = False

    def get_span_context(self) -> SpanContext:
        return self.context


class SpanWriter:
    """Makes span identities and writes finished spans to a TracerProvider's processors (see the module doc)."""

    def __init__(self, provider: TracerProvider, scope_name: str) -> None:
        self.provider = provider
        self.resource = provider.resource
        tracer = provider.get_tracer(scope_name)
        self.scope = getattr(tracer, "_instrumentation_scope", None) or InstrumentationScope(scope_name, "")
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        limits: SpanLimits = getattr(provider, "_span_limits", None) or SpanLimits()
        self._limits = limits
        # The default sampler (ParentBased(ALWAYS_ON)) decides from the parent's flags alone: skip the call (and its
        # SamplingResult) then. Any other sampler, or a ParentBased with other delegates, is asked every time.
        sampler = self.sampler
        parent_based = isinstance(sampler, ParentBased)

        def delegates(sampled: str, not_sampled: str) -> bool:
            return (
                parent_based
                and getattr(sampler, sampled, None) is ALWAYS_ON
                and getattr(sampler, not_sampled, None) is ALWAYS_OFF
            )

        self._inherit_local = delegates("_local_parent_sampled", "_local_parent_not_sampled")
        self._inherit_remote = delegates("_remote_parent_sampled", "_remote_parent_not_sampled")
        self._root_on = parent_based and getattr(sampler, "_root", None) is ALWAYS_ON

    @property
    def inherits_remote(self) -> bool:
        """Whether a remote parent's flags decide sampling without asking the sampler (default sampler)."""
        return self._inherit_remote

    @property
    def limits(self) -> SpanLimits:
        return self._limits

    @property
    def active(self) -> bool:
        """Whether any span processor listens (checked per call: processors may be added after start)."""
        processors = getattr(self.provider._active_span_processor, "_span_processors", None)
        return processors is None or len(processors) > 0

    def open(
        self,
        name: str,
        parent: SpanContext | None,
        parent_context: Context | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_ns: int,
    ) -> OpenSpan:
        if parent is not None and not parent.is_valid:
            parent = None
        if parent is None:
            trace_id = self.ids.generate_trace_id()
            inherit = self._root_on
            sampled, trace_state = True, None
        else:
            trace_id = parent.trace_id
            inherit = self._inherit_remote if parent.is_remote else self._inherit_local
            sampled, trace_state = parent.trace_flags.sampled, parent.trace_state
        recording = sampled
        if not inherit:
            if parent_context is None and parent is not None:
                parent_context = trace.set_span_in_context(NonRecordingSpan(parent))
            result = self.sampler.should_sample(parent_context, trace_id, name, kind, attributes, ())
            sampled = result.decision is Decision.RECORD_AND_SAMPLE
            recording = result.decision is not Decision.DROP
            trace_state = result.trace_state
            if result.attributes:
                attributes = {**result.attributes, **attributes}
        return OpenSpan(
            name, self._context(parent, trace_id, sampled, trace_state), parent, kind, attributes, start_ns, recording
        )

    def _context(self, parent: SpanContext | None, trace_id: int, sampled: bool, trace_state: Any) -> SpanContext:
        flags = _SAMPLED if sampled else 0
        random = parent.trace_flags & _RANDOM if parent is not None else self.ids.is_trace_id_random()
        if random:
            flags |= _RANDOM
        # TraceFlags are immutable ints: one shared instance per value instead of one per span.
        return SpanContext(trace_id, self.ids.generate_span_id(), False, _FLAGS[flags], trace_state)

    def write(
        self,
        span: OpenSpan,
        end_ns: int,
        status: Status = _UNSET,
        events: tuple[Event, ...] = (),
        links: tuple[Link, ...] = (),
    ) -> None:
        if span.written:
            return
        span.written = True
        if not span.recording:
            return
        limits = self._limits
        attributes = _bounded(span.attributes, limits.max_span_attributes, limits.max_span_attribute_length)
        start_ns = span.start_ns
        readable = ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=self.resource,
            attributes=attributes,
            events=events,
            links=links,
            kind=span.kind,
            status=status,
            start_time=start_ns,
            end_time=end_ns if end_ns > start_ns else start_ns,
            instrumentation_scope=self.scope,
        )
        self.provider._active_span_processor.on_end(readable)


class CallSpans:
    """The spans of one request (kept in ctx.state['telemetry'])."""

    __slots__ = ("_chat_context", "_server_context", "chat", "server")

    def __init__(self, server: OpenSpan, chat: OpenSpan | None):
        self.server = server
        self.chat = chat
        self._server_context: Context | None = None
        self._chat_context: Context | None = None

    @property
    def server_context(self) -> Context:
        if self._server_context is None:
            self._server_context = trace.set_span_in_context(NonRecordingSpan(self.server.context))
        return self._server_context

    @property
    def chat_context(self) -> Context | None:
        if self.chat is None:
            return None
        if self._chat_context is None:
            self._chat_context = trace.set_span_in_context(NonRecordingSpan(self.chat.context))
        return self._chat_context

    @property
    def current(self) -> Context:
        """The context logs are recorded in and propagated upstream (the chat span when there is one)."""
        chat = self.chat_context
        return chat if chat is not None else self.server_context

    @property
    def current_span(self) -> OpenSpan:
        return self.chat if self.chat is not None else self.server


def start(writer: SpanWriter, ctx: RequestContext) -> CallSpans:
    request = ctx.request
    parent, parent_context = traceparent.parse(request.headers)
    if parent_context is None and parent is not None and not writer.inherits_remote:
        parent_context = traceparent.parent_context(parent)  # what the propagator gave; the sampler reads it
    path = request.path
    server_attributes: dict[str, Any] = {
        sc.HTTP_REQUEST_METHOD: request.method,
        sc.URL_PATH: path,
        sc.HTTP_ROUTE: path,
    }
    remote = request.remote
    if remote:
        server_attributes[sc.CLIENT_ADDRESS] = remote
    if ctx.request_id:
        server_attributes[sc.OTELGATE_REQUEST_ID] = ctx.request_id
    server = writer.open(
        f"{request.method} {path}", parent, parent_context, SpanKind.SERVER, server_attributes, ctx.start_ns
    )
    chat = None
    if ctx.route.operation == sc.OP_CHAT:
        chat = writer.open(
            sc.chat_span_name(ctx.model),
            server.context,
            None,
            SpanKind.CLIENT,
            {sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT, sc.GEN_AI_PROVIDER_NAME: ctx.provider.name},
            ctx.start_ns,
        )
    return CallSpans(server, chat)


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


def _strip_query(url: str) -> str:
    # Query strings can carry keys (?key=...): url.full never keeps them.
    if "?" not in url and "@" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _attempt_span(writer: SpanWriter, parent: SpanContext, attempt: Attempt, end_default: int) -> None:
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
    span = writer.open("POST", parent, None, SpanKind.CLIENT, attributes, attempt.start_ns)
    writer.write(span, attempt.end_ns or end_default, _ERROR if failed else _UNSET)


def finish(
    writer: SpanWriter,
    spans: CallSpans,
    ctx: RequestContext,
    end_ns: int,
    err: str | None,
    ttfc_s: float | None,
    content: dict[str, str] | None,
) -> None:
    """Write the call's spans (chat, attempts, SERVER), finished at end_ns."""
    server, chat = spans.server, spans.chat
    if not writer.active:  # nobody listens: the identities were all logs and exemplars needed
        server.written = True
        if chat is not None:
            chat.written = True
        return
    limits = writer.limits
    events = tuple(
        Event(
            e.name,
            _bounded(
                {k: _event_value(v) for k, v in e.attributes.items()},
                limits.max_event_attributes,
                limits.max_attribute_length,
            ),
            e.time_ns,
        )
        for e in ctx.events
    )
    parent = server.context
    if chat is not None:
        status = _finish_chat(chat, ctx, err, ttfc_s, content)
        parent = chat.context
    for attempt in ctx.attempts:
        _attempt_span(writer, parent, attempt, end_ns)
    if chat is not None:
        writer.write(chat, end_ns, status, events)
        events = ()
    attributes = server.attributes
    if ctx.status is not None:
        attributes[sc.HTTP_RESPONSE_STATUS_CODE] = ctx.status
    for name, value in ctx.log_fields.items():
        # Labels other stages attach to a call (e.g. eval.case) tag its trace too; never content or secrets.
        if isinstance(value, str | bool | int | float):
            attributes.setdefault(name, value)
    server_status = _UNSET
    if (ctx.status is not None and ctx.status >= 500) or ctx.outcome in ("gateway_error", "stream_error"):
        attributes[sc.ERROR_TYPE] = err or str(ctx.status)
        server_status = _ERROR
    writer.write(server, end_ns, server_status, events)


def abandon(writer: SpanWriter, spans: CallSpans, end_ns: int) -> None:
    """After a failure in `finish`: write what was not written yet, as it is (never lose the trace's root)."""
    for span in (spans.chat, spans.server):
        if span is not None and not span.written:
            writer.write(span, end_ns)


def _finish_chat(
    chat: OpenSpan, ctx: RequestContext, err: str | None, ttfc_s: float | None, content: dict[str, str] | None
) -> Status:
    """Fill the chat span's attributes (and final name); returns its status."""
    result = ctx.result
    usage = result.usage
    attributes = chat.attributes
    attributes[sc.GEN_AI_REQUEST_STREAM] = ctx.stream
    if ctx.model:
        attributes[sc.GEN_AI_REQUEST_MODEL] = ctx.model
        chat.name = sc.chat_span_name(ctx.model)
    if ctx.max_tokens is not None:
        attributes[sc.GEN_AI_REQUEST_MAX_TOKENS] = ctx.max_tokens
    if result.response_id:
        attributes[sc.GEN_AI_RESPONSE_ID] = result.response_id
    response_model = result.response_model or ctx.served_model
    if response_model:
        attributes[sc.GEN_AI_RESPONSE_MODEL] = response_model
    if result.finish_reasons:
        attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(result.finish_reasons)
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
    if content:
        attributes.update(content)
    if err:
        attributes[sc.ERROR_TYPE] = err
        return Status(StatusCode.ERROR, result.error_message or err)
    return _UNSET


def tool_span(
    writer: SpanWriter,
    parent: SpanContext,
    *,
    tool: str,
    call_id: str,
    start_ns: int,
    end_ns: int,
    is_error: bool,
    asked_by: SpanContext | None,
    conversation: str | None,
    provider: str,
    evidence: str,
) -> None:
    if not writer.active:
        return
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
    links = (Link(asked_by),) if asked_by is not None and asked_by.is_valid else ()
    span = writer.open(sc.tool_span_name(tool), parent, None, SpanKind.INTERNAL, attributes, start_ns)
    if is_error:
        attributes[sc.ERROR_TYPE] = "tool_error"
    writer.write(span, end_ns, _ERROR if is_error else _UNSET, links=links)
