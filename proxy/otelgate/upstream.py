"""The upstream client: one pooled aiohttp session per upstream, attempts with retries and deadlines.

It knows HTTP and time, not money or policy. Every attempt is recorded in ``ctx.attempts`` for telemetry.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from otelgate.context import Attempt, RequestContext
from otelgate.errors import GatewayError

if TYPE_CHECKING:
    from otelgate.config import UpstreamConfig

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(slots=True)
class UpstreamReply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes | None  # read already (non-streaming, or any error status)
    response: aiohttp.ClientResponse | None  # unread streaming body, for the relay; caller must release
    gave_up: bool = False  # a retryable failure after the last attempt


class Upstream:
    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        parts = urlsplit(config.base_url)
        self.base_url = config.base_url
        self.server_address = parts.hostname or ""
        self.server_port = parts.port or (443 if parts.scheme == "https" else 80)
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

    async def send(
        self, ctx: RequestContext, path: str, headers: CIMultiDict[str], body: bytes, *, read_body: bool
    ) -> UpstreamReply:
        """Send the request, retrying retryable failures while attempts and the deadline allow.

        Raises GatewayError(timeout | api_error) when no attempt produced a response at all."""
        retry = self.config.retry
        url = self.base_url + path
        base_retry_count = _int_header(headers.get("x-stainless-retry-count"))
        last_error: GatewayError | None = None
        for number in range(retry.max_attempts):
            if base_retry_count is not None:
                # The upstream sees how many times this logical request was really retried.
                headers["x-stainless-retry-count"] = str(base_retry_count + number)
            attempt = Attempt(
                number=number,
                url=url,
                server_address=self.server_address,
                server_port=self.server_port,
                model=ctx.served_model or ctx.model,
                start_ns=time.time_ns(),
            )
            ctx.attempts.append(attempt)
            last = number == retry.max_attempts - 1
            try:
                reply = await self._attempt(ctx, url, headers, body, read_body)
            except GatewayError as error:
                attempt.end_ns = time.time_ns()
                attempt.error_type = error.reason
                last_error = error
                delay = self._backoff(number, None)
                if last or not self._can_wait(ctx, delay):
                    raise
                attempt.retry_reason = error.reason
                attempt.backoff_s = delay
                await asyncio.sleep(delay)
                continue
            attempt.end_ns = time.time_ns()
            attempt.status = reply.status
            if reply.status < 400:
                return reply
            attempt.error_type = str(reply.status)
            if not _should_retry(reply.status, reply.headers):
                return reply
            delay = self._backoff(number, reply.headers)
            if last or not self._can_wait(ctx, delay):
                # Hand the upstream's own answer to the agent now, headers intact.
                reply.gave_up = True
                return reply
            attempt.retry_reason = f"status_{reply.status}"
            attempt.backoff_s = delay
            await asyncio.sleep(delay)
        assert last_error is not None
        raise last_error

    async def _attempt(
        self, ctx: RequestContext, url: str, headers: CIMultiDict[str], body: bytes, read_body: bool
    ) -> UpstreamReply:
        timeouts = self.config.timeouts
        first_byte = min(timeouts.first_byte, self._remaining(ctx))
        try:
            async with asyncio.timeout(first_byte):
                response = await self.session.request(ctx.route.method, url, headers=headers, data=body or None)
        except TimeoutError:
            raise GatewayError(
                "timeout", f"upstream {self.name} sent no response headers within {first_byte:.1f}s", reason="timeout"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise GatewayError(
                "api_error", f"cannot connect to upstream {self.name} ({self.server_address})", reason="connect_error"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(
                "api_error", f"upstream {self.name} closed the connection before answering", reason="connection_error"
            ) from exc
        if response.status < 400 and not read_body:
            return UpstreamReply(response.status, response.headers, None, response)
        try:
            async with asyncio.timeout(min(timeouts.idle, self._remaining(ctx))):
                data = await response.read()
        except TimeoutError:
            response.close()
            raise GatewayError(
                "timeout", f"upstream {self.name} stalled while sending its response", reason="timeout"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            response.close()
            raise GatewayError(
                "api_error", f"upstream {self.name} broke the connection mid-response", reason="connection_error"
            ) from exc
        finally:
            response.release()
        return UpstreamReply(response.status, response.headers, data, None)

    def _remaining(self, ctx: RequestContext) -> float:
        if ctx.deadline is None:
            return self.config.timeouts.total
        return max(ctx.deadline - time.monotonic(), 0.001)

    def _can_wait(self, ctx: RequestContext, delay: float) -> bool:
        # Waiting is only worth it if a new attempt still has time to get an answer afterwards.
        return ctx.deadline is None or time.monotonic() + delay < ctx.deadline

    def _backoff(self, number: int, headers: Mapping[str, str] | None) -> float:
        retry = self.config.retry
        if headers is not None:
            asked = retry_after_seconds(headers)
            if asked is not None:
                return asked
        # Full jitter (AWS architecture blog): spreads retries of many agents hitting one overload.
        return random.uniform(0, min(retry.max_delay, retry.base_delay * (2**number)))


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
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
