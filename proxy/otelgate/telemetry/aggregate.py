"""Per-call counters and histograms aggregated in plain dicts, published to the SDK's readers at collection time.

Why not the SDK's synchronous instruments: each `Counter.add` / `Histogram.record` validates and hashes its
attribute dict, builds a `Measurement`, offers an exemplar and takes two locks — ~10 µs a measurement, ~8 of them
per call, most of the telemetry budget of a request. Here a measurement is a dict lookup on a tuple key the caller
built once, an add, and (histograms) a `bisect`. At collection (a `/metrics` scrape, a periodic OTLP export) the
series are turned into the SDK's own `Metric`/`Sum`/`Histogram` points and merged into what the SDK collected, so
the Prometheus renderer and the OTLP exporters see exactly what SDK instruments would have produced: same names,
units, descriptions, bucket boundaries, temporality per reader (cumulative or delta), start times, min/max,
cardinality overflow (`otel.metric.overflow=true` past 2000 series) and, on histograms, one exemplar per bucket
(the last sampled measurement, reset per reader collection — the SDK's aligned-bucket reservoir). Counters carry
no exemplars (a cost or retry count is linked to traces through the duration histogram of the same call).

Keys are tuples of (attribute, value) pairs; a metric's keys must be built in one fixed order (one code path per
metric) so equal attribute sets are equal keys. Recording runs on the event loop, collection on the reader's
thread: one lock, taken once per call by the recorder (`with local.lock:`) and once per collection.
"""

from __future__ import annotations

import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

Key = tuple[tuple[str, Any], ...]
CARDINALITY_LIMIT = 2000  # the SDK's default per metric: this many series, then one overflow series
OVERFLOW_KEY: Key = (("otel.metric.overflow", True),)
_CUMULATIVE = AggregationTemporality.CUMULATIVE
_DELTA = AggregationTemporality.DELTA


def exemplar_mode() -> str:
    """OTEL_METRICS_EXEMPLAR_FILTER as the SDK reads it: trace_based (default), always_on, always_off."""
    value = os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based").strip().lower()
    return value if value in ("always_on", "always_off") else "trace_based"


class LocalCounter:
    """A monotonic sum. `series[key] = [value, start_ns]`."""

    __slots__ = ("description", "name", "series", "unit")

    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.series: dict[Key, list[Any]] = {}

    def add(self, key: Key, value: float, now_ns: int) -> None:
        entry = self.series.get(key)
        if entry is None:
            if len(self.series) >= CARDINALITY_LIMIT:
                key = OVERFLOW_KEY
                entry = self.series.get(key)
            if entry is None:
                entry = self.series[key] = [0, now_ns]
        entry[0] += value


class _Bucketed:
    __slots__ = ("count", "counts", "exemplars", "imax", "imin", "max", "min", "start_ns", "sum")

    def __init__(self, buckets: int, now_ns: int) -> None:
        self.counts = [0] * buckets
        self.count = 0
        self.sum: float = 0
        self.min = self.imin = math.inf  # imin/imax: since the last delta collection
        self.max = self.imax = -math.inf
        self.start_ns = now_ns
        # per bucket: (value, time_ns, span_id, trace_id) of the last sampled measurement, or None
        self.exemplars: list[tuple[float, int, int | None, int | None] | None] = [None] * buckets


class LocalHistogram:
    """Explicit-bucket histogram with (prev, bound] buckets, as the SDK's `bisect_left` places values."""

    __slots__ = ("bounds", "description", "name", "series", "unit")

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.bounds = tuple(float(b) for b in bounds)
        self.series: dict[Key, _Bucketed] = {}

    def record(self, key: Key, value: float, now_ns: int, exemplar: tuple[int, int] | None) -> None:
        entry = self.series.get(key)
        if entry is None:
            if len(self.series) >= CARDINALITY_LIMIT:
                key = OVERFLOW_KEY
                entry = self.series.get(key)
            if entry is None:
                entry = self.series[key] = _Bucketed(len(self.bounds) + 1, now_ns)
        index = bisect_left(self.bounds, value)
        entry.counts[index] += 1
        entry.count += 1
        entry.sum += value
        if value < entry.min:
            entry.min = value
        if value > entry.max:
            entry.max = value
        if value < entry.imin:
            entry.imin = value
        if value > entry.imax:
            entry.imax = value
        if exemplar is not None:
            entry.exemplars[index] = (value, now_ns, exemplar[1], exemplar[0])


class _ReaderState:
    """What one reader has been sent so far (delta temporality, and exemplars reset per reader)."""

    __slots__ = ("last_ns", "sent")

    def __init__(self) -> None:
        self.last_ns = 0
        self.sent: dict[tuple[str, Key], Any] = {}


