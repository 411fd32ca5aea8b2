"""What the gateway saw, per eval run: a chain filter that records every call into the run it belongs to.

A run (one case, one repetition; or one test in the pytest plugin) owns a `Recording`. The gateway maps each
request to its recording before the chain runs (see `gateway.py`: one listening port per run) and stores it in the
request's state; `Recorder` then copies the interesting parts of the finished RequestContext into plain records.
It is an *observer*, so it also sees calls refused by auth or policy, and its `done` runs exactly once per call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otelgate.context import RequestContext

from aiohttp import web

# Request-state key holding the Recording of the request's run (typed keys exist from aiohttp 3.12 on).
RUN_KEY: Any = web.RequestKey("otelgate.eval.run", object) if hasattr(web, "RequestKey") else "otelgate.eval.run"


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """A tool the model asked for (Anthropic tool_use, OpenAI tool_calls)."""

    name: str
    id: str
    arguments: str | None = None  # JSON text when the gateway kept it (content capture or a policy needing it)


@dataclass(frozen=True, slots=True)
class ToolResultRecord:
    """A tool result the agent sent back in a request."""

    call_id: str
    name: str | None
    is_error: bool


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One request the agent made through the gateway, as the gateway saw it when the request ended."""

    route: str  # e.g. "messages", "chat_completions", "count_tokens"
    generates: bool  # an LLM call (counts as an iteration); count_tokens and models do not
    model: str | None
    status: int | None
    outcome: str  # ok | upstream_error | rejected | client_disconnected | stream_error | gateway_error
    rejected_reason: str | None
    error_type: str | None
    tool_calls: tuple[ToolCallRecord, ...]
    tool_results: tuple[ToolResultRecord, ...]
    input_tokens: int  # including cache reads and writes
    output_tokens: int
    usd: float | None  # None when the gateway did not price the call
    verdicts: tuple[dict[str, Any], ...]
    session_id: str | None
    trace_id: str | None
    attempts: int
    seconds: float
    start_ns: int

    @property
    def refused(self) -> bool:
        return self.outcome == "rejected"


def _trace_id(ctx: RequestContext) -> str | None:
    value = ctx.request.headers.get("traceparent", "")
    parts = value.split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else None


def record_of(ctx: RequestContext) -> CallRecord:
    result = ctx.result
    return CallRecord(
        route=ctx.route.kind,
        generates=ctx.route.generates,
        model=ctx.served_model or ctx.model,
        status=ctx.status,
        outcome=ctx.outcome,
        rejected_reason=ctx.rejected_reason,
        error_type=result.error_type,
        tool_calls=tuple(ToolCallRecord(c.name, c.id, c.arguments) for c in result.tool_calls),
        tool_results=tuple(ToolResultRecord(r.call_id, r.name, r.is_error) for r in ctx.tool_results),
        input_tokens=result.usage.total_input,
        output_tokens=result.usage.output_tokens,
        usd=ctx.cost_usd,
        verdicts=tuple(dict(v) for v in ctx.verdicts),
        session_id=ctx.session_id,
        trace_id=_trace_id(ctx),
        attempts=len(ctx.attempts),
        seconds=ctx.elapsed,
        start_ns=ctx.start_ns,
    )


class Recording:
    """The calls of one run. Written on the gateway's event loop, readable from any thread.

    `inflight` counts calls that entered the chain and have not finished: after the agent exits, a streamed answer's
    bookkeeping may still be running, so readers wait for it to reach zero (`settled` / `settled_async`).
    """

    def __init__(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.name = name
        self.labels = dict(labels or {})  # added to each call's log line (eval.case, ...)
        self._calls: list[CallRecord] = []
        self._inflight = 0
        self._cond = threading.Condition()
        self._idle: asyncio.Event | None = None

    def _enter(self) -> None:
        with self._cond:
            self._inflight += 1

    def _leave(self, record: CallRecord | None) -> None:
        with self._cond:
            if record is not None:
                self._calls.append(record)
            self._inflight -= 1
            idle = self._inflight == 0
            if idle:
                self._cond.notify_all()
        if idle and self._idle is not None:
            self._idle.set()  # same loop as settled_async: done() runs on the gateway's loop

    @property
    def inflight(self) -> int:
        with self._cond:
            return self._inflight

    def settled(self, timeout: float = 10.0) -> list[CallRecord]:
        """The calls, after waiting (from another thread than the gateway's) for in-flight ones to finish."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._inflight} call(s) of {self.name!r} still in the gateway")
                self._cond.wait(left)
            return list(self._calls)

    async def settled_async(self, wait_s: float = 10.0) -> list[CallRecord]:
        """The same, awaited on the gateway's own event loop."""
        if self.inflight:
            self._idle = asyncio.Event()
            async with asyncio.timeout(wait_s):
                await self._idle.wait()
        with self._cond:
            return list(self._calls)

    @property
    def calls(self) -> list[CallRecord]:
        """A snapshot, without waiting."""
        with self._cond:
            return list(self._calls)


class Recorder:
    """The chain filter. `observer = True`: it runs before ingress, so refusals are recorded too."""

    name = "eval_recorder"
    observer = True

    async def request(self, ctx: RequestContext) -> None:
        recording = ctx.request.get(RUN_KEY)
        if not isinstance(recording, Recording):
            return
        ctx.state[self.name] = recording
        ctx.log_fields.update(recording.labels)
        recording._enter()

    async def done(self, ctx: RequestContext) -> None:
        recording = ctx.state.get(self.name)
        if recording is None:
            return
        record = None
        try:
            record = record_of(ctx)
        finally:
            recording._leave(record)  # whatever happens, the run must not wait for this call forever
