"""Anthropic Messages API adapter."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
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

_ERROR_TYPES: dict[str, str] = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "api_error": "api_error",
    "overloaded": "overloaded_error",
    "timeout": "timeout_error",
    "unavailable": "overloaded_error",
}

# Events whose JSON we need; content deltas are only counted (the hot path of a long stream).
_CONTENT_EVENTS = frozenset({"content_block_delta"})


def _apply_usage(result: Result, usage: dict[str, Any] | None) -> None:
    if not isinstance(usage, dict):
        return
    u = result.usage
    # message_delta usage is cumulative; take the largest value seen for each field.
    u.input_tokens = max(u.input_tokens, json_int(usage.get("input_tokens")))
    u.output_tokens = max(u.output_tokens, json_int(usage.get("output_tokens")))
    u.cache_read_tokens = max(u.cache_read_tokens, json_int(usage.get("cache_read_input_tokens")))
    u.cache_write_tokens = max(u.cache_write_tokens, json_int(usage.get("cache_creation_input_tokens")))
    # The split by time to live: a one-hour write costs 2x input, a five-minute one 1.25x.
    by_ttl = usage.get("cache_creation")
    if isinstance(by_ttl, dict):
        hour = json_int(by_ttl.get("ephemeral_1h_input_tokens"))
        u.cache_write_1h_tokens = min(max(u.cache_write_1h_tokens, hour), u.cache_write_tokens)
    server_tools = usage.get("server_tool_use")
    if isinstance(server_tools, dict):
        u.web_searches = max(u.web_searches, json_int(server_tools.get("web_search_requests")))
    u.known = True


class AnthropicStreamParser(StreamParser):
    def __init__(self, result: Result) -> None:
        super().__init__(result)
        self._blocks: dict[int, ToolCall] = {}

    def feed(self, chunk: bytes) -> None:
        result = self.result
        for event in self._sse.feed(chunk):
            name = event.event
            if name in _CONTENT_EVENTS:
                result.chunks += 1
                if result.first_chunk_ns is None:
                    result.first_chunk_ns = time.time_ns()
                if result.output_text is not None or '"input_json_delta"' in event.data:
                    self._delta(event.data)
                continue
            if name == "ping" or not event.data:
                continue
            try:
                data = json.loads(event.data)
            except ValueError:
                raise SSEError(f"invalid JSON in {name} event") from None
            if not isinstance(data, dict):
                raise SSEError(f"{name} event data is not a JSON object")
            if name == "message_start":
                message = json_object(data.get("message"))
                result.response_id = message.get("id")
                result.response_model = message.get("model")
                _apply_usage(result, message.get("usage"))
            elif name == "content_block_start":
                block = json_object(data.get("content_block"))
                if block.get("type") in ("tool_use", "server_tool_use"):
                    call = ToolCall(id=block.get("id", ""), name=block.get("name", ""))
                    self._blocks[data.get("index", 0)] = call
                    result.tool_calls.append(call)
            elif name == "message_delta":
                reason = json_object(data.get("delta")).get("stop_reason")
                if reason:
                    result.finish_reasons = [reason]
                _apply_usage(result, data.get("usage"))
            elif name == "message_stop":
                self._complete = True
            elif name == "error":
                error = json_object(data.get("error"))
                result.error_type = error.get("type", "error")
                result.error_message = error.get("message")

    def _delta(self, raw: str) -> None:
        try:
            data = json_object(json.loads(raw))
        except ValueError:
            return
        delta = json_object(data.get("delta"))
        if delta.get("type") == "input_json_delta":
            call = self._blocks.get(data.get("index", 0))
            if call is not None:
                call.arguments = (call.arguments or "") + delta.get("partial_json", "")
        elif delta.get("type") == "text_delta" and self.result.output_text is not None:
            self.result.output_text.append(delta.get("text", ""))


class AnthropicProvider(Provider):
    name = "anthropic"
    auth_headers = ("x-api-key", "authorization")

    def parse_request(self, body: dict[str, Any], route: Route) -> tuple[str, bool, int | None]:
        model = require(body, "model", str, "a string")
        if not model.strip():
            raise GatewayError("invalid_request", "model: must not be empty")
        messages = require(body, "messages", list, "an array of messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise GatewayError("invalid_request", f"messages.{index}: must be an object")
        stream = optional_bool(body, "stream")
        max_tokens = optional_int(body, "max_tokens")
        return model, stream, max_tokens

    def set_max_tokens(self, body: dict[str, Any], route: Route, value: int) -> None:
        body["max_tokens"] = value

    def session_hint(self, body: dict[str, Any]) -> str | None:
        user = self.end_user(body)
        return _claude_code_session(user) if user else None

    def end_user(self, body: dict[str, Any]) -> str | None:
        metadata = body.get("metadata")
        if isinstance(metadata, dict):
            user = metadata.get("user_id")
            if isinstance(user, str) and user:
                return user
        return None

    def conversation_seed(self, body: dict[str, Any]) -> str | None:
        messages = body.get("messages") or []
        first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        if first is None:
            return None
        return seed_text([body.get("system"), first.get("content")])

    def tool_results(self, body: dict[str, Any]) -> list[ToolResult]:
        messages = body.get("messages") or []
        # Only the last user turn brings results for the previous response; earlier ones were seen before.
        last = messages[-1] if messages and isinstance(messages[-1], dict) else None
        if last is None or last.get("role") != "user" or not isinstance(last.get("content"), list):
            return []
        return [
            ToolResult(call_id=str(block.get("tool_use_id", "")), is_error=bool(block.get("is_error")))
            for block in last["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]

    def texts(self, body: dict[str, Any], locations: frozenset[str]) -> Iterator[TextRef]:
        if "system" in locations:
            system = body.get("system")
            if isinstance(system, str):
                yield TextRef("system", body, "system")
            elif isinstance(system, list):
                for block in system:
                    if isinstance(block, dict) and isinstance(block.get("text"), str):
                        yield TextRef("system", block, "text")
        for message in body.get("messages") or []:
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                if "user" in locations:
                    yield TextRef("user", message, "content")
                continue
            if not isinstance(content, list):
                continue
            for block in content:
                if not isinstance(block, dict):
                    continue
                kind = block.get("type")
                if kind == "text" and "user" in locations and isinstance(block.get("text"), str):
                    yield TextRef("user", block, "text")
                elif kind == "tool_result" and "tool_result" in locations:
                    yield from _tool_result_texts(block)
                elif kind == "document" and "documents" in locations:
                    source = block.get("source")
                    if isinstance(source, dict) and source.get("type") == "text":
                        if isinstance(source.get("data"), str):
                            yield TextRef("documents", source, "data")

    def tool_names(self, body: dict[str, Any]) -> list[str]:
        tools = body.get("tools")
        if not isinstance(tools, list):
            return []
        return [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]

    def remove_tools(self, body: dict[str, Any], names: set[str]) -> None:
        tools = body.get("tools")
        if isinstance(tools, list):
            body["tools"] = [t for t in tools if not (isinstance(t, dict) and json_name_in(t.get("name"), names))]
            if not body["tools"]:
                del body["tools"]
                body.pop("tool_choice", None)
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and json_name_in(choice.get("name"), names):
            del body["tool_choice"]  # {"type": "tool", "name": X} forcing a removed tool: back to auto

    def parse_response(self, body: dict[str, Any], route: Route, result: Result) -> None:
        if route.kind != "messages":
            return
        result.response_id = body.get("id")
        result.response_model = body.get("model")
        reason = body.get("stop_reason")
        if reason:
            result.finish_reasons = [reason]
        _apply_usage(result, body.get("usage"))
        for block in body.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") in ("tool_use", "server_tool_use"):
                result.tool_calls.append(
                    ToolCall(
                        id=str(block.get("id", "")),
                        name=str(block.get("name", "")),
                        arguments=json.dumps(block.get("input")) if result.output_text is not None else None,
                    )
                )
            elif block.get("type") == "text" and result.output_text is not None:
                result.output_text.append(str(block.get("text", "")))

    def stream_parser(self, route: Route, result: Result) -> StreamParser:
        return AnthropicStreamParser(result)

    def error_body(self, error: GatewayError) -> dict[str, Any]:
        return {"type": "error", "error": {"type": _ERROR_TYPES[error.kind], "message": error.message}}

    def stream_error_event(self, kind: ErrorKind, message: str) -> bytes:
        payload = json.dumps({"type": "error", "error": {"type": _ERROR_TYPES[kind], "message": message}})
        return f"event: error\ndata: {payload}\n\n".encode()

    def upstream_auth(self, api_key: str) -> tuple[str, str]:
        return ("x-api-key", api_key)


def _tool_result_texts(block: dict[str, Any]) -> Iterator[TextRef]:
    call_id = block.get("tool_use_id")
    content = block.get("content")
    if isinstance(content, str):
        yield TextRef("tool_result", block, "content", call_id)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                yield TextRef("tool_result", part, "text", call_id)


# Claude Code puts its session into metadata.user_id, with a device id that is the same for every run on a machine:
# as JSON ({"device_id": ..., "account_uuid": ..., "session_id": "<uuid>"}) in current versions, as
# "user_<hash>_account_<uuid>_session_<uuid>" in older ones. The session alone is the agent run.
_LEGACY_SESSION = re.compile(r"_session_([0-9a-fA-F-]{36})$")


def _claude_code_session(user_id: str) -> str | None:
    if user_id.startswith("{") and '"session_id"' in user_id:
        try:
            data = json.loads(user_id)
        except ValueError:
            return None
        session = data.get("session_id") if isinstance(data, dict) else None
        return session if isinstance(session, str) and session else None
    match = _LEGACY_SESSION.search(user_id)
    return match.group(1) if match else None
