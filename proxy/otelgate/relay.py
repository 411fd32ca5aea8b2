"""Relaying upstream answers to the agent: headers as they came, bytes as they arrive.

The bytes go out unchanged; a decoded copy (when the upstream compressed them) feeds the provider's parser on the
side. A stream that breaks ends with a well-formed error event, never with a clean end: both SDKs would take a
clean early end for a complete answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from otelgate.context import RequestContext
from otelgate.errors import ErrorKind, GatewayError
from otelgate.health import STATE_KEY
from otelgate.sse import SSEError

# RFC 9110 §7.6.1 connection-specific headers, plus ones aiohttp computes for the bytes it sends.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
_RECOMPUTED = frozenset({"content-length", "host"})


def response_headers(upstream: Mapping[str, str], ctx: RequestContext) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    connection_tokens = {t.strip().lower() for t in upstream.get("connection", "").split(",") if t.strip()}
    for name, value in upstream.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _RECOMPUTED or lower in connection_tokens:
            continue
        headers.add(name, value)
    for name, value in ctx.response_headers.items():
        headers[name] = value
    return headers


class Decoder:
    """Undo gzip/deflate for the side parser only; the agent receives the original bytes."""

    def __init__(self, encoding: str | None) -> None:
        encoding = (encoding or "").strip().lower()
        if encoding in ("", "identity"):
            self._zlib = None
        elif encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        else:
            raise ValueError(f"unsupported content-encoding {encoding}")

    @property
    def identity(self) -> bool:
        return self._zlib is None

    def decode(self, data: bytes) -> bytes:
        return self._zlib.decompress(data) if self._zlib is not None else data

    def decode_whole(self, data: bytes, limit: int) -> bytes:
        """A whole body, decoded to at most `limit` bytes (a zip bomb stops there). Raises DecodedTooLarge, or
        zlib.error on a corrupt body."""
        if self._zlib is None:
            return data
        out = self._zlib.decompress(data, limit + 1)
        if len(out) > limit or self._zlib.unconsumed_tail:
            raise DecodedTooLarge(limit)
        return out


class DecodedTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"decoded body exceeds the limit of {limit} bytes")
        self.limit = limit


# An upstream answer is parsed on the side for its usage; past this size decoded, it is relayed unread.
MAX_DECODED_ANSWER = 64 * 1024 * 1024


def encode_json(data: Any) -> bytes:
    """A request body a policy rewrote, as compact UTF-8 JSON (only then is a body re-encoded)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def decode_json(body: bytes, encoding: str | None) -> dict | None:
    try:
        data = json.loads(Decoder(encoding).decode_whole(body, MAX_DECODED_ANSWER))
    except (ValueError, zlib.error):  # DecodedTooLarge is a ValueError too
        return None
    return data if isinstance(data, dict) else None


