"""otelgate's OTLP wire encoder against the SDK's: the bytes must parse to the same export requests."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from otelgate.telemetry import otlp_wire
from otelgate.telemetry import semconv as sc
from otelgate.telemetry.otlp_http import AccessRecord, WireLogExporter

RESOURCE = Resource.create({"service.name": "otelgate", "service.version": "1.2.3", "n": 3, "f": 1.5, "b": True})
REMOTE = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(1), TraceState([("vendor", "x")])
)
VALUES: dict[str, Any] = {
    "s": "POST",
    "empty": "",
    "unicode": "ünïcødé ✓" * 30,  # > 127 bytes: a two-byte length
    "zero": 0,
    "neg": -5,
    "big": 2**40,
    "big_neg": -(2**62),
    "f": 0.25,
    "t": True,
    "false": False,
    "strs": ("end_turn", "tool_use"),
    "ints": [1, 2, 300],
    "floats": (0.5, -1.0),
    "bools": [True, False],
    "none_seq": (),
}


def sdk_spans() -> list[Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("otelgate", "0.1", schema_url="https://opentelemetry.io/schemas/1.41.0")
    other = provider.get_tracer("other")
    parent = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    with tracer.start_as_current_span("POST /v1/messages", context=parent, kind=SpanKind.SERVER, attributes=VALUES):
        with tracer.start_as_current_span("chat claude", kind=SpanKind.CLIENT) as chat:
            chat.add_event("otelgate.screening", {"rule": "r1", "score": 0.9, "flagged": True})
            chat.add_event("bare")
            chat.set_status(Status(StatusCode.ERROR, "529"))
            with tracer.start_as_current_span("POST", kind=SpanKind.CLIENT) as attempt:
                attempt.set_status(Status(StatusCode.OK))
        tool = tracer.start_span("execute_tool get_weather", links=[Link(REMOTE, {"k": "v"}), Link(REMOTE)])
        tool.end()
        with other.start_as_current_span("x", kind=SpanKind.PRODUCER):
            pass
    with tracer.start_as_current_span("root", kind=SpanKind.CONSUMER):  # no parent, a new trace
        pass
    return list(exporter.get_finished_spans())


def test_spans_decode_to_the_sdk_encoding() -> None:
    spans = sdk_spans()
    ours = ExportTraceServiceRequest.FromString(otlp_wire.encode_spans(spans))
    theirs = sdk_encode_spans(spans)
    assert len(ours.resource_spans[0].scope_spans) == 2  # grouped by scope as the SDK does
    assert ours == theirs


def test_span_batch_of_many_matches_and_is_one_resource() -> None:
    spans = sdk_spans() * 50
    ours = ExportTraceServiceRequest.FromString(otlp_wire.encode_spans(spans))
    assert ours == sdk_encode_spans(spans)
    assert len(ours.resource_spans) == 1


def test_access_record_decodes_to_what_the_sdk_logger_sends() -> None:
    fields: dict[str, Any] = {
        "ts": 1795674332.377,
        "level": "info",
        "trace_id": f"{REMOTE.trace_id:032x}",
        "key": "support-bot",
        "stream": True,
        "status": 200,
        "cost_usd": 0.0012,
        "fallback": None,  # None fields are left out of the body, as before
        "verdicts": [{"rules": ["sk-ant"], "location": "input", "action": "block", "flagged": True, "score": 1.0}],
        "ünï": "✓",
    }
    now = 1_795_674_332_377_000_000

    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    provider.get_logger(sc.INSTRUMENTATION_SCOPE).emit(
        timestamp=now,
        observed_timestamp=now,
        context=trace.set_span_in_context(NonRecordingSpan(REMOTE)),
        severity_text="INFO",
        severity_number=SeverityNumber.INFO,
        body={k: v for k, v in fields.items() if v is not None},
        event_name=sc.ACCESS_LOGGER,
    )
    theirs = sdk_encode_logs(exporter.get_finished_logs())

    wire = WireLogExporter(RESOURCE, sc.INSTRUMENTATION_SCOPE, sc.ACCESS_LOGGER, endpoint="http://127.0.0.1:9")
    record = AccessRecord(now, REMOTE.trace_id, REMOTE.span_id, int(REMOTE.trace_flags), fields)
    ours = ExportLogsServiceRequest.FromString(wire._encode([record]))
    assert ours == theirs
    wire.shutdown()


def test_varint_matches_protobuf_for_edge_values() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    for value in (0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)):
        assert AnyValue.FromString(otlp_wire.any_value(value)) == AnyValue(int_value=value)


def test_cached_fields_keep_types_apart_and_survive_a_full_cache(monkeypatch: Any) -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    monkeypatch.setattr(otlp_wire, "_MAX_FIELDS", 8)
    values: list[Any] = [1, True, "1", 1.0, 0, False, "", *range(20), 1, True, "1"]
    for value in values:
        encoded = otlp_wire.attributes(b"\x0a", {"a": value})
        kv = KeyValue.FromString(encoded[2:])  # tag and one-byte length
        assert kv.key == "a"
        assert kv.value == AnyValue.FromString(otlp_wire.any_value(value))
        assert type(getattr(kv.value, kv.value.WhichOneof("value"))) is type(value)
    assert len(otlp_wire._FIELDS[b"\x0a"]) <= 8


def test_protocol_chooses_the_wire_path_for_http_and_the_sdk_for_grpc(monkeypatch: Any) -> None:
    from otelgate.telemetry.otlp_http import WireSpanExporter
    from otelgate.telemetry.setup import build_providers

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    for protocol, wire in (("http/protobuf", True), ("grpc", False)):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        providers = build_providers([])
        try:
            exporter = providers.span_processors[0].span_exporter._inner  # type: ignore[attr-defined]
            assert isinstance(exporter, WireSpanExporter) is wire
            assert (providers.access_records is not None) is wire
            assert providers.logger_provider is not None
        finally:
            providers.shutdown(1000)
