"""A real OTLP/HTTP receiver for tests: aiohttp on a loopback port, protobuf decoded with opentelemetry-proto.

    async with OtlpReceiver() as rx:             # rx.endpoint -> "http://127.0.0.1:PORT"
        ...                                       # point OTEL_EXPORTER_OTLP_ENDPOINT at it
        await rx.wait_for(lambda: rx.spans(), timeout=5)

`mode` makes it misbehave: "ok" (200), "refuse" (503 to everything), "stall" (never answers until closed).
Every request body is kept in `raw` so a test can scan every exported byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(items: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in items if isinstance(kv, KeyValue)}


@dataclass
class Span:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str]]
    resource: dict[str, Any]
    scope: str


@dataclass
class Point:
    attributes: dict[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    bounds: list[float] = field(default_factory=list)
    bucket_counts: list[int] = field(default_factory=list)
    exemplars: list[tuple[str, str]] = field(default_factory=list)  # (trace_id, span_id)


@dataclass
class Metric:
    name: str
    unit: str
    type: str  # sum | gauge | histogram
    monotonic: bool
    points: list[Point]


@dataclass
class LogRecord:
    body: Any
    trace_id: str
    span_id: str
    severity: str
    attributes: dict[str, Any]
    event_name: str


class OtlpReceiver:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.raw: list[bytes] = []
        self.requests = 0
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        self.log_requests: list[ExportLogsServiceRequest] = []
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._handler(ExportTraceServiceRequest, self.trace_requests))
        app.router.add_post("/v1/metrics", self._handler(ExportMetricsServiceRequest, self.metric_requests))
        app.router.add_post("/v1/logs", self._handler(ExportLogsServiceRequest, self.log_requests))
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _handler(self, message: type[Message], into: list[Any]) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.requests += 1
            if self.mode == "stall":
                await self._release.wait()
                return web.Response(status=503)
            if self.mode == "refuse":
                return web.Response(status=503, text="unavailable")
            self.raw.append(body)
            parsed = message()
            parsed.ParseFromString(body)
            into.append(parsed)
            async with self._changed:
                self._changed.notify_all()
            return web.Response(body=b"", content_type="application/x-protobuf")

        return handle

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Wait until predicate() is truthy, re-checking whenever a batch arrives."""

        async def loop() -> Any:
            async with self._changed:
                while not (value := predicate()):
                    await self._changed.wait()
                return value

        return await asyncio.wait_for(loop(), timeout)

    # --- decoded views --------------------------------------------------------------------------------------
    def spans(self) -> list[Span]:
        out = []
        for request in self.trace_requests:
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            Span(
                                name=s.name,
                                kind=_KINDS.get(s.kind, str(s.kind)),
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_span_id=s.parent_span_id.hex(),
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                                attributes=attributes(s.attributes),
                                status_code=s.status.code,
                                events=[(e.name, attributes(e.attributes)) for e in s.events],
                                links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                                resource=resource,
                                scope=ss.scope.name,
                            )
                        )
        return out

    def metrics(self) -> dict[str, Metric]:
        """The latest export of each metric by name (cumulative temporality: the latest is the total)."""
        out: dict[str, Metric] = {}
        for request in self.metric_requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        data = getattr(m, kind)
                        points = []
                        for p in data.data_points:
                            point = Point(attributes(p.attributes))
                            if kind == "histogram":
                                point.count, point.sum = p.count, p.sum
                                point.bounds, point.bucket_counts = list(p.explicit_bounds), list(p.bucket_counts)
                            else:
                                point.value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                            point.exemplars = [(e.trace_id.hex(), e.span_id.hex()) for e in p.exemplars]
                            points.append(point)
                        monotonic = bool(getattr(data, "is_monotonic", False))
                        out[m.name] = Metric(m.name, m.unit, kind, monotonic, points)
        return out

    def exemplars(self, name: str) -> set[tuple[str, str]]:
        """Every (trace_id, span_id) exemplar of a metric over all exports (the SDK resets them per collection)."""
        found: set[tuple[str, str]] = set()
        for request in self.metric_requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name == name:
                            data = getattr(m, m.WhichOneof("data"))
                            for p in data.data_points:
                                found |= {(e.trace_id.hex(), e.span_id.hex()) for e in p.exemplars}
        return found

    def logs(self) -> list[LogRecord]:
        out = []
        for request in self.log_requests:
            for rl in request.resource_logs:
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        out.append(
                            LogRecord(
                                body=any_value(r.body),
                                trace_id=r.trace_id.hex(),
                                span_id=r.span_id.hex(),
                                severity=r.severity_text,
                                attributes=attributes(r.attributes),
                                event_name=r.event_name,
                            )
                        )
        return out
