"""`/metrics`: the same metrics that go out over OTLP, in the Prometheus text format (0.0.4).

A pull `MetricReader` collects on each scrape; the renderer follows the OpenTelemetry → Prometheus rules the
Collector uses (dots → underscores, unit `s` → `_seconds`, brace units dropped, monotonic sums get `_total`,
attribute names sanitised), so dashboards work the same on a direct scrape and behind a Collector. Written here
rather than pulling in prometheus_client: it is a hundred lines and keeps the dependency list short.
"""

from __future__ import annotations

import math
import re
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    MetricReader,
    MetricsData,
    Sum,
)

from otelgate.telemetry import semconv as sc

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "%": "percent"}


class PullReader(MetricReader):
    """Cumulative reader collected on demand by the /metrics handler."""

    def __init__(self) -> None:
        super().__init__()
        self._latest: MetricsData | None = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._latest = metrics_data

    def scrape(self) -> MetricsData | None:
        self._latest = None
        self.collect()
        return self._latest

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def metric_name(name: str, unit: str, monotonic_sum: bool) -> str:
    base = _INVALID.sub("_", name)
    suffix = _UNIT_SUFFIX.get(unit, "" if (not unit or unit.startswith("{") or unit == "1") else unit)
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{_INVALID.sub('_', suffix)}"
    if monotonic_sum and not base.endswith("_total"):
        base += "_total"
    return base


def label_name(name: str) -> str:
    label = _INVALID_LABEL.sub("_", name)
    return "_" + label if label[:1].isdigit() else label


def _escape(value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Any, extra: tuple[str, str] | None = None) -> str:
    parts = [f'{label_name(k)}="{_escape(v)}"' for k, v in sorted((attributes or {}).items())]
    if extra is not None:
        parts.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def render(data: MetricsData | None) -> str:
    if data is None:
        return ""
    lines: list[str] = []
    seen: set[str] = set()
    for resource_metrics in data.resource_metrics:
        attrs = resource_metrics.resource.attributes
        info = {k: attrs[k] for k in (sc.SERVICE_NAME, sc.SERVICE_VERSION, sc.SERVICE_INSTANCE_ID) if k in attrs}
        if info and "target_info" not in seen:
            seen.add("target_info")
            lines += ["# HELP target_info Target metadata", "# TYPE target_info gauge", f"target_info{_labels(info)} 1"]
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                data_ = metric.data
                if isinstance(data_, Sum):
                    if data_.aggregation_temporality is not AggregationTemporality.CUMULATIVE:
                        continue
                    name = metric_name(metric.name, metric.unit or "", data_.is_monotonic)
                    kind = "counter" if data_.is_monotonic else "gauge"
                elif isinstance(data_, Gauge):
                    name, kind = metric_name(metric.name, metric.unit or "", False), "gauge"
                elif isinstance(data_, Histogram):
                    name, kind = metric_name(metric.name, metric.unit or "", False), "histogram"
                else:
                    continue
                if name in seen:
                    continue
                seen.add(name)
                lines.append(f"# HELP {name} {_escape(metric.description or metric.name)}")
                lines.append(f"# TYPE {name} {kind}")
                for point in data_.data_points:
                    if kind == "histogram":
                        cumulative = 0
                        for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                            cumulative += count
                            lines.append(
                                f"{name}_bucket{_labels(point.attributes, ('le', _number(float(bound))))} {cumulative}"
                            )
                        lines.append(f"{name}_bucket{_labels(point.attributes, ('le', '+Inf'))} {point.count}")
                        lines.append(f"{name}_sum{_labels(point.attributes)} {_number(point.sum)}")
                        lines.append(f"{name}_count{_labels(point.attributes)} {point.count}")
                    else:
                        lines.append(f"{name}{_labels(point.attributes)} {_number(point.value)}")
    return "\n".join(lines) + "\n"
