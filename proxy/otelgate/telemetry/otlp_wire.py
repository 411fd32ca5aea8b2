"""OTLP protobuf wire format, written directly for the spans and log records otelgate emits.

The SDK's encoder builds a protobuf message object per span, attribute, value and event, then serialises the tree;
on otelgate's request rate that was the largest single cost of OTLP export (run on the batch threads, which hold the
GIL the event loop needs). Here each field is appended as bytes: tags are constants, attribute keys are encoded once
and cached, the resource and scope once per batch. The output parses to the same `ExportTraceServiceRequest` /
`ExportLogsServiceRequest` the SDK would send (`tests/test_telemetry_otlp_wire.py` compares them field by field);
only field order on the wire may differ, which protobuf ignores.

Field numbers: opentelemetry-proto `trace/v1/trace.proto`, `logs/v1/logs.proto`, `common/v1/common.proto`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack
_SMALL = [bytes((i,)) for i in range(128)]
_INT64_MASK = (1 << 64) - 1


def varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n] if n >= 0 else varint(n & _INT64_MASK)  # int64 negatives: two's complement, 10 bytes
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + payload


def _string(tag: bytes, value: str) -> bytes:
    return _ld(tag, value.encode("utf-8"))


# --- common.proto: AnyValue, KeyValue -------------------------------------------------------------------------------
def any_value(value: Any) -> bytes:
    """The AnyValue message body for a value (as the SDK's `_encode_value`: bool before int, None = empty)."""
    kind = type(value)
    if kind is str:
        return _ld(b"\x0a", value.encode("utf-8"))
    if kind is int:
        return b"\x18" + varint(value)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is float:
        return b"\x21" + _double(value)
    if value is None:
        return b""
    # Subclasses (enums, user types) and containers, in the SDK's order.
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _ld(b"\x0a", str.encode(value, "utf-8"))
    if isinstance(value, int):
        return b"\x18" + varint(int(value))
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _ld(b"\x3a", value)
    if isinstance(value, Sequence):
        return _ld(b"\x2a", b"".join([_ld(b"\x0a", any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _ld(b"\x32", b"".join([_ld(b"\x0a", key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"invalid attribute value type {kind.__name__}")


_KEYS: dict[str, bytes] = {}
_MAX_KEYS = 4096  # attribute and body keys are a fixed set; the bound only guards against unexpected ones


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _ld(b"\x0a", key.encode("utf-8"))
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[key] = encoded
    return encoded


def key_value(key: str, value: Any) -> bytes:
    """KeyValue message body: key (field 1) and value (field 2, always present as in the SDK)."""
    return _key(key) + _ld(b"\x12", any_value(value))


# (key, value) -> the whole tagged KeyValue field, per field tag, for short strings and ints: models, routes,
# providers, keys, teams, statuses and ports repeat from call to call. Bounded: cleared when full.
_FIELDS: dict[bytes, dict[tuple[str, Any], bytes]] = {}
_MAX_FIELDS = 16384
_CACHE_MAX_LEN = 128


def _field(tag: bytes, kv: bytes) -> bytes:
    n = len(kv)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + kv


def attributes(tag: bytes, attrs: Mapping[str, Any] | None, skip_none: bool = False) -> bytes:
    """Repeated KeyValue under `tag` (an attribute the SDK fails to encode is left out, as there)."""
    if not attrs:
        return b""
    cache = _FIELDS.get(tag)
    if cache is None:
        cache = _FIELDS[tag] = {}
    parts = []
    for key, value in attrs.items():
        kind = type(value)
        # Strings and ints (most attributes) through the cache: this loop is the encoder's hot spot.
        if kind is str or kind is int:
            if kind is int or len(value) <= _CACHE_MAX_LEN:
                pair = (key, value)
                encoded = cache.get(pair)
                if encoded is None:
                    encoded = _field(tag, key_value(key, value))
                    if len(cache) >= _MAX_FIELDS:
                        cache.clear()  # full of one-off ids: start over so the repeating values are cached again
                    cache[pair] = encoded
                parts.append(encoded)
            else:
                parts.append(_field(tag, key_value(key, value)))
        elif value is None and skip_none:
            continue
        else:
            try:
                parts.append(_field(tag, key_value(key, value)))
            except Exception:
                continue
    return b"".join(parts)


def resource(res: Any) -> bytes:
    """Resource message body."""
    return attributes(b"\x0a", res.attributes)


def scope(sc: Any) -> bytes:
    """InstrumentationScope message body (empty for None, as the SDK sends)."""
    if sc is None:
        return b""
    out = b""
    if sc.name:
        out += _string(b"\x0a", sc.name)
    if sc.version:
        out += _string(b"\x12", sc.version)
    return out + attributes(b"\x1a", sc.attributes)


def _grouped(items: Iterable[Any], resource_of: Any, scope_of: Any) -> list[tuple[Any, list[tuple[Any, list[Any]]]]]:
    # Grouped by identity (the SDK hashes the resource's attributes per item; otelgate has one of each).
    groups: dict[int, tuple[Any, dict[int, tuple[Any, list[Any]]]]] = {}
    for item in items:
        res, sc = resource_of(item), scope_of(item) or None
        entry = groups.get(id(res))
        if entry is None:
            entry = groups[id(res)] = (res, {})
        by_scope = entry[1].get(id(sc))
        if by_scope is None:
            by_scope = entry[1][id(sc)] = (sc, [])
        by_scope[1].append(item)
    return [(res, list(scopes.values())) for res, scopes in groups.values()]


def _envelope(groups: list[tuple[Any, list[tuple[Any, list[bytes]]]]], item_tag: bytes) -> bytes:
    """Export*ServiceRequest: resource_* (1) { resource (1), scope_* (2) { scope (1), items, schema_url (3) },
    schema_url (3) }."""
    out = []
    for res, scopes in groups:
        body = [_ld(b"\x0a", resource(res))]
        for sc, encoded in scopes:
            scoped = [_ld(b"\x0a", scope(sc))]
            scoped.extend(_ld(item_tag, item) for item in encoded)
            if sc is not None and sc.schema_url:
                scoped.append(_string(b"\x1a", sc.schema_url))
            body.append(_ld(b"\x12", b"".join(scoped)))
        if res.schema_url:
            body.append(_string(b"\x1a", res.schema_url))
        out.append(_ld(b"\x0a", b"".join(body)))
    return b"".join(out)


# --- trace.proto -----------------------------------------------------------------------------------------------------
_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_FLAGS_LOCAL = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE)  # field 16, fixed32
_FLAGS_REMOTE = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


def _trace_state(state: Any) -> str:
    return ",".join([f"{k}={v}" for k, v in state.items()]) if state is not None else ""


def span(s: Any) -> bytes:
    """Span message body from an SDK `ReadableSpan`."""
    ctx = s.context
    out = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08", ctx.span_id.to_bytes(8, "big")]
    state = _trace_state(ctx.trace_state)
    if state:
        out.append(_string(b"\x1a", state))
    parent = s.parent
    if parent:
        out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if s.name:
        out.append(_string(b"\x2a", s.name))
    out.append(b"\x30" + _SMALL[s.kind.value + 1])  # the SDK's SpanKind is the proto's minus one
    if s.start_time:
        out.append(b"\x39" + _fixed64(s.start_time))
    if s.end_time:
        out.append(b"\x41" + _fixed64(s.end_time))
    out.append(attributes(b"\x4a", s.attributes))
    if s.dropped_attributes:
        out.append(b"\x50" + varint(s.dropped_attributes))
    for event in s.events:
        body = b"\x09" + _fixed64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _string(b"\x12", event.name)
        body += attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + varint(event.dropped_attributes)
        out.append(_ld(b"\x5a", body))
    if s.dropped_events:
        out.append(b"\x60" + varint(s.dropped_events))
    for link in s.links:
        lc = link.context
        body = b"\x0a\x10" + lc.trace_id.to_bytes(16, "big") + b"\x12\x08" + lc.span_id.to_bytes(8, "big")
        body += attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + varint(link.dropped_attributes)
        body += b"\x35" + _fixed32(_HAS_IS_REMOTE | (_IS_REMOTE if lc.is_remote else 0))
        out.append(_ld(b"\x6a", body))
    if s.dropped_links:
        out.append(b"\x70" + varint(s.dropped_links))
    status = s.status
    if status is not None:
        body = b"\x18" + _SMALL[status.status_code.value] if status.status_code.value else b""
        if status.description:
            body += _string(b"\x12", status.description)
        out.append(_ld(b"\x7a", body))
    out.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(out)


def encode_spans(spans: Sequence[Any]) -> bytes:
    """ExportTraceServiceRequest bytes for a batch of SDK `ReadableSpan`s."""
    groups = _grouped(spans, lambda s: s.resource, lambda s: s.instrumentation_scope)
    encoded = [(res, [(sc, [span(s) for s in items]) for sc, items in scopes]) for res, scopes in groups]
    return _envelope(encoded, b"\x12")


# --- logs.proto ------------------------------------------------------------------------------------------------------
def log_record(
    time_ns: int,
    observed_ns: int,
    severity_number: int,
    severity_text: str,
    body: Any,
    trace_id: int,
    span_id: int,
    flags: int,
    event_name: str,
    skip_none: bool = False,
) -> bytes:
    """LogRecord message body. With `skip_none`, a dict body's None values are left out (as if never set)."""
    out = [b"\x09" + _fixed64(time_ns)] if time_ns else []
    if observed_ns:
        out.append(b"\x59" + _fixed64(observed_ns))
    if severity_number:
        out.append(b"\x10" + varint(severity_number))
    if severity_text:
        out.append(_string(b"\x1a", severity_text))
    if skip_none and isinstance(body, Mapping):
        out.append(_ld(b"\x2a", _ld(b"\x32", attributes(b"\x0a", body, skip_none=True))))
    else:
        out.append(_ld(b"\x2a", any_value(body)))
    if flags:
        out.append(b"\x45" + _fixed32(flags))
    if trace_id:
        out.append(b"\x4a\x10" + trace_id.to_bytes(16, "big"))
    if span_id:
        out.append(b"\x52\x08" + span_id.to_bytes(8, "big"))
    if event_name:
        out.append(_string(b"\x62", event_name))
    return b"".join(out)


def encode_logs(groups: list[tuple[Any, list[tuple[Any, list[bytes]]]]]) -> bytes:
    """ExportLogsServiceRequest bytes from already encoded LogRecord bodies grouped by resource and scope."""
    return _envelope(groups, b"\x12")
