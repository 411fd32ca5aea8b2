"""The one request context that flows through the filter chain, and the filter interface.

Like a mitmproxy flow: every filter reads and writes its own part of the context and never another filter's
state. Upstream attempts, timings and events are *recorded* here as plain data; telemetry turns them into spans
after the fact, so the hot path makes no telemetry calls of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp import web

    from otelgate.config import KeyConfig, Limits, TeamConfig
    from otelgate.errors import GatewayError
    from otelgate.providers.base import Provider, Route

Outcome = Literal["ok", "upstream_error", "rejected", "client_disconnected", "stream_error", "gateway_error"]


@dataclass(slots=True)
class Usage:
    """Token usage as the provider reported it. `input_tokens` excludes cache reads and writes (Anthropic's
    meaning); `total_input` adds them, which is what GenAI semconv calls gen_ai.usage.input_tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of cache_write_tokens, those written for one hour (Anthropic; billed higher)
    web_searches: int = 0  # server-side web searches the call made (Anthropic, OpenAI Responses), billed per search
    file_searches: int = 0  # server-side file searches (OpenAI Responses file_search_call), billed per call
    known: bool = False  # False until the provider told us anything

    @property
    def total_input(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total(self) -> int:
        return self.total_input + self.output_tokens


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str | None = None  # JSON text; only kept when content capture is on or a policy needs it


@dataclass(slots=True)
class ToolResult:
    call_id: str
    is_error: bool = False
    name: str | None = None


@dataclass(slots=True)
class Principal:
    """Who is calling: a configured key, or an unlisted pass-through key known only by its hash."""

    key_id: str  # an id, never a secret: configured id, or "sha256:<first 12 hex>" for unlisted keys
    team: str | None
    limits: Limits
    key: KeyConfig | None = None
    team_config: TeamConfig | None = None
    # Header to send upstream: (name, value). In pass-through mode the agent's own; in virtual-keys mode ours.
    upstream_auth: tuple[str, str] | None = None


@dataclass(slots=True)
class Attempt:
    """One HTTP request to an upstream. Times are time.time_ns() for span timestamps."""

    number: int  # 0 for the first: http.request.resend_count
    url: str
    server_address: str
    server_port: int | None
    model: str | None
    start_ns: int
    end_ns: int = 0  # when response headers arrived or the attempt failed
    status: int | None = None
    error_type: str | None = None  # e.g. "429", "timeout", "connect_error", "circuit_open"
    retry_reason: str | None = None  # set when another attempt followed: why
    backoff_s: float = 0.0  # how long we waited before the *next* attempt


@dataclass(slots=True)
class Event:
    """A span event recorded for telemetry: screening verdicts, refusals, fallbacks, circuit changes, alerts."""

    name: str
    attributes: dict[str, Any]
    time_ns: int = field(default_factory=time.time_ns)


@dataclass(slots=True)
class Result:
    """What the upstream answered, filled by the provider's response parser (non-streaming or SSE)."""

    status: int | None = None
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    first_chunk_ns: int | None = None  # first SSE event carrying content reached the agent
    chunks: int = 0  # content chunks (for time per output chunk)
    error_type: str | None = None
    error_message: str | None = None
    output_text: list[str] | None = None  # only when content capture is on


@dataclass(slots=True)
class RequestContext:
    request: web.Request
    provider: Provider
    route: Route
    body: bytes = b""
    json: dict[str, Any] | None = None
    body_modified: bool = False  # a policy rewrote `json`: re-serialise before sending
    body_decoded: bool = False  # the agent compressed the body; `body` is decoded and goes upstream decoded
    # Set when the gateway asked the upstream to report a stream's usage, which the agent did not ask for: the relay
    # takes that extra event out again (Provider.strip_added_usage); calling it takes the ask out of a body
    # (Provider.ask_stream_usage).
    asked_stream_usage: Callable[[dict[str, Any]], None] | None = None
    request_id: str = ""
    start_ns: int = field(default_factory=time.time_ns)
    start_monotonic: float = field(default_factory=time.monotonic)
    principal: Principal | None = None
    session_id: str | None = None
    session_source: str | None = None  # header | metadata | previous_response | hash
    model: str | None = None
    served_model: str | None = None  # differs from `model` when a fallback served
    fallback: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    deadline: float | None = None  # time.monotonic() by which the whole exchange must end
    attempts: list[Attempt] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    result: Result = field(default_factory=Result)
    tool_results: list[ToolResult] = field(default_factory=list)
    cost_usd: float | None = None
    price_known: bool = True
    outcome: Outcome = "ok"
    rejected_reason: str | None = None  # budget, screening, auth, ... for otelgate.requests.rejected
    status: int | None = None  # what the agent got
    response_headers: dict[str, str] = field(default_factory=dict)  # extra headers policies add for the agent
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # screening verdicts, for logs and spans
    # Per-filter scratch space keyed by the filter's name; a filter only touches its own entry.
    state: dict[str, Any] = field(default_factory=dict)
    trace_headers: dict[str, str] = field(default_factory=dict)  # W3C context to send upstream, when enabled
    log_fields: dict[str, Any] = field(default_factory=dict)
    # Set by a policy that must judge a streamed answer while it passes: called by the relay each time the
    # stream's parser has seen a new tool call, before the bytes holding it are sent. A GatewayError ends the
    # stream there with an error event; None lets it go on.
    stream_guard: Callable[[RequestContext], GatewayError | None] | None = None

    def event(self, name: str, **attributes: Any) -> None:
        self.events.append(Event(name, attributes))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start_monotonic


class Filter(Protocol):
    """A stage of the chain. Hooks are optional; `request` may raise GatewayError to refuse.

    Order: `request` runs in chain order before the upstream call; `response` runs on a complete
    (non-streaming) upstream answer before it is sent and may raise GatewayError; `done` runs exactly once, in
    reverse chain order, for every filter whose `request` ran — whatever happened (success, refusal, upstream
    failure, agent disconnect).
    """

    name: str

    async def request(self, ctx: RequestContext) -> None: ...

    def response(self, ctx: RequestContext, body: dict[str, Any]) -> None: ...

    async def done(self, ctx: RequestContext) -> None: ...
