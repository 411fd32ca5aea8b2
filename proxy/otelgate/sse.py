"""Incremental Server-Sent Events parser: bytes in as they arrive, complete events out.

It never holds more than one unfinished event, so a long stream costs constant memory. Only the fields the
gateway needs (`event`, `data`) are kept; `id`/`retry`/comments are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class SSEError(ValueError):
    """The upstream sent something that is not an event stream."""


class SSEParser:
    __slots__ = ("_buffer", "_data", "_event", "_max_event_bytes")

    def __init__(self, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data or self._event is not None:
                    events.append(SSEEvent(self._event, "\n".join(self._data)))
                    self._event = None
                    self._data = []
                continue
            self._line(line)
        self._buffer = buffer[start:]
        if len(self._buffer) > self._max_event_bytes:
            raise SSEError("event larger than the limit")
        return events

    def _line(self, line: bytes) -> None:
        if line[:1] == b":":
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name in (b"id", b"retry"):
            return
        else:
            raise SSEError(f"not an SSE field: {name[:40]!r}")

    @property
    def at_boundary(self) -> bool:
        """True when no partial event is pending: an error event written now will not be glued onto one."""
        return not self._buffer and not self._data and self._event is None
