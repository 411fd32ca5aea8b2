"""The telemetry fast paths give exactly what the slow paths they replace give."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otelgate.telemetry import traceparent

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
