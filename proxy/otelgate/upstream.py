"""The upstream client: pooled connections, admission control, retries, deadlines, circuit breakers, fallbacks.

It knows HTTP and time, not money or policy. Every attempt is recorded in ``ctx.attempts`` for telemetry.

Everything here happens *before the first byte reaches the agent*: a streaming answer is only handed on once its
first chunk arrived, so a connection that breaks right after the headers is still retried. After that the relay
owns the stream and a failure can only end it with an error event (see relay.py).

The order, per request: take an in-flight slot (or a fast overload refusal) → for the model asked for, then each
configured fallback: ask its circuit breaker, attempt, retry retryable failures with backoff while attempts and the
deadline allow → the first good answer wins; otherwise the last real upstream answer (its status and headers
intact), or a 502/504 when no attempt produced one.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from otelgate.breaker import BreakerKey, BreakerRegistry, State, Transition
from otelgate.context import Attempt, RequestContext
from otelgate.errors import GatewayError
from otelgate.overload import InflightLimiter
from otelgate.relay import decode_json, encode_json

if TYPE_CHECKING:
    from otelgate.config import UpstreamConfig

log = logging.getLogger("otelgate.upstream")

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# What counts against a circuit breaker: the upstream is failing, not the caller being throttled (429, 408 and
# 409 say the upstream is alive and answering about this caller).
BREAKER_FAILURE_STATUS = frozenset({500, 502, 503, 504, 529})
URL_PREFIX = "url:"


@dataclass(frozen=True, slots=True)
class Target:
    """Where one leg of a request goes: the model asked for, or a fallback."""

    label: str | None  # None for the primary; the fallback entry as configured otherwise
    base_url: str
    server_address: str
    server_port: int
    model: str | None


class StreamingBody:
    """An upstream streaming body whose first chunk was already read (to know the stream really started).

    Offers what the relay and the pipeline use of an aiohttp response: status, headers, content.readany(),
    read(), release(), close(); closing also gives the in-flight slot back, exactly once."""

    def __init__(self, response: aiohttp.ClientResponse, first: bytes, deadline: float | None = None) -> None:
        self._response = response
        self._first = first
        self._deadline = deadline  # time.monotonic() by which read() must be done
        self.on_done: Callable[[], None] | None = None
        self.status = response.status
        self.headers = response.headers
        self.content = self  # the relay reads `response.content.readany()`

    async def readany(self) -> bytes:
        if self._first:
            chunk, self._first = self._first, b""
            return chunk
        return await self._response.content.readany()

    async def read(self) -> bytes:
        """The rest of the body at once (an upstream that answered a stream request with a plain body). On any
        failure the connection is closed and the in-flight slot given back before the error propagates."""
        first, self._first = self._first, b""
        budget = None if self._deadline is None else max(self._deadline - time.monotonic(), 0.001)
        try:
            async with asyncio.timeout(budget):
                return first + await self._response.read()
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        self._response.release()
        self._done()

    def close(self) -> None:
        self._response.close()
        self._done()

    def _done(self) -> None:
        if self.on_done is not None:
            on_done, self.on_done = self.on_done, None
            on_done()


@dataclass(slots=True)
class UpstreamReply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes | None  # read already (non-streaming, or any error status)
    response: StreamingBody | None  # unread streaming body, for the relay; caller must close or release it
    gave_up: bool = False  # a retryable failure, handed on after otelgate spent every attempt it may make
    data: dict[str, Any] | None = None  # the body as JSON, when it was decoded here already (a 2xx JSON answer)


class _Failed(Exception):
    """A target produced no usable answer; carries the last real reply or error, for the next target or the
    agent."""

    def __init__(self, reason: str, reply: UpstreamReply | None, error: GatewayError | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.error = error


class Upstream:
    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.base_url = config.base_url
        self.primary = _target(None, config.base_url, None)
        self.server_address = self.primary.server_address
        self.server_port = self.primary.server_port
        for model, entries in config.fallbacks.items():
            for entry in entries:
                if entry.startswith(URL_PREFIX):
                    _target(entry, entry[len(URL_PREFIX) :].rstrip("/"), model)  # fails early on a bad URL
        self.breakers = BreakerRegistry(config.circuit)
        self.limiter = InflightLimiter(config.max_inflight, config.max_queue_wait, config.max_queue)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.pool_size, ttl_dns_cache=300, enable_cleanup_closed=True, force_close=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Bodies are relayed as they are; we decode gzip/deflate ourselves only to read usage (see relay).
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeouts.connect),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() was not awaited"
        return self._session

    # --- for telemetry ---

    @property
    def inflight(self) -> int:
        """Requests holding an in-flight slot now (waiting ones not included)."""
        return self.limiter.inflight

    def inflight_by_address(self) -> Iterable[tuple[str, int]]:
        """(server_address, in-flight count): the shape Telemetry.register_inflight_source accepts."""
        return [(self.server_address, self.limiter.inflight)]

    def circuit_states(self) -> Iterable[tuple[str, str, int]]:
        """(server_address, model, state) per breaker: 0 closed, 1 half-open, 2 open."""
        return list(self.breakers.states())

    # --- the request ---

    async def send(
        self, ctx: RequestContext, path: str, headers: CIMultiDict[str], body: bytes, *, read_body: bool
    ) -> UpstreamReply:
        """Send the request, retrying and falling back while attempts and the deadline allow.

        Raises GatewayError: overload (no in-flight slot), circuit_open (no target would take the call),
        timeout (504) or api_error (502) when no attempt produced an upstream answer at all."""
        if not await self.limiter.acquire(self._remaining(ctx)):
            raise self._overload_error(ctx)
        try:
            reply = await self._send_targets(ctx, path, headers, body, read_body)
        except BaseException:
            self.limiter.release()
            raise
        if reply.response is None:
            self.limiter.release()
        else:
            reply.response.on_done = self.limiter.release  # the slot is held until the relay ends the stream
        return reply

    async def _send_targets(
        self, ctx: RequestContext, path: str, headers: CIMultiDict[str], body: bytes, read_body: bool
    ) -> UpstreamReply:
        targets = self._targets(ctx.model)
        base_retry_count = _int_header(headers.get("x-stainless-retry-count"))
        last: _Failed | None = None
        for index, target in enumerate(targets):
            if index > 0:
                if self._remaining(ctx) <= 0.001:
                    break
                assert last is not None
                ctx.event("fallback", **{"from": ctx.model, "to": target.label, "model": target.model,
                                         "reason": last.reason})
            try:
                reply = await self._send_target(
                    ctx, target, path, headers, self._body_for(ctx, target, body), read_body, base_retry_count
                )
            except _Failed as failed:
                # Keep the last real upstream answer: it says more to the agent than a later circuit refusal.
                if last is not None and last.reply is not None and failed.reply is None:
                    failed.reply = last.reply
                last = failed
                continue
            ctx.served_model = target.model
            ctx.fallback = target.label
            return reply
        assert last is not None
        if last.reply is not None:
            return last.reply
        assert last.error is not None
        if last.error.reason != "circuit_open":
            ctx.outcome = "upstream_error"
        raise last.error

    async def _send_target(
        self,
        ctx: RequestContext,
        target: Target,
        path: str,
        headers: CIMultiDict[str],
        body: bytes,
        read_body: bool,
        base_retry_count: int | None,
    ) -> UpstreamReply:
        """Attempts against one target. Returns a final answer (success or not worth retrying anywhere);
        raises _Failed when a retryable failure remains, so the next fallback may try."""
        retry = self.config.retry
        url = target.base_url + path
        breaker = self.breakers.get(BreakerKey(target.base_url, target.server_address, target.model or ""))
        last_reply: UpstreamReply | None = None
        for number in range(retry.max_attempts):
            allowed, change = breaker.allow()
            self._note(ctx, target, change)
            if not allowed:
                raise _Failed("circuit_open", last_reply, self._circuit_error(ctx, target, breaker.retry_at))
            resend = len(ctx.attempts)
            if base_retry_count is not None:
                # The upstream sees how many times this logical request was really sent before.
                headers["x-stainless-retry-count"] = str(base_retry_count + resend)
            attempt = Attempt(
                number=resend,
                url=url,
                server_address=target.server_address,
                server_port=target.server_port,
                model=target.model,
                start_ns=time.time_ns(),
            )
            ctx.attempts.append(attempt)
            final = number == retry.max_attempts - 1
            try:
                reply = await self._attempt(ctx, target, url, headers, body, read_body)
            except GatewayError as error:
                attempt.end_ns = time.time_ns()
                attempt.error_type = error.reason
                self._note(ctx, target, breaker.record(False))
                delay = self._backoff(number)
                if final or not self._can_wait(ctx, delay):
                    error.message += f" ({len(ctx.attempts)} attempt{'s' if len(ctx.attempts) > 1 else ''})"
                    if self.config.retry.disable_client_retries:
                        error.headers.setdefault("x-should-retry", "false")
                    raise _Failed(error.reason, None, error) from None
                attempt.retry_reason = error.reason
                attempt.backoff_s = delay
                await asyncio.sleep(delay)
                continue
            except BaseException:
                breaker.abandon()
                raise
            attempt.end_ns = time.time_ns()
            attempt.status = reply.status
            self._note(ctx, target, breaker.record(reply.status not in BREAKER_FAILURE_STATUS))
            if reply.status < 400:
                return reply
            attempt.error_type = str(reply.status)
            if not _should_retry(reply.status, reply.headers):
                return reply
            last_reply = reply
            asked = retry_after_seconds(reply.headers)
            if asked is not None and (asked > retry.max_delay or not self._can_wait(ctx, asked)):
                # The upstream wants a longer pause than we may hold this request: hand its answer (and its
                # retry-after) on now, or let a fallback try. The client may come back when it was told to.
                raise _Failed(f"status_{reply.status}", reply, None)
            delay = asked if asked is not None else self._backoff(number)
            if final or not self._can_wait(ctx, delay):
                reply.gave_up = True
                raise _Failed(f"status_{reply.status}", reply, None)
            attempt.retry_reason = f"status_{reply.status}"
            attempt.backoff_s = delay
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    async def _attempt(
        self, ctx: RequestContext, target: Target, url: str, headers: CIMultiDict[str], body: bytes, read_body: bool
    ) -> UpstreamReply:
        timeouts = self.config.timeouts
        first_byte = min(timeouts.first_byte, self._remaining(ctx))
        try:
            async with asyncio.timeout(first_byte):
                response = await self.session.request(ctx.route.method, url, headers=headers, data=body or None)
        except TimeoutError as exc:
            # The reason names which timeout fired: it labels retries and otelgate.upstream.timeouts{kind}.
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise GatewayError(
                    "timeout", f"cannot connect to upstream {self.name} ({target.server_address}) within "
                    f"{timeouts.connect:.1f}s", reason="connect_timeout"
                ) from None
            reason = "first_byte_timeout" if first_byte >= timeouts.first_byte else "timeout"
            raise GatewayError(
                "timeout", f"upstream {self.name} ({target.server_address}) sent no response headers within "
                f"{first_byte:.1f}s", reason=reason
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise GatewayError(
                "api_error", f"cannot connect to upstream {self.name} ({target.server_address})",
                reason="connect_error",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(
                "api_error", f"upstream {self.name} ({target.server_address}) closed the connection before "
                "answering", reason="connection_error",
            ) from exc
        try:
            if response.status < 400 and not read_body:
                first = await self._read_chunks(ctx, target, response, first_only=True)
                stream = StreamingBody(response, first, ctx.deadline)
                return UpstreamReply(response.status, response.headers, None, stream)
            data = await self._read_chunks(ctx, target, response, first_only=False)
        except BaseException:
            response.close()
            raise
        response.release()
        decoded = None
        if response.status < 400 and ctx.route.generates and _is_json(response.headers):
            decoded = decode_json(data, response.headers.get("content-encoding"))
            if decoded is None:
                raise GatewayError(
                    "api_error", f"upstream {self.name} ({target.server_address}) sent a response that is not "
                    "valid JSON", reason="invalid_json",
                )
        return UpstreamReply(response.status, response.headers, data, None, data=decoded)

    async def _read_chunks(
        self, ctx: RequestContext, target: Target, response: aiohttp.ClientResponse, *, first_only: bool
    ) -> bytes:
        """Read the body (or only its first chunk) with the idle timeout between chunks and the deadline."""
        idle = self.config.timeouts.idle
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(None) as timer:
                while True:
                    timer.reschedule(loop.time() + min(idle, self._remaining(ctx)))
                    chunk = await response.content.readany()
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if first_only:
                        return chunk
        except TimeoutError:
            raise GatewayError(
                "timeout", f"upstream {self.name} ({target.server_address}) stalled while sending its response",
                reason="idle_timeout",
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(
                "api_error", f"upstream {self.name} ({target.server_address}) broke the connection mid-response",
                reason="connection_error",
            ) from exc
        if first_only:
            raise GatewayError(
                "api_error", f"upstream {self.name} ({target.server_address}) ended the stream before its first "
                "event", reason="connection_error",
            )
        return b"".join(chunks)

    # --- targets and fallbacks ---

    def _targets(self, model: str | None) -> list[Target]:
        primary = Target(None, self.primary.base_url, self.primary.server_address, self.primary.server_port, model)
        targets = [primary]
        for entry in self.config.fallbacks.get(model or "", ()) if model else ():
            if entry.startswith(URL_PREFIX):
                targets.append(_target(entry[len(URL_PREFIX) :], entry[len(URL_PREFIX) :].rstrip("/"), model))
            else:
                targets.append(Target(entry, primary.base_url, primary.server_address, primary.server_port, entry))
        return targets

    def _body_for(self, ctx: RequestContext, target: Target, body: bytes) -> bytes:
        if ctx.json is None or target.model is None or ctx.json.get("model") == target.model:
            return body
        # A policy-style rewrite of the body's model, only when the model really changes (a fallback model, or
        # back to the original one for a url: fallback after a model fallback).
        ctx.json["model"] = target.model
        ctx.body_modified = True
        return encode_json(ctx.json)

    # --- breakers ---

    def _note(self, ctx: RequestContext, target: Target, change: Transition | None) -> None:
        if change is None:
            return
        attributes = {
            "server.address": target.server_address,
            "model": target.model or "",
            "from": change.old.name.lower(),
            "to": change.new.name.lower(),
            "state": int(change.new),
        }
        if change.new is State.OPEN and change.calls:
            attributes["failures"] = change.failures
            attributes["calls"] = change.calls
        ctx.event("circuit.state_change", **attributes)
        log.warning(
            "circuit for %s model %s: %s -> %s", target.server_address, target.model, change.old.name, change.new.name
        )

    def _circuit_error(self, ctx: RequestContext, target: Target, retry_at: float) -> GatewayError:
        wait = max(math.ceil(retry_at - time.monotonic()), 1)
        when = email.utils.formatdate(time.time() + wait, usegmt=True)
        return GatewayError(
            "unavailable",
            f"otelgate: circuit open for upstream {self.name} ({target.server_address}) model {target.model}: too "
            f"many recent failures; it will be retried in {wait}s ({when})",
            status=503,
            reason="circuit_open",
            headers={"retry-after": str(wait)},
        )

    def _overload_error(self, ctx: RequestContext) -> GatewayError:
        wait = max(math.ceil(self.config.max_queue_wait), 1)
        limiter = self.limiter
        return GatewayError(
            "overloaded",
            f"otelgate: upstream {self.name} is at its limit of {limiter.limit} in-flight requests "
            f"({limiter.waiting} waiting); retry after {wait}s",
            status=529 if ctx.provider.name == "anthropic" else 503,
            reason="overload",
            headers={"retry-after": str(wait)},
        )

    # --- time ---

    def _remaining(self, ctx: RequestContext) -> float:
        if ctx.deadline is None:
            return self.config.timeouts.total
        return max(ctx.deadline - time.monotonic(), 0.001)

    def _can_wait(self, ctx: RequestContext, delay: float) -> bool:
        # Waiting is only worth it if a new attempt still has time to get an answer afterwards.
        return ctx.deadline is None or time.monotonic() + delay < ctx.deadline

    def _backoff(self, number: int) -> float:
        retry = self.config.retry
        # Full jitter (AWS architecture blog): spreads the retries of many agents hitting one overload.
        return random.uniform(0, min(retry.max_delay, retry.base_delay * (2**number)))


def _target(label: str | None, base_url: str, model: str | None) -> Target:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"fallback {label!r}: not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(label, base_url.rstrip("/"), parts.hostname, port, model)


def _is_json(headers: Mapping[str, str]) -> bool:
    return "json" in headers.get("content-type", "")


def _should_retry(status: int, headers: Mapping[str, str]) -> bool:
    explicit = headers.get("x-should-retry")
    if explicit == "true":
        return True
    if explicit == "false":
        return False
    return status in RETRYABLE_STATUS


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait an upstream asked for: retry-after-ms, else retry-after in seconds or as an HTTP date."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            asked = float(value) / 1000.0
            if math.isfinite(asked):
                return max(asked, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        asked = float(value)
        return max(asked, 0.0) if math.isfinite(asked) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
