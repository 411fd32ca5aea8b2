"""Local metric aggregation (otelgate.telemetry.aggregate) against the SDK's own instruments: the same measurements
fed to both must collect to the same points — names, units, attributes, bucket counts, sums, min/max, temporality —
for cumulative and delta readers, with exemplars on histograms reset per collection and the cardinality overflow."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otelgate.telemetry import aggregate
from otelgate.telemetry.aggregate import LocalMetrics

SCOPE = "otelgate-test"
BOUNDS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28]
RESOURCE = Resource({"service.name": "t"})
DELTA = {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA}


def points(data: MetricsData | None) -> dict[tuple[str, str, str], dict[Any, Any]]:
    """{(name, unit, kind): {attributes: point fields}} without timestamps and exemplars."""
    out: dict[tuple[str, str, str], dict[Any, Any]] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                d = metric.data
                kind = f"{type(d).__name__}:{d.aggregation_temporality.name}"
                for p in d.data_points:
                    key = tuple(sorted(p.attributes.items()))
                    if hasattr(p, "bucket_counts"):
                        fields = (
                            p.count,
                            round(p.sum, 9),
                            tuple(p.bucket_counts),
                            tuple(p.explicit_bounds),
                            p.min,
                            p.max,
                        )
                    else:
                        fields = (round(p.value, 9),)
                    out.setdefault((metric.name, metric.unit or "", kind), {})[key] = fields
    return out


def pair(temporality: dict[type, AggregationTemporality] | None = None):
    sdk_reader = InMemoryMetricReader(preferred_temporality=temporality)
    sdk = MeterProvider(resource=RESOURCE, metric_readers=[sdk_reader]).get_meter(SCOPE)
    local_reader = InMemoryMetricReader(preferred_temporality=temporality)
    MeterProvider(resource=RESOURCE, metric_readers=[local_reader])
    local = LocalMetrics(SCOPE)
    local.attach(local_reader, RESOURCE)
    return sdk, sdk_reader, local, local_reader


MEASUREMENTS = [
    (0.005, {"a": "x", "n": 1}),
    (0.01, {"a": "x", "n": 1}),
    (0.0100001, {"a": "x", "n": 1}),
    (0.5, {"a": "y", "n": 1}),
    (3.0, {"a": "y", "n": 1}),
    (0.02, {"a": "x", "n": 2}),
]


@pytest.mark.parametrize("temporality", [None, DELTA], ids=["cumulative", "delta"])
def test_same_points_as_the_sdk(temporality: dict[type, AggregationTemporality] | None) -> None:
    sdk, sdk_reader, local, local_reader = pair(temporality)
    spec = ("t.duration", "s", "how long")
    sdk_hist = sdk.create_histogram(*spec, explicit_bucket_boundaries_advisory=BOUNDS)
    sdk_count = sdk.create_counter("t.cost", unit="usd", description="money")
    hist = local.histogram(spec, BOUNDS)
    count = local.counter(("t.cost", "usd", "money"))
    for batch in (MEASUREMENTS, MEASUREMENTS[2:], [], MEASUREMENTS[:1]):  # the third interval records nothing
        for value, attrs in batch:
            sdk_hist.record(value, attrs)
            sdk_count.add(value * 2, attrs)
            with local.lock:
                hist.record(tuple(attrs.items()), value, time.time_ns(), None)
                count.add(tuple(attrs.items()), value * 2, time.time_ns())
        expected, got = points(sdk_reader.get_metrics_data()), points(local_reader.get_metrics_data())
        assert got == expected
        if batch:
            assert ("t.duration", "s", f"Histogram:{(temporality and 'DELTA') or 'CUMULATIVE'}") in got


def test_histogram_exemplars_point_at_sampled_spans_and_reset_per_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    _, _, local, reader = pair()
    hist = local.histogram(("t.duration", "s", ""), BOUNDS)
    sampled = SpanContext(0xABC, 0x12, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    unsampled = SpanContext(0xDEF, 0x34, is_remote=False, trace_flags=TraceFlags(0))
    assert local.exemplar_for(unsampled) is None  # trace_based: only sampled spans
    with local.lock:
        hist.record((("a", "x"),), 0.015, time.time_ns(), local.exemplar_for(sampled))
        hist.record((("a", "x"),), 0.5, time.time_ns(), local.exemplar_for(unsampled))
    data = reader.get_metrics_data()
    (point,) = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert [(e.trace_id, e.span_id, e.value) for e in point.exemplars] == [(0xABC, 0x12, 0.015)]
    # Same check through the SDK's own reservoir, so "the same as the SDK" is what is asserted.
    sdk, sdk_reader, _, _ = pair()
    sdk_hist = sdk.create_histogram("t.duration", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    sdk_hist.record(0.015, {"a": "x"}, context=trace.set_span_in_context(NonRecordingSpan(sampled)))
    sdk_hist.record(0.5, {"a": "x"}, context=trace.set_span_in_context(NonRecordingSpan(unsampled)))
    (sdk_point,) = sdk_reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert [(e.trace_id, e.span_id, e.value) for e in sdk_point.exemplars] == [(0xABC, 0x12, 0.015)]
    # Next collection: nothing new recorded, so no exemplar (the SDK resets its reservoir per collection too).
    (point,) = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert point.exemplars == [] and point.count == 2


def test_series_past_the_cardinality_limit_fold_into_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregate, "CARDINALITY_LIMIT", 4)
    _, _, local, reader = pair()
    count = local.counter(("t.calls", "", ""))
    with local.lock:
        for i in range(10):
            count.add((("model", f"m{i}"),), 1, time.time_ns())
    got = points(reader.get_metrics_data())[("t.calls", "", "Sum:CUMULATIVE")]
    # As the SDK does: the first 4 distinct sets keep their series, the rest share the overflow one.
    expected = {(("model", f"m{i}"),): (1,) for i in range(4)} | {(("otel.metric.overflow", True),): (6,)}
    assert got == expected