class StreamBroken(Exception):
    """The upstream stream failed after bytes reached the agent: end it with an error event."""

    def __init__(self, kind: ErrorKind, message: str, reason: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.reason = reason


class _Content(Protocol):
    async def readany(self) -> bytes: ...


class UpstreamStream(Protocol):
    """What the relay needs of an upstream streaming response (an aiohttp response, or upstream.StreamingBody)."""

    status: int
    headers: Mapping[str, str]

    @property
    def content(self) -> _Content: ...

    def close(self) -> None: ...

    def release(self) -> None: ...


async def relay_stream(
    ctx: RequestContext,
    request: web.Request,
    upstream: UpstreamStream,
    headers: CIMultiDict[str],
    idle_timeout: float,
) -> web.StreamResponse:
    """Relay an SSE stream chunk by chunk, feeding the parser; on failure append an error event and close.

    Whatever breaks, the agent gets either the complete stream or a well-formed error event followed by the end
    of the response, and `ctx.result.usage` holds the usage seen so far (what the request is charged)."""
    # The server's drain cuts streams still running at its end by cancelling the tasks registered here.
    streams: set[asyncio.Task[object]] | None = request.app.get(STATE_KEY, {}).get("streams")
    task = asyncio.current_task()
    if streams is not None and task is not None:
        streams.add(task)
    try:
        return await _relay(ctx, request, upstream, headers, idle_timeout)
    finally:
        if streams is not None and task is not None:
            streams.discard(task)


async def _relay(
    ctx: RequestContext,
    request: web.Request,
    upstream: UpstreamStream,
    headers: CIMultiDict[str],
    idle_timeout: float,
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await response.prepare(request)
    parser = ctx.provider.stream_parser(ctx.route, ctx.result)
    try:
        decoder = Decoder(upstream.headers.get("content-encoding"))
    except ValueError:
        decoder = None  # compressed in a way we cannot read: relay blind, usage stays unknown
    loop = asyncio.get_running_loop()
    content = upstream.content
    broken: StreamBroken | None = None
    # Plain-text streams go to the agent one whole event at a time (the rest waits for the next chunk), so when
    # the upstream breaks mid-event the agent holds no half event that our error event would be glued onto.
    whole_events = decoder is not None and decoder.identity
    pending = b""
    agent_at_boundary = True
    guard = ctx.stream_guard
    strip_usage = ctx.asked_stream_usage is not None
    calls = ctx.result.tool_calls
    judged = 0  # tool calls the guard has seen
    unnamed = False  # a call seen before its name: asked again until every call has one
    refused: GatewayError | None = None
    try:
        async with asyncio.timeout(None) as timer:
            while True:
                # The timer covers waiting for the upstream only: a slow agent is not an upstream stall.
                timer.reschedule(loop.time() + min(idle_timeout, _remaining(ctx)))
                chunk = await content.readany()
                timer.reschedule(None)
                if not chunk:
                    break
                if decoder is not None:
                    parser.feed(decoder.decode(chunk))
                    if guard is not None and (len(calls) > judged or unnamed):
                        judged = len(calls)
                        unnamed = any(not call.name for call in calls)
                        refused = guard(ctx)
                        if refused is not None:
                            # Nothing of this chunk reaches the agent: it holds the refused tool call.
                            pending = b""
                            break
                if whole_events:
                    data = pending + chunk if pending else chunk
                    end = _events_end(data)
                    pending = data[end:]
                    if end:
                        events = data[:end] if pending else data
                        if strip_usage:
                            events = ctx.provider.strip_added_usage(events)
                        if events:
                            await response.write(events)
                    continue
                await response.write(chunk)
                agent_at_boundary = decoder is not None and parser.at_boundary
    except TimeoutError:
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline - 0.001:
            broken = StreamBroken("timeout", "the request's total deadline passed mid-stream", "deadline")
        else:
            broken = StreamBroken(
                "overloaded", f"upstream stream stalled: no data for {idle_timeout:g}s (idle timeout)", "idle_timeout"
            )
    except SSEError as exc:
        broken = StreamBroken("api_error", f"upstream sent a malformed event stream ({exc})", "malformed_sse")
    except zlib.error:
        broken = StreamBroken("api_error", "upstream sent a corrupt compressed stream", "malformed_stream")
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
        if isinstance(exc, ConnectionResetError) and request.transport is None:
            upstream.close()
            raise  # the agent went away; nothing to tell it
        broken = StreamBroken("api_error", "upstream connection broke mid-stream", "stream_reset")
    except asyncio.CancelledError:
        upstream.close()
        # Cancelled with the agent still there: the gateway is shutting down past its drain time. Say so with an
        # error event rather than a bare abort, so the SDK raises a clear error.
        transport = request.transport
        if transport is not None and not transport.is_closing():
            draining = request.app.get(STATE_KEY, {}).get("draining", False)
            message = "otelgate is shutting down: the stream was cut at the end of the drain period" if draining \
                else "otelgate cancelled this stream"
            tail = b"" if agent_at_boundary else b"\n\n"
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.5):
                    await response.write(tail + ctx.provider.stream_error_event("unavailable", message))
                    await response.write_eof()
        raise
    except BaseException:
        upstream.close()
        raise
    if refused is not None:  # a policy ended the stream: a refusal, told the agent like any broken stream
        broken = StreamBroken(refused.kind, refused.message, refused.reason)
        ctx.outcome, ctx.rejected_reason = "rejected", refused.reason
    elif broken is None and decoder is not None and not parser.complete:
        broken = StreamBroken("api_error", "upstream stream ended before the response was complete", "stream_truncated")
    if broken is None and pending:
        await response.write(pending)  # trailing bytes after the last event of a complete stream
    if broken is not None:
        upstream.close()
        if refused is None:
            ctx.outcome = "stream_error"
        ctx.result.error_type = broken.reason
        ctx.result.error_message = broken.message
        # An empty line ends a half-sent event; between complete events it is not needed.
        tail = b"" if agent_at_boundary else b"\n\n"
        await response.write(tail + ctx.provider.stream_error_event(broken.kind, broken.message))
    else:
        upstream.release()
    await response.write_eof()
    return response


def _events_end(data: bytes) -> int:
    """Length of the prefix of `data` made of whole SSE events (each ends with an empty line)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)


def _remaining(ctx: RequestContext) -> float:
    if ctx.deadline is None:
        return 3600.0
    return max(ctx.deadline - time.monotonic(), 0.001)
