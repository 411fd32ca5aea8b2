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
        if b"\n" not in buffer:
            self._buffer = buffer
            if len(buffer) > self._max_event_bytes:
                raise SSEError("event larger than the limit")
            return []
        # One split at C speed, then the two common fields inline: a stream is mostly `event:` / `data:` lines.
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if data or self._event is not None:
                    events.append(SSEEvent(self._event, data[0] if len(data) == 1 else "\n".join(data)))
                    self._event = None
                    data = self._data = []
                continue
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value.decode("utf-8", "replace"))
            elif line[:6] == b"event:":
                value = line[7:] if line[6:7] == b" " else line[6:]
                self._event = value.decode("utf-8", "replace")
            else:
                self._line(line)
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
