"""Tool executions, reconstructed from the conversation as the gateway sees it.

The gateway never sees a tool run: it sees a response that asks for tool calls (ids and names) and, later, a
request in the same conversation that brings their results back (`tool_result` blocks, OpenAI `tool` messages,
`function_call_output` items). Matching the two by (conversation, call id) gives each tool's name, outcome and
duration (asked → answered: the agent's execution time plus its own overhead). State is bounded by an LRU over
conversations and by a TTL; calls never answered within the TTL are counted as `unanswered` when evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry.trace import SpanContext

from otelgate.context import ToolCall, ToolResult

# A single response rarely asks for more than a handful of tools; this only stops a pathological conversation.
MAX_CALLS_PER_CONVERSATION = 512


@dataclass(slots=True)
class PendingCall:
    call_id: str
    name: str
    asked_ns: int  # when the response that asked for it ended
    asked_by: SpanContext | None  # that response's chat span, for the span link


@dataclass(slots=True)
class Matched:
    call: PendingCall
    result: ToolResult


class _Conversation:
    __slots__ = ("calls", "last_ns")

    def __init__(self, now_ns: int) -> None:
        self.calls: dict[str, PendingCall] = {}
        self.last_ns = now_ns


class ToolTracker:
    def __init__(self, max_conversations: int, ttl_s: float) -> None:
        self.max_conversations = max_conversations
        self.ttl_ns = int(ttl_s * 1e9)
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()

    def __len__(self) -> int:
        return len(self._conversations)

    def expect(
        self, conversation: str, calls: Iterable[ToolCall], asked_ns: int, asked_by: SpanContext | None
    ) -> list[PendingCall]:
        """Remember the tool calls a response asked for. Returns calls evicted unanswered (for metrics)."""
        entry = self._conversations.get(conversation)
        if entry is None:
            entry = self._conversations[conversation] = _Conversation(asked_ns)
        else:
            self._conversations.move_to_end(conversation)
            entry.last_ns = asked_ns
        for call in calls:
            if len(entry.calls) >= MAX_CALLS_PER_CONVERSATION:
                break
            entry.calls[call.id] = PendingCall(call.id, call.name, asked_ns, asked_by)
        return self._prune(asked_ns)

    def resolve(self, conversation: str, results: Iterable[ToolResult], now_ns: int) -> list[Matched]:
        """Match results to pending calls; each call matches once (an SDK retry of the request finds nothing)."""
        entry = self._conversations.get(conversation)
        if entry is None:
            return []
        matched = []
        for result in results:
            call = entry.calls.pop(result.call_id, None)
            if call is not None and now_ns - call.asked_ns <= self.ttl_ns:
                matched.append(Matched(call, result))
        entry.last_ns = now_ns
        self._conversations.move_to_end(conversation)
        if not entry.calls:
            del self._conversations[conversation]
        return matched

    def _prune(self, now_ns: int) -> list[PendingCall]:
        evicted: list[PendingCall] = []
        conversations = self._conversations
        while conversations:
            key, oldest = next(iter(conversations.items()))
            if len(conversations) > self.max_conversations or now_ns - oldest.last_ns > self.ttl_ns:
                del conversations[key]
                evicted.extend(oldest.calls.values())
            else:
                break
        return evicted


class SessionTracker:
    """Counts calls per session (LRU-bounded like the tool state): new sessions and each call's position."""

    def __init__(self, max_sessions: int, ttl_s: float) -> None:
        self.max_sessions = max_sessions
        self.ttl_ns = int(ttl_s * 1e9)
        self._sessions: OrderedDict[str, list[int]] = OrderedDict()  # id -> [calls, last_ns]

    def call(self, session: str, now_ns: int) -> tuple[bool, int]:
        sessions = self._sessions
        entry = sessions.get(session)
        if entry is None or now_ns - entry[1] > self.ttl_ns:
            sessions[session] = entry = [0, now_ns]
            new = True
        else:
            new = False
        sessions.move_to_end(session)
        entry[0] += 1
        entry[1] = now_ns
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
        return new, entry[0]
