"""OpenAI Chat Completions and Responses API adapter."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from otelgate.context import Result, ToolCall, ToolResult
from otelgate.errors import ErrorKind, GatewayError
from otelgate.providers.base import (
    Provider,
    Route,
    StreamParser,
    TextRef,
    json_int,
    json_name_in,
    json_object,
    optional_bool,
    optional_int,
    require,
    seed_text,
)
from otelgate.sse import SSEError

_ERROR_TYPES: dict[str, tuple[str, str]] = {
    "invalid_request": ("invalid_request_error", "invalid_request"),
    "authentication": ("authentication_error", "invalid_api_key"),
    "permission": ("permission_error", "permission_denied"),
    "not_found": ("invalid_request_error", "not_found"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "api_error": ("server_error", "upstream_error"),
    "overloaded": ("server_error", "overloaded"),
    "timeout": ("server_error", "timeout"),
    "unavailable": ("server_error", "unavailable"),
}

_MAX_TOKEN_FIELDS = {"chat_completions": ("max_completion_tokens", "max_tokens"), "responses": ("max_output_tokens",)}


def _apply_usage(result: Result, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    # Chat Completions: prompt/completion_tokens; Responses: input/output_tokens. Both count cached prompt
    # tokens inside the prompt total; split them out so `input_tokens` means uncached input everywhere.
    prompt = json_int(usage.get("prompt_tokens", usage.get("input_tokens")))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = json_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    u = result.usage
    u.input_tokens = max(prompt - cached, 0)
    u.cache_read_tokens = cached
    u.output_tokens = json_int(usage.get("completion_tokens", usage.get("output_tokens")))
    u.known = True


class ChatStreamParser(StreamParser):
    def __init__(self, result: Result) -> None:
        super().__init__(result)
        self._calls: dict[int, ToolCall] = {}
        self._seen_first = False

    def feed(self, chunk: bytes) -> None:
        result = self.result
        for event in self._sse.feed(chunk):
            data = event.data
            if data == "[DONE]":
                self._complete = True
                continue
            if not data:
                continue
            # Most chunks are plain content deltas: parse JSON only for the ones that carry what we record.
            needs_json = (
                not self._seen_first
                or '"tool_calls"' in data
                or '"usage"' in data
                or '"error"' in data
                or result.output_text is not None
                or ("finish_reason" in data and 'finish_reason":null' not in data
                    and 'finish_reason": null' not in data)
            )
            if '"content"' in data or '"tool_calls"' in data:
                result.chunks += 1
                if result.first_chunk_ns is None:
                    result.first_chunk_ns = time.time_ns()
            if not needs_json:
                continue
            try:
                payload = json.loads(data)
            except ValueError:
                raise SSEError("invalid JSON in a chat.completion.chunk") from None
            if not isinstance(payload, dict):
                raise SSEError("a chat.completion.chunk that is not an object")
            self._seen_first = True
            self._chunk(payload)

    def _chunk(self, payload: dict[str, Any]) -> None:
        result = self.result
        if "error" in payload and isinstance(payload["error"], dict):
            result.error_type = str(payload["error"].get("type") or "error")
            result.error_message = payload["error"].get("message")
            return
        result.response_id = result.response_id or payload.get("id")
        result.response_model = result.response_model or payload.get("model")
        if payload.get("usage"):
            _apply_usage(result, payload["usage"])
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = json_object(choice.get("delta"))
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                call = json_object(call)
                function = json_object(call.get("function"))
                existing = self._calls.get(index)
                if existing is None:
                    existing = ToolCall(id=call.get("id") or "", name=function.get("name") or "")
                    self._calls[index] = existing
                    result.tool_calls.append(existing)
                elif function.get("name"):
                    existing.name += function["name"]
                if result.output_text is not None and function.get("arguments"):
                    existing.arguments = (existing.arguments or "") + function["arguments"]
            if result.output_text is not None and isinstance(delta.get("content"), str):
                result.output_text.append(delta["content"])
            reason = choice.get("finish_reason")
            if reason:
                result.finish_reasons.append(reason)


class ResponsesStreamParser(StreamParser):
    def __init__(self, result: Result) -> None:
        super().__init__(result)

    def feed(self, chunk: bytes) -> None:
        result = self.result
        for event in self._sse.feed(chunk):
            name = event.event or ""
            if name.endswith(".delta"):
                result.chunks += 1
                if result.first_chunk_ns is None:
                    result.first_chunk_ns = time.time_ns()
                if result.output_text is None:
                    continue
            if not event.data or event.data == "[DONE]":
                continue
            try:
                data = json.loads(event.data)
            except ValueError:
                raise SSEError(f"invalid JSON in {name or 'an'} event") from None
            if not isinstance(data, dict):
                raise SSEError(f"{name or 'an'} event data is not a JSON object")
            kind = data.get("type", name)
            if kind in ("response.created", "response.in_progress"):
                response = json_object(data.get("response"))
                result.response_id = response.get("id")
                result.response_model = response.get("model")
            elif kind == "response.output_item.added":
                item = json_object(data.get("item"))
                if item.get("type") == "function_call":
                    result.tool_calls.append(ToolCall(id=item.get("call_id", ""), name=item.get("name", "")))
            elif kind == "response.output_text.delta" and result.output_text is not None:
                result.output_text.append(str(data.get("delta", "")))
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                self._complete = True
                _parse_response_object(json_object(data.get("response")), result)
            elif kind == "error":
                result.error_type = str(data.get("code") or "error")
                result.error_message = data.get("message")


def _parse_response_object(response: dict[str, Any], result: Result) -> None:
    result.response_id = response.get("id") or result.response_id
    result.response_model = response.get("model") or result.response_model
    status = response.get("status")
    if status:
        result.finish_reasons = [status]
    _apply_usage(result, response.get("usage"))
    web_searches = file_searches = 0
    for item in response.get("output") or []:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "function_call":
            if not any(call.id == item.get("call_id") for call in result.tool_calls):
                result.tool_calls.append(ToolCall(id=item.get("call_id", ""), name=item.get("name", "")))
        elif kind == "web_search_call":
            # Billed per search; an action that opens or reads a page it found is not a search.
            action = item.get("action")
            if not isinstance(action, dict) or action.get("type") in (None, "search"):
                web_searches += 1
        elif kind == "file_search_call":
            file_searches += 1
    # The built-in tools' fees, billed per call: the usage block counts tokens only.
    result.usage.web_searches, result.usage.file_searches = web_searches, file_searches


# Where a message's text sits, by its role (screening locations).
_ROLE_LOCATIONS = {"user": "user", "tool": "tool_result", "system": "system", "developer": "system"}


class OpenAIProvider(Provider):
    name = "openai"
    auth_headers = ("authorization",)

    def parse_request(self, body: dict[str, Any], route: Route) -> tuple[str, bool, int | None]:
        model = require(body, "model", str, "a string")
        if not model.strip():
            raise GatewayError("invalid_request", "model: must not be empty")
        if route.kind == "chat_completions":
            messages = require(body, "messages", list, "an array of messages")
            for index, message in enumerate(messages):
                if not isinstance(message, dict):
                    raise GatewayError("invalid_request", f"messages.{index}: must be an object")
        elif route.kind == "responses":
            value = body.get("input")
            if value is None:
                raise GatewayError("invalid_request", "input: field required")
            if not isinstance(value, str | list):
                raise GatewayError("invalid_request", "input: must be a string or an array of items")
        stream = optional_bool(body, "stream")
        max_tokens = None
        for field in _MAX_TOKEN_FIELDS.get(route.kind, ()):
            max_tokens = optional_int(body, field) or max_tokens
        return model, stream, max_tokens

    def set_max_tokens(self, body: dict[str, Any], route: Route, value: int) -> None:
        fields = _MAX_TOKEN_FIELDS.get(route.kind, ())
        present = [field for field in fields if field in body]
        for field in present or fields[:1]:
            body[field] = value

    def session_hint(self, body: dict[str, Any]) -> str | None:
        # Responses: a Conversations API id names the run itself ("conv_…", or {"id": "conv_…"}).
        conversation = body.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        if isinstance(conversation, str) and conversation:
            return conversation
        return None

    def end_user(self, body: dict[str, Any]) -> str | None:
        # prompt_cache_key is a cache bucket the caller chooses (often one per prompt template); the other two are
        # per end user by the API's definition. Codex sends its conversation id there: a run's turns still agree.
        for field in ("user", "safety_identifier", "prompt_cache_key"):
            value = body.get(field)
            if isinstance(value, str) and value:
                return value
        return None

    def ask_stream_usage(self, body: dict[str, Any], route: Route) -> Callable[[dict[str, Any]], None] | None:
        # A Chat Completions stream carries usage only with stream_options.include_usage (the Responses API's
        # response.completed always has it). Most agents and SDK calls do not ask.
        if route.kind != "chat_completions":
            return None
        options = body.get("stream_options", _ABSENT)
        if isinstance(options, dict) and options.get("include_usage") is True:
            return None
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}

        def undo(rewritten: dict[str, Any]) -> None:  # the agent's own stream_options, as it sent them
            if options is _ABSENT:
                rewritten.pop("stream_options", None)
            else:
                rewritten["stream_options"] = options

        return undo

    def refuses_stream_usage(self, answer: bytes) -> bool:
        # "Unrecognized request argument supplied: stream_options" (older Azure API versions), or the like.
        return b"stream_options" in answer

    def strip_added_usage(self, events: bytes) -> bytes:
        if b'"usage"' not in events:
            return events
        kept: list[bytes] = []
        start = 0
        for event in _SSE_EVENT_RE.finditer(events):
            if _usage_only_chunk(event[0]):
                kept.append(events[start:event.start()])
                start = event.end()
        if not kept:
            return events  # nothing taken out: the very same bytes
        kept.append(events[start:])
        return b"".join(kept)

    def continues(self, body: dict[str, Any]) -> str | None:
        previous = body.get("previous_response_id")
        return previous if isinstance(previous, str) and previous else None

    def continuable(self, route: Route, body: dict[str, Any]) -> bool:
        # Responses are stored upstream unless the request says `store: false` (then nothing can continue them).
        return route.kind == "responses" and body.get("store") is not False

    def conversation_seed(self, body: dict[str, Any]) -> str | None:
        items = body.get("messages")
        if items is None:
            items = body.get("input")
            if isinstance(items, str):
                return seed_text([body.get("instructions"), items])
        if not isinstance(items, list):
            return None
        system = [m.get("content") for m in items if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        first = next((m for m in items if isinstance(m, dict) and m.get("role") == "user"), None)
        if first is None:
            return None
        return seed_text([system[:1], body.get("instructions"), first.get("content")])

    def tool_results(self, body: dict[str, Any]) -> list[ToolResult]:
        items = body.get("messages")
        if isinstance(items, list):
            # The trailing run of `tool` messages answers the previous assistant turn's tool_calls.
            results: list[ToolResult] = []
            for message in reversed(items):
                if not isinstance(message, dict) or message.get("role") != "tool":
                    break
                results.append(ToolResult(call_id=str(message.get("tool_call_id", ""))))
            return list(reversed(results))
        items = body.get("input")
        if isinstance(items, list):
            return [
                ToolResult(call_id=str(item.get("call_id", "")))
                for item in items
                if isinstance(item, dict) and item.get("type") == "function_call_output"
            ]
        return []

    def texts(self, body: dict[str, Any], locations: frozenset[str]) -> Iterator[TextRef]:
        items = body.get("messages")
        if items is None:
            items = body.get("input")
            if isinstance(items, str):
                if "user" in locations:
                    yield TextRef("user", body, "input")
                items = None
            if "system" in locations and isinstance(body.get("instructions"), str):
                yield TextRef("system", body, "instructions")
        if not isinstance(items, list):
            return
        for item in items:
            if not isinstance(item, dict):
                continue
            role = item.get("role")
            if item.get("type") == "function_call_output":
                if "tool_result" in locations and isinstance(item.get("output"), str):
                    yield TextRef("tool_result", item, "output", item.get("call_id"))
                continue
            location = _ROLE_LOCATIONS.get(role) if isinstance(role, str) else None
            if location is None or location not in locations:
                continue
            call_id = item.get("tool_call_id")
            content = item.get("content")
            if isinstance(content, str):
                yield TextRef(location, item, "content", call_id)  # type: ignore[arg-type]
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                        if isinstance(part.get("text"), str):
                            yield TextRef(location, part, "text", call_id)  # type: ignore[arg-type]

    def tool_names(self, body: dict[str, Any]) -> list[str]:
        names: list[str] = []
        tools = body.get("tools")
        for tool in tools if isinstance(tools, list) else []:
            if not isinstance(tool, dict):
                continue
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if isinstance(name, str):
                names.append(name)
        return names

    def remove_tools(self, body: dict[str, Any], names: set[str]) -> None:
        tools = body.get("tools")
        if not isinstance(tools, list):
            return
        kept = []
        for tool in tools:
            if not isinstance(tool, dict):
                kept.append(tool)  # not a tool we can name: the upstream will reject it on its own terms
                continue
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if not json_name_in(name, names):
                kept.append(tool)
        body["tools"] = kept
        if not kept:
            del body["tools"]
            body.pop("tool_choice", None)
            body.pop("parallel_tool_calls", None)
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            # Chat {"type": "function", "function": {"name": X}}, Responses {"type": "function", "name": X}:
            # a choice forcing a removed tool goes back to auto.
            function = choice.get("function")
            forced = function.get("name") if isinstance(function, dict) else choice.get("name")
            if json_name_in(forced, names):
                del body["tool_choice"]

    def parse_response(self, body: dict[str, Any], route: Route, result: Result) -> None:
        if route.kind == "responses":
            _parse_response_object(body, result)
            if result.output_text is not None:
                for item in body.get("output") or []:
                    for part in (item.get("content") or []) if isinstance(item, dict) else []:
                        if isinstance(part, dict) and part.get("type") == "output_text":
                            result.output_text.append(str(part.get("text", "")))
            return
        if route.kind != "chat_completions":
            return
        result.response_id = body.get("id")
        result.response_model = body.get("model")
        _apply_usage(result, body.get("usage"))
        for choice in body.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                result.finish_reasons.append(choice["finish_reason"])
            message = choice.get("message") or {}
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                result.tool_calls.append(
                    ToolCall(
                        id=str(call.get("id", "")),
                        name=str(function.get("name", "")),
                        arguments=function.get("arguments") if result.output_text is not None else None,
                    )
                )
            if result.output_text is not None and isinstance(message.get("content"), str):
                result.output_text.append(message["content"])

    def stream_parser(self, route: Route, result: Result) -> StreamParser:
        if route.kind == "responses":
            return ResponsesStreamParser(result)
        return ChatStreamParser(result)

    def error_body(self, error: GatewayError) -> dict[str, Any]:
        kind, code = _ERROR_TYPES[error.kind]
        return {"error": {"message": error.message, "type": kind, "param": None, "code": error.code or code}}

    def stream_error_event(self, kind: ErrorKind, message: str) -> bytes:
        error_type, code = _ERROR_TYPES[kind]
        payload = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})
        return f"data: {payload}\n\n".encode()


_ABSENT = object()
# One whole SSE event with the blank line that ends it (LF or CRLF line ends).
_SSE_EVENT_RE = re.compile(rb".*?\n\r?\n", re.S)


def _usage_only_chunk(event: bytes) -> bool:
    """The chunk include_usage adds before [DONE]: usage, and an empty `choices`."""
    if b'"usage"' not in event:
        return False
    data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    try:
        payload = json.loads(data)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("choices") == [] and bool(payload.get("usage"))