class LocalMetrics:
    """The registry: instruments, the exemplar decision, and the hook that merges them into a reader's collection."""

    def __init__(self, scope_name: str) -> None:
        self.lock = threading.Lock()
        self.counters: list[LocalCounter] = []
        self.histograms: list[LocalHistogram] = []
        self.scope = InstrumentationScope(scope_name)
        mode = exemplar_mode()
        self._exemplars_always = mode == "always_on"
        self._exemplars_never = mode == "always_off"
        self._readers: dict[int, _ReaderState] = {}

    def counter(self, spec: tuple[str, str, str]) -> LocalCounter:
        instrument = LocalCounter(*spec)
        self.counters.append(instrument)
        return instrument

    def histogram(self, spec: tuple[str, str, str], bounds: Sequence[float]) -> LocalHistogram:
        instrument = LocalHistogram(*spec, bounds)
        self.histograms.append(instrument)
        return instrument

    def exemplar_for(self, span_context: SpanContext | None) -> tuple[int, int] | None:
        """(trace_id, span_id) to attach to this call's histogram measurements, per the exemplar filter."""
        if self._exemplars_never:
            return None
        if span_context is not None and span_context.is_valid:
            if span_context.trace_flags.sampled or self._exemplars_always:
                return (span_context.trace_id, span_context.span_id)
            return None
        return (0, 0) if self._exemplars_always else None

    # --- collection ------------------------------------------------------------------------------------------
    def attach(self, reader: MetricReader, resource: Resource) -> None:
        """Wrap the reader's collect callback (set by the MeterProvider) so our series join its collections."""
        inner: Callable[..., MetricsData | None] | None = getattr(reader, "_collect", None)
        if inner is None:
            raise RuntimeError("MetricReader has no collect callback: register it on a MeterProvider first")

        def collect(r: MetricReader, timeout_millis: float = 10_000) -> MetricsData | None:
            data = inner(r, timeout_millis=timeout_millis)
            return self.merge(data, r, resource)

        reader._collect = collect  # type: ignore[attr-defined]

    def merge(self, data: MetricsData | None, reader: MetricReader, resource: Resource) -> MetricsData | None:
        metrics = self.collect(reader)
        if not metrics:
            return data
        if data is None or not data.resource_metrics:
            scope_metrics = ScopeMetrics(scope=self.scope, metrics=metrics, schema_url="")
            return MetricsData(
                resource_metrics=[
                    ResourceMetrics(resource=resource, scope_metrics=[scope_metrics], schema_url=resource.schema_url)
                ]
            )
        resource_metrics = data.resource_metrics[0]
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name == self.scope.name:
                scope_metrics.metrics.extend(metrics)  # a list the SDK built for this collection only
                return data
        resource_metrics.scope_metrics.append(ScopeMetrics(scope=self.scope, metrics=metrics, schema_url=""))
        return data

    def collect(self, reader: MetricReader) -> list[Metric]:
        temporalities = getattr(reader, "_instrument_class_temporality", {})
        counter_t = _temporality(temporalities, "Counter")
        histogram_t = _temporality(temporalities, "Histogram")
        state = self._readers.setdefault(id(reader), _ReaderState())
        now = time.time_ns()
        out: list[Metric] = []
        with self.lock:
            previous_ns, state.last_ns = state.last_ns, now
            for counter in self.counters:
                points = self._counter_points(counter, counter_t, state, previous_ns, now)
                if points:
                    data = Sum(data_points=points, aggregation_temporality=counter_t, is_monotonic=True)
                    out.append(Metric(counter.name, counter.description, counter.unit, data))
            for histogram in self.histograms:
                points = self._histogram_points(histogram, histogram_t, state, previous_ns, now)
                if points:
                    out.append(
                        Metric(
                            histogram.name,
                            histogram.description,
                            histogram.unit,
                            Histogram(data_points=points, aggregation_temporality=histogram_t),
                        )
                    )
        return out

    @staticmethod
    def _counter_points(
        counter: LocalCounter, temporality: AggregationTemporality, state: _ReaderState, previous_ns: int, now: int
    ) -> list[NumberDataPoint]:
        points = []
        for key, (value, start_ns) in counter.series.items():
            if temporality is _DELTA:
                sent_key = (counter.name, key)
                before = state.sent.get(sent_key, 0)
                if value == before:
                    continue
                state.sent[sent_key] = value
                points.append(NumberDataPoint(dict(key), previous_ns or start_ns, now, value - before))
            else:
                points.append(NumberDataPoint(dict(key), start_ns, now, value))
        return points

    def _histogram_points(
        self,
        histogram: LocalHistogram,
        temporality: AggregationTemporality,
        state: _ReaderState,
        previous_ns: int,
        now: int,
    ) -> list[HistogramDataPoint]:
        points = []
        for key, entry in histogram.series.items():
            exemplars = [
                Exemplar({}, value, time_ns, span_id or None, trace_id or None)
                for slot in entry.exemplars
                if slot is not None
                for value, time_ns, span_id, trace_id in (slot,)
                if time_ns > previous_ns
            ]
            attributes = dict(key)
            if temporality is _DELTA:
                sent_key = (histogram.name, key)
                before = state.sent.get(sent_key)
                count_before, sum_before, counts_before = before if before else (0, 0, [0] * len(entry.counts))
                if entry.count == count_before:
                    continue
                state.sent[sent_key] = (entry.count, entry.sum, list(entry.counts))
                counts = tuple(c - b for c, b in zip(entry.counts, counts_before, strict=True))
                points.append(
                    HistogramDataPoint(
                        attributes=attributes,
                        start_time_unix_nano=previous_ns or entry.start_ns,
                        time_unix_nano=now,
                        count=entry.count - count_before,
                        sum=entry.sum - sum_before,
                        bucket_counts=counts,
                        explicit_bounds=histogram.bounds,
                        min=entry.imin,
                        max=entry.imax,
                        exemplars=exemplars,
                    )
                )
                entry.imin, entry.imax = math.inf, -math.inf
            else:
                points.append(
                    HistogramDataPoint(
                        attributes=attributes,
                        start_time_unix_nano=entry.start_ns,
                        time_unix_nano=now,
                        count=entry.count,
                        sum=entry.sum,
                        bucket_counts=tuple(entry.counts),
                        explicit_bounds=histogram.bounds,
                        min=entry.min,
                        max=entry.max,
                        exemplars=exemplars,
                    )
                )
        return points


def _temporality(mapping: dict[type, AggregationTemporality], class_name: str) -> AggregationTemporality:
    # The reader keys its preferences by the SDK's private instrument classes (`_Counter`, `_Histogram`).
    for cls, temporality in mapping.items():
        if cls.__name__ in (class_name, "_" + class_name):
            return temporality
    return _CUMULATIVE
