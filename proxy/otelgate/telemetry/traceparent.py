"""The agent's W3C `traceparent`, parsed without the OTel propagator in the common case.

`TraceContextTextMapPropagator.extract` runs a regex search, builds a `Context` and a `NonRecordingSpan`, and the
caller then digs the `SpanContext` back out: ~5 µs a request, for a header that nearly always has the one shape
`00-<32 hex>-<16 hex>-<2 hex>`. `parse` handles exactly that shape (version 00, lowercase hex, non-zero ids, no
`tracestate` header) and builds the same `SpanContext` the propagator would; anything else — other versions,
whitespace, upper case, zero ids, a tracestate to parse, junk — goes to the propagator, so the result is always
what the propagator gives (`tests/test_telemetry_fast_paths.py` compares the two over valid and invalid headers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
_COMMON = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FLAGS = [TraceFlags(i) for i in range(256)]  # immutable int subclasses: one of each is enough


def parse(headers: Mapping[str, Any]) -> tuple[SpanContext | None, Context | None]:
    """(the parent's SpanContext, the propagator's Context) from request headers.

    The Context is None on the fast path (the caller builds it only if a sampler needs it: `parent_context`);
    otherwise it is the propagator's, and the SpanContext is what `trace.get_current_span(ctx)` holds (possibly the
    invalid one). (None, None) when there is no traceparent header at all."""
    header = headers.get("traceparent")
    if header is None:
        return None, None
    if type(header) is str and len(header) == 55 and "tracestate" not in headers:
        match = _COMMON.fullmatch(header)
        if match is not None:
            trace_hex, span_hex, flags = match.groups()
            trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
            if trace_id and span_id:
                return SpanContext(trace_id, span_id, True, _FLAGS[int(flags, 16)], None), None
    context = PROPAGATOR.extract(headers)
    return trace.get_current_span(context).get_span_context(), context


def parent_context(parent: SpanContext) -> Context:
    """The Context the propagator would have returned for `parent` (extract starts from an empty Context)."""
    return trace.set_span_in_context(NonRecordingSpan(parent), Context())
