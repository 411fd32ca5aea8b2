"""Relaying upstream answers to the agent: headers as they came, bytes as they arrive.

The bytes go out unchanged; a decoded copy (when the upstream compressed them) feeds the provider's parser on the
side. A stream that breaks ends with a well-formed error event, never with a clean end: both SDKs would take a
clean early end for a complete answer.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from otelgate.context import RequestContext
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

    def decode(self, data: bytes) -> bytes:
        return self._zlib.decompress(data) if self._zlib is not None else data


def decode_json(body: bytes, encoding: str | None) -> dict | None:
    try:
        data = json.loads(Decoder(encoding).decode(body))
    except (ValueError, zlib.error):
        return None
    return data if isinstance(data, dict) else None


class StreamBroken(Exception):
    """The upstream stream failed after bytes reached the agent: end it with an error event."""

    def __init__(self, kind: str, message: str, reason: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.reason = reason


async def relay_stream(
    ctx: RequestContext,
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    idle_timeout: float,
) -> web.StreamResponse:
    """Relay an SSE stream chunk by chunk, feeding the parser; on failure append an error event and close."""
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
    try:
        async with asyncio.timeout(None) as timer:
            while True:
                timer.reschedule(loop.time() + min(idle_timeout, _remaining(ctx)))
                chunk = await content.readany()
                if not chunk:
                    break
                if decoder is not None:
                    parser.feed(decoder.decode(chunk))
                await response.write(chunk)
    except TimeoutError:
        broken = StreamBroken("timeout", "upstream stream stalled: no data within the idle timeout", "idle_timeout")
    except SSEError as exc:
        broken = StreamBroken("api_error", f"upstream sent a malformed event stream ({exc})", "malformed_sse")
    except zlib.error:
        broken = StreamBroken("api_error", "upstream sent a corrupt compressed stream", "malformed_stream")
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
        if isinstance(exc, ConnectionResetError) and request.transport is None:
            raise  # the agent went away; nothing to tell it
        broken = StreamBroken("api_error", "upstream connection broke mid-stream", "stream_reset")
    if broken is None and decoder is not None and not parser.complete:
        broken = StreamBroken("api_error", "upstream stream ended before the response was complete", "stream_truncated")
    if broken is not None:
        ctx.outcome = "stream_error"
        ctx.result.error_type = broken.reason
        ctx.result.error_message = broken.message
        tail = b"" if parser.at_boundary else b"\n\n"
        kind = "timeout" if broken.kind == "timeout" else "api_error"
        await response.write(tail + ctx.provider.stream_error_event(kind, broken.message))  # type: ignore[arg-type]
    upstream.close() if broken is not None else upstream.release()
    await response.write_eof()
    return response


def _remaining(ctx: RequestContext) -> float:
    if ctx.deadline is None:
        return 3600.0
    return max(ctx.deadline - time.monotonic(), 0.001)
