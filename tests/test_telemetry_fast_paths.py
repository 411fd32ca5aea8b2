"""The telemetry fast paths give exactly what the slow paths they replace give."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otelgate.telemetry import otlp_wire, traceparent

PROPAGATOR = TraceContextTextMapPropagator()
HEX = "0123456789abcdef"


def slow(headers: Any) -> Any:
    """What spans.start did before: the propagator, then the span context out of the returned Context."""
    if "traceparent" not in headers:
        return None
    return trace.get_current_span(PROPAGATOR.extract(headers)).get_span_context()


def check(headers: Any) -> None:
    parent, context = traceparent.parse(headers)
    expected = slow(headers)
    assert parent == expected
    if parent is not None:
        assert parent.trace_state == expected.trace_state
        assert parent.is_remote is expected.is_remote
        assert type(parent.trace_flags) is type(expected.trace_flags)
        built = context if context is not None else traceparent.parent_context(parent)
        reference = PROPAGATOR.extract(headers)
        assert dict(built).keys() == dict(reference).keys()
        assert trace.get_current_span(built).get_span_context() == trace.get_current_span(reference).get_span_context()


VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CASES = [
    VALID,
    VALID[:-2] + "00",
    VALID[:-2] + "ff",
    VALID[:-2] + "03",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    VALID.upper(),
    VALID.replace("4bf9", "4BF9"),
    "ff" + VALID[2:],
    "01" + VALID[2:],
    "01" + VALID[2:] + "-extra",
    VALID + "-extra",
    " " + VALID,
    VALID + "\t",
    VALID + "\n",
    VALID[:-1],
    VALID + "1",
    VALID.replace("-", "_"),
    "",
    "garbage",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
    "0" * 600,
]


def test_fixed_headers_match_the_propagator() -> None:
    for value in CASES:
        check({"traceparent": value})
        check({"traceparent": value, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"})
        check({"traceparent": value, "tracestate": "not a valid = state"})
        check(CIMultiDictProxy(CIMultiDict([("Traceparent", value), ("x-api-key", "k")])))
    check({})
    check({"x": "y"})


def test_multidict_uses_the_first_header_like_the_propagator() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("traceparent", VALID), ("traceparent", "ff" + VALID[2:])]))
    check(headers)
    headers = CIMultiDictProxy(CIMultiDict([("traceparent", "junk"), ("traceparent", VALID)]))
    check(headers)


def test_fast_path_is_taken_for_the_common_shape() -> None:
    parent, context = traceparent.parse({"traceparent": VALID})
    assert context is None and parent is not None and parent.is_valid and parent.trace_flags.sampled


hex_str = st.text(alphabet=HEX + "ABCDEFxyz- ", min_size=0, max_size=4)


@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from(["00", "01", "ff", "0f", "0A"]),
    trace_id=st.one_of(st.integers(0, 2**128 - 1).map(lambda i: f"{i:032x}"), st.just("0" * 32)),
    span_id=st.one_of(st.integers(0, 2**64 - 1).map(lambda i: f"{i:016x}"), st.just("0" * 16)),
    flags=st.integers(0, 255).map(lambda i: f"{i:02x}"),
    prefix=st.sampled_from(["", " ", "\t"]),
    suffix=st.one_of(st.sampled_from(["", " ", "-x", "\n"]), hex_str),
    tracestate=st.sampled_from([None, "a=b", "a=b,c=d", "=", "x" * 600]),
)
def test_generated_headers_match_the_propagator(
    version: str, trace_id: str, span_id: str, flags: str, prefix: str, suffix: str, tracestate: str | None
) -> None:
    headers = {"traceparent": f"{prefix}{version}-{trace_id}-{span_id}-{flags}{suffix}"}
    if tracestate is not None:
        headers["tracestate"] = tracestate
    check(headers)


# --- the memoised OTLP attribute encoder against the plain one, and spans with dropped counts against the SDK -------
def plain_attributes(tag: bytes, attrs: dict[str, Any], skip_none: bool = False) -> bytes:
    """The encoding without any cache: one KeyValue field per attribute, straight from `key_value`."""
    out = b""
    for key, value in attrs.items():
        if value is None and skip_none:
            continue
        try:
            out += otlp_wire._field(tag, otlp_wire.key_value(key, value))
        except Exception:
            continue
    return out


attr_values = st.one_of(
    st.text(max_size=140),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.floats(allow_nan=False),
    st.sampled_from([0, 1, 1.0, 0.0, True, False, "1", "", None]),
    st.lists(st.integers(0, 9), max_size=3).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(
        st.dictionaries(st.sampled_from(["a", "b", "gen_ai.request.model", "k" * 130]), attr_values, max_size=5),
        min_size=1,
        max_size=6,
    ),
    skip_none=st.booleans(),
)
def test_memoised_attributes_equal_the_plain_encoding(batches: list[dict[str, Any]], skip_none: bool) -> None:
    original = otlp_wire._MAX_FIELDS
    otlp_wire._MAX_FIELDS = 6  # small: clearing a full cache happens within the run too
    otlp_wire._FIELDS.clear()  # what earlier tests cached was under the normal bound
    try:
        for attrs in batches * 2:  # the second pass hits the caches
            for tag in (b"\x0a", b"\x4a"):
                assert otlp_wire.attributes(tag, attrs, skip_none) == plain_attributes(tag, attrs, skip_none)
                assert len(otlp_wire._FIELDS.get(tag, ())) <= 6
    finally:
        otlp_wire._MAX_FIELDS = original


def test_equal_but_differently_typed_values_are_not_confused() -> None:
    for _ in range(2):
        for value in (1, True, 1.0, "1", 0, False, 0.0, ""):
            attrs = {"x": value}
            assert otlp_wire.attributes(b"\x0a", attrs) == plain_attributes(b"\x0a", attrs)


def test_spans_with_dropped_attributes_events_and_links_match_the_sdk_encoder() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

    for limits in (
        SpanLimits(max_span_attributes=0, max_events=0, max_links=0),
        SpanLimits(max_span_attributes=1, max_events=1, max_links=1, max_event_attributes=1),
    ):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(span_limits=limits)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("t")
        other = SpanContext(5, 6, True, TraceFlags(1))
        links = [Link(other, {"a": 1}), Link(SpanContext(7, 8, False, TraceFlags(1)))]
        with tracer.start_as_current_span("s", links=links, attributes={"a": 1, "b": "x", "c": True}) as span:
            span.add_event("e1", {"x": 1, "y": 2.5})
            span.add_event("e2")
            span.set_status(Status(StatusCode.ERROR, "boom"))
        with tracer.start_as_current_span("ok") as span:
            span.set_status(Status(StatusCode.OK))
        spans = list(exporter.get_finished_spans())
        # The SDK's own span objects (a subclass), too: they take the property path of the encoder.
        live = tracer.start_span("live", attributes={"a": 1, "b": 2})
        live.add_event("e")
        live.end()
        spans.append(live)
        ours = ExportTraceServiceRequest.FromString(otlp_wire.encode_spans(spans))
        assert ours == sdk_encode_spans(spans)
        provider.shutdown()


# --- metric keys built once per raw label set, against keys built per call -------------------------------------------
def test_reused_metric_keys_record_the_same_series_as_keys_built_per_call() -> None:
    import copy
    import random
    import time

    from aiohttp.test_utils import make_mocked_request
    from opentelemetry.sdk.metrics import MeterProvider

    from otelgate.config import TelemetryConfig
    from otelgate.context import Attempt, Principal, RequestContext, Usage
    from otelgate.providers import PROVIDERS, Route
    from otelgate.telemetry.aggregate import LocalMetrics
    from otelgate.telemetry.metrics import Metrics
    from otelgate.telemetry.setup import ExportStats

    def metrics() -> Metrics:
        config = TelemetryConfig(max_model_labels=2, max_key_labels=2)
        meter = MeterProvider().get_meter("t")
        return Metrics(meter, config, ExportStats(), LocalMetrics("t"))

    chat = Route("anthropic", "messages", "chat", "/v1/messages", "POST", True)
    other = Route("anthropic", "models", "models", "/v1/models", "GET", False)
    request = make_mocked_request("POST", "/v1/messages")
    contexts = []
    now = time.time_ns()
    rng = random.Random(7)  # every label chosen independently, so equal raw label sets differ in one label too
    for i in range(2000):
        ctx = RequestContext(request=request, provider=PROVIDERS["anthropic"], route=rng.choice([chat, chat, other]))
        ctx.model = rng.choice(["m1", "m2", "m3", None])
        ctx.result.response_model = rng.choice(["m1-x", None, "m2"])
        ctx.principal = rng.choice(
            [
                Principal("k1", "t1", None),
                Principal("k1", "t2", None),
                Principal("k2", None, None),
                None,
                Principal("k3", "", None),
            ]  # type: ignore[arg-type]
        )
        if rng.random() < 0.8:
            host, port = rng.choice(["h1", "h2", None]), rng.choice([443, 8443, None])
            ctx.attempts.append(Attempt(0, "https://h/v1", host, port, ctx.model, now, now, rng.choice([200, 529])))
        ctx.result.usage = Usage(10 + i, 5, 0, 0, rng.random() < 0.5)
        ctx.cost_usd = rng.choice([0.01, None])
        ctx.outcome = rng.choice(["ok", "ok", "rejected"])
        ctx.rejected_reason = "budget" if ctx.outcome == "rejected" else None
        contexts.append(ctx)

    cached, fresh = metrics(), metrics()
    for i, ctx in enumerate(contexts * 2):
        err = "529" if i % 6 == 0 else None
        cached.record_call(ctx, (1, 2), 0.5, err, None, now + i)
        fresh._call_key_sets.clear()  # the reference builds every key on every call
        fresh._who.clear()
        fresh.record_call(copy.copy(ctx), (1, 2), 0.5, err, None, now + i)
        cached.record_session(i % 3 == 0, i, cached.who(ctx), None, now + i)
        fresh._who.clear()
        fresh.record_session(i % 3 == 0, i, fresh.who(ctx), None, now + i)
    for mine, reference in zip(cached.local.counters, fresh.local.counters, strict=True):
        assert mine.series == reference.series, mine.name
    for mine, reference in zip(cached.local.histograms, fresh.local.histograms, strict=True):
        assert mine.series.keys() == reference.series.keys(), mine.name
        for key, entry in mine.series.items():
            assert (entry.count, entry.sum, entry.counts) == (
                reference.series[key].count,
                reference.series[key].sum,
                reference.series[key].counts,
            )
    assert any("_OTHER" in str(key) for key in cached.duration.series)  # the label limits were reached
