"""SpanWriter against the SDK's Tracer: the same span made both ways must export the same way — name, kind,
parent, trace id, flags, tracestate, attributes as the SDK validates them, status, events, links, resource and
scope — under the default sampler, an unsampled parent, another sampler, and an attribute length limit."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from otelgate.telemetry.spans import SpanWriter

SCOPE = "otelgate-test"
ATTRS: dict[str, Any] = {
    "s": "text-longer-than-eight",
    "i": 3,
    "f": 0.5,
    "b": True,
    "reasons": ["stop", "tool_use"],  # becomes a tuple
    "bad": {"a": 1},  # not an attribute value: dropped
    "mixed": ["a", 1],  # not homogeneous: dropped
}
REMOTE = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "x")]),
)


def provider(
    sampler: Sampler | None = None, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    p = TracerProvider(sampler=sampler, span_limits=limits)
    exporter = InMemorySpanExporter()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p, exporter


def by_sdk(p: TracerProvider, parent: SpanContext | None, links: tuple[Link, ...] = ()) -> None:
    tracer = p.get_tracer(SCOPE)
    context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
    with _quiet():
        span = tracer.start_span(
            "op", context=context, kind=SpanKind.CLIENT, attributes=dict(ATTRS), start_time=10, links=links
        )
    child = tracer.start_span("child", context=trace.set_span_in_context(span), start_time=11)
    child.end(end_time=12)
    span.add_event("ev", {"k": ["x"]}, timestamp=15)
    span.set_status(Status(StatusCode.ERROR, "why"))
    span.end(end_time=20)


def by_writer(p: TracerProvider, parent: SpanContext | None, links: tuple[Link, ...] = ()) -> None:
    from opentelemetry.sdk.trace import Event

    writer = SpanWriter(p, SCOPE)
    span = writer.open("op", parent, None, SpanKind.CLIENT, dict(ATTRS), 10)
    child = writer.open("child", span.context, None, SpanKind.INTERNAL, {}, 11)
    writer.write(child, 12)
    writer.write(span, 20, Status(StatusCode.ERROR, "why"), (Event("ev", {"k": ("x",)}, 15),), links)


class _quiet:
    # The SDK logs a warning per invalid attribute value; irrelevant here.
    def __enter__(self) -> None:
        import logging

        self._level = logging.getLogger("opentelemetry.attributes").level
        logging.getLogger("opentelemetry.attributes").setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        import logging

        logging.getLogger("opentelemetry.attributes").setLevel(self._level)


def shape(span: ReadableSpan, ids: dict[int, str]) -> dict[str, Any]:
    ctx = span.context
    return {
        "name": span.name,
        "kind": span.kind,
        "trace": ids.setdefault(ctx.trace_id, f"t{len(ids)}"),
        "parent": ids.get(span.parent.span_id, span.parent.span_id) if span.parent else None,
        "flags": int(ctx.trace_flags),
        "state": ctx.trace_state.to_header(),
        "remote": ctx.is_remote,
        "attributes": dict(span.attributes),
        "dropped": span.dropped_attributes,
        "status": (span.status.status_code, span.status.description),
        "events": [(e.name, dict(e.attributes), e.timestamp) for e in span.events],
        "links": [(link.context.span_id, dict(link.attributes or {})) for link in span.links],
        "times": (span.start_time, span.end_time),
        "resource": {k: v for k, v in span.resource.attributes.items() if k != "service.instance.id"},
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version),
    }


def spans_of(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    ids: dict[int, str] = {}
    finished = exporter.get_finished_spans()
    for s in finished:  # name the ids by span name so both runs compare
        ids[s.context.span_id] = s.name
    return [shape(s, ids) for s in finished]


@pytest.mark.parametrize(
    ("sampler", "parent", "limits"),
    [
        (None, None, None),
        (None, REMOTE, None),
        (None, SpanContext(REMOTE.trace_id, REMOTE.span_id, is_remote=True, trace_flags=TraceFlags(0)), None),
        (ParentBased(ALWAYS_OFF), None, None),
        (TraceIdRatioBased(1.0), REMOTE, None),
        (None, REMOTE, SpanLimits(max_span_attribute_length=8)),
    ],
    ids=["root", "remote-sampled", "remote-unsampled", "root-off", "ratio", "length-limit"],
)
def test_writer_exports_what_the_sdk_exports(
    sampler: Sampler | None, parent: SpanContext | None, limits: SpanLimits | None
) -> None:
    sdk, sdk_out = provider(sampler, limits)
    ours, our_out = provider(sampler, limits)
    link = (Link(REMOTE),)
    with _quiet():
        by_sdk(sdk, parent, link)
    by_writer(ours, parent, link)
    assert spans_of(our_out) == spans_of(sdk_out)


def test_nothing_is_built_without_a_processor() -> None:
    writer = SpanWriter(TracerProvider(), SCOPE)
    assert not writer.active
    span = writer.open("op", REMOTE, None, SpanKind.SERVER, {}, 1)
    assert span.context.trace_id == REMOTE.trace_id and span.context.trace_flags.sampled
