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

from opentelemetry.sdk.trace import ReadableSpan

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


# The whole tagged KeyValue field, per field tag, memoised for values that repeat from call to call (models,
# routes, providers, keys, teams, statuses, ports, flags): `_Fields.plain` maps the attribute's (key, value) item
# itself (no tuple built) for short strings and ints, `bools` the same for bools (kept apart: True == 1 as a dict
# key), and `floats` maps a key to the field's bytes up to the 8-byte double (the field length is fixed for a key).
# Bounded: a cache full of one-off values (ids, token counts) is cleared so the repeating ones come back.
_MAX_FIELDS = 16384
_CACHE_MAX_LEN = 128


class _Fields:
    __slots__ = ("bools", "floats", "plain", "tag")

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.plain: dict[tuple[str, Any], bytes] = {}
        self.bools: dict[tuple[str, bool], bytes] = {}
        self.floats: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self.plain) + len(self.bools) + len(self.floats)

    def _store(self, cache: dict[Any, bytes], key: Any, encoded: bytes) -> bytes:
        if len(self) >= _MAX_FIELDS:
            self.plain.clear()  # full of one-off values: start over so the repeating ones are cached again
            self.bools.clear()
            self.floats.clear()
        cache[key] = encoded
        return encoded

    def plain_field(self, item: tuple[str, Any]) -> bytes:
        encoded = _field(self.tag, key_value(*item))
        value = item[1]
        if type(value) is int or len(value) <= _CACHE_MAX_LEN:
            self._store(self.plain, item, encoded)
        return encoded

    def bool_field(self, item: tuple[str, bool]) -> bytes:
        return self._store(self.bools, item, _field(self.tag, key_value(*item)))

    def float_prefix(self, key: str) -> bytes:
        # KeyValue = key field, then field 2 holding AnyValue{double_value (4, fixed64)}: 0x12 0x09 0x21 + 8 bytes.
        kv_head = _key(key) + b"\x12\x09\x21"
        return self._store(self.floats, key, self.tag + varint(len(kv_head) + 8) + kv_head)


_FIELDS: dict[bytes, _Fields] = {}


def _field(tag: bytes, kv: bytes) -> bytes:
    n = len(kv)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + kv


def _fields(tag: bytes) -> _Fields:
    fields = _FIELDS.get(tag)
    if fields is None:
        fields = _FIELDS[tag] = _Fields(tag)
    return fields


def attributes(tag: bytes, attrs: Mapping[str, Any] | None, skip_none: bool = False) -> bytes:
    """Repeated KeyValue under `tag` (an attribute the SDK fails to encode is left out, as there)."""
    if not attrs:
        return b""
    fields = _FIELDS.get(tag) or _fields(tag)
    plain, bools, floats = fields.plain, fields.bools, fields.floats
    parts = []
    append = parts.append
    # This loop is the encoder's hot spot: one type test, one dict lookup on the item, one append per attribute.
    for item in attrs.items():
        kind = type(item[1])
        if kind is str or kind is int:
            encoded = plain.get(item)
            if encoded is None:
                encoded = fields.plain_field(item)
        elif kind is float:
            encoded = (floats.get(item[0]) or fields.float_prefix(item[0])) + _double(item[1])
        elif kind is bool:
            encoded = bools.get(item)
            if encoded is None:
                encoded = fields.bool_field(item)
        elif item[1] is None and skip_none:
            continue
        else:
            try:
                encoded = _field(tag, key_value(*item))
            except Exception:
                continue
        append(encoded)
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


_ALL_BOUNDED = (True, True, True)
_KINDS: dict[Any, bytes] = {}  # SpanKind -> field 6; the SDK's SpanKind is the proto's minus one
_STATUSES: dict[Any, bytes] = {}  # StatusCode -> the whole status field (7) when there is no description


def _kind(kind: Any) -> bytes:
    encoded = _KINDS.get(kind)
    if encoded is None:
        encoded = _KINDS[kind] = b"\x30" + varint(kind.value + 1)
    return encoded


def _status(status: Any) -> bytes:
    code = status.status_code
    if not status.description:
        encoded = _STATUSES.get(code)
        if encoded is None:
            encoded = _STATUSES[code] = _ld(b"\x7a", b"\x18" + varint(code.value) if code.value else b"")
        return encoded
    body = b"\x18" + varint(code.value) if code.value else b""
    return _ld(b"\x7a", body + _string(b"\x12", status.description))


def span(s: Any) -> bytes:
    """Span message body from an SDK `ReadableSpan`."""
    if type(s) is ReadableSpan:
        # Its own fields, not the properties: `attributes`, `events` and `links` copy on every read. Dropped counts
        # exist only on the SDK's bounded containers: a plain dict or tuple has none (skip the property then).
        attrs, events, links = s._attributes, s._events, s._links
        bounded = type(attrs) is not dict, type(events) is not tuple, type(links) is not tuple
    else:
        attrs, events, links = s.attributes, s.events, s.links
        bounded = _ALL_BOUNDED
    ctx = s.context
    out = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08", ctx.span_id.to_bytes(8, "big")]
    state = ctx.trace_state
    if state:
        out.append(_string(b"\x1a", _trace_state(state)))
    parent = s.parent
    if parent:
        out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if s.name:
        out.append(_string(b"\x2a", s.name))
    out.append(_KINDS.get(s.kind) or _kind(s.kind))
    if s.start_time:
        out.append(b"\x39" + _fixed64(s.start_time))
    if s.end_time:
        out.append(b"\x41" + _fixed64(s.end_time))
    if attrs:
        out.append(attributes(b"\x4a", attrs))
    if bounded[0] and s.dropped_attributes:  # also with no attributes left (a limit of 0)
        out.append(b"\x50" + varint(s.dropped_attributes))
    if events:
        for event in events:
            body = b"\x09" + _fixed64(event.timestamp) if event.timestamp else b""
            if event.name:
                body += _string(b"\x12", event.name)
            body += attributes(b"\x1a", event.attributes)
            if event.dropped_attributes:
                body += b"\x20" + varint(event.dropped_attributes)
            out.append(_ld(b"\x5a", body))
    if bounded[1] and s.dropped_events:
        out.append(b"\x60" + varint(s.dropped_events))
    if links:
        for link in links:
            lc = link.context
            body = b"\x0a\x10" + lc.trace_id.to_bytes(16, "big") + b"\x12\x08" + lc.span_id.to_bytes(8, "big")
            body += attributes(b"\x22", link.attributes)
            if link.dropped_attributes:
                body += b"\x28" + varint(link.dropped_attributes)
            body += b"\x35" + _fixed32(_HAS_IS_REMOTE | (_IS_REMOTE if lc.is_remote else 0))
            out.append(_ld(b"\x6a", body))
    if bounded[2] and s.dropped_links:
        out.append(b"\x70" + varint(s.dropped_links))
    status = s.status
    if status is not None:
        out.append(_status(status))
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
