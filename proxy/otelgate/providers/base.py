"""What a provider adapter knows: the protocol (routes, request fields, response usage, error shapes, SSE
events), never the policy. Each adapter is stateless; per-stream state lives in its StreamParser."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from otelgate.context import Result, ToolResult
from otelgate.errors import ErrorKind, GatewayError
from otelgate.sse import SSEParser

TextLocation = Literal["user", "tool_result", "system", "documents"]


@dataclass(frozen=True, slots=True)
class Route:
    provider: str  # "anthropic" | "openai"
    kind: str  # messages | count_tokens | models | chat_completions | responses
    operation: str  # gen_ai.operation.name, or the route kind for non-generating routes
    upstream_path: str  # appended to the upstream base URL
    method: str
    generates: bool  # an LLM call: billed, screened, limited


@dataclass(slots=True)
class TextRef:
    """A piece of text inside a request body and where it sits, so a policy can read or replace it."""

    location: TextLocation
    container: dict[str, Any] | list[Any]
    key: str | int
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        return self.container[self.key]  # type: ignore[index]

    def replace(self, text: str) -> None:
        self.container[self.key] = text  # type: ignore[index]


class StreamParser(ABC):
    """Reads an upstream SSE stream on the side: usage, ids, finish reasons, tool calls, first chunk.

    Subclasses read events from `self._sse` and set `self._complete` at the protocol-level end."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self._sse = SSEParser()
        self._complete = False

    @abstractmethod
    def feed(self, chunk: bytes) -> None:
        """Consume bytes as relayed. Raises SSEError on a malformed stream."""

    @property
    def at_boundary(self) -> bool:
        """No partial event pending."""
        return self._sse.at_boundary

    @property
    def complete(self) -> bool:
        """The stream reached its protocol-level end (message_stop / [DONE] / response.completed)."""
        return self._complete


def json_object(value: Any) -> dict[str, Any]:
    """A nested object from upstream JSON, or {} when the upstream sent something else in its place."""
    return value if isinstance(value, dict) else {}


def json_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def json_name_in(value: Any, names: Collection[str]) -> bool:
    """`value in names` for any JSON value where a body should hold a name (a role, a type, a tool name): a list or
    an object there is unhashable, and is no name."""
    return isinstance(value, str) and value in names


def seed_text(value: Any) -> str:
    """A conversation's opening (system prompt, first user message) as text that stays the same on every turn of
    an agent loop. Prompt-caching markers are left out: SDK helpers move ``cache_control`` to the newest message
    each turn, so the first message carries it on turn one only, and a plain string content becomes a list of one
    text block when it gets the marker. (Depth is bounded by the request's JSON depth limit, checked before this.)"""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\x1e".join(map(seed_text, value))
    if isinstance(value, dict):
        fields = {k: v for k, v in value.items() if k != "cache_control"}
        if fields.keys() == {"type", "text"} and fields["type"] == "text" and isinstance(fields["text"], str):
            return fields["text"]
        return "\x1f".join(f"{k}={seed_text(v)}" for k, v in sorted(fields.items()))
    return repr(value)


class Provider(ABC):
    name: str
    # Header names that carry the agent's credential for this provider.
    auth_headers: tuple[str, ...]

    @abstractmethod
    def parse_request(self, body: dict[str, Any], route: Route) -> tuple[str, bool, int | None]:
        """Validate the fields the gateway relies on; return (model, stream, max_tokens). Unknown fields pass
        through untouched. Raises GatewayError(invalid_request) naming the field."""

    @abstractmethod
    def set_max_tokens(self, body: dict[str, Any], route: Route, value: int) -> None: ...

    @abstractmethod
    def session_hint(self, body: dict[str, Any]) -> str | None:
        """An agent-run id the caller put in the body (Claude Code's session id in Anthropic metadata.user_id,
        an OpenAI Conversations API id)."""

    @abstractmethod
    def end_user(self, body: dict[str, Any]) -> str | None:
        """Who or what the caller serves, by the body's own account (Anthropic metadata.user_id, OpenAI user,
        safety_identifier, prompt_cache_key): not a run, since one end user has many runs, but runs of two end
        users that open alike are not the same run."""

    @abstractmethod
    def conversation_seed(self, body: dict[str, Any]) -> str | None:
        """Stable text identifying a conversation: its system prompt and first user message."""

    def ask_stream_usage(self, body: dict[str, Any], route: Route) -> Callable[[dict[str, Any]], None] | None:
        """For a streamed request whose API reports usage only when asked: ask for it in ``body`` (so budgets charge
        what was used, not the reserved worst case) and return what takes the ask out of a body again; the relay
        takes the extra event out with ``strip_added_usage``. None when the stream reports its usage anyway."""
        return None

    def refuses_stream_usage(self, answer: bytes) -> bool:
        """Whether an error answer says the upstream does not know what ``ask_stream_usage`` added."""
        return False

    def strip_added_usage(self, events: bytes) -> bytes:
        """Whole SSE events, without the usage event that ``ask_stream_usage`` made the upstream add."""
        return events

    def continues(self, body: dict[str, Any]) -> str | None:
        """The id of an earlier response, stored upstream, that this request carries on from (OpenAI Responses
        ``previous_response_id``): the request then holds only the new turn."""
        return None

    def continuable(self, route: Route, body: dict[str, Any]) -> bool:
        """Whether the answer to this request can be carried on from by its id (see ``continues``)."""
        return False

    @abstractmethod
    def tool_results(self, body: dict[str, Any]) -> list[ToolResult]:
        """Tool results the request brings back (the answers to the previous response's tool calls)."""

    @abstractmethod
    def texts(self, body: dict[str, Any], locations: frozenset[str]) -> Iterator[TextRef]:
        """Every text of the requested locations, for screening and redaction."""

    @abstractmethod
    def tool_names(self, body: dict[str, Any]) -> list[str]: ...

    @abstractmethod
    def remove_tools(self, body: dict[str, Any], names: set[str]) -> None: ...

    @abstractmethod
    def parse_response(self, body: dict[str, Any], route: Route, result: Result) -> None: ...

    @abstractmethod
    def stream_parser(self, route: Route, result: Result) -> StreamParser: ...

    @abstractmethod
    def error_body(self, error: GatewayError) -> dict[str, Any]: ...

    @abstractmethod
    def stream_error_event(self, kind: ErrorKind, message: str) -> bytes:
        """A well-formed error event that ends a broken stream, so the SDK raises instead of returning a
        truncated answer as if it were complete."""

    def upstream_auth(self, api_key: str) -> tuple[str, str]:
        return ("authorization", f"Bearer {api_key}")

    def encode_error(self, error: GatewayError) -> bytes:
        return json.dumps(self.error_body(error)).encode()


def require(body: dict[str, Any], field: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(field)
    if value is None:
        raise GatewayError("invalid_request", f"{field}: field required")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise GatewayError("invalid_request", f"{field}: must be {what}")
    return value


def optional_int(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GatewayError("invalid_request", f"{field}: must be a positive integer")
    return value


def optional_bool(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise GatewayError("invalid_request", f"{field}: must be a boolean")
    return value
