"""Anthropic Messages API wire format: bodies, SSE events, errors, headers, validation."""

from __future__ import annotations

import json
from typing import Any

from .answers import Reply, Usage, b62_id, split

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 408: "timeout_error", 409: "conflict_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
               529: "overloaded_error"}
_DEFAULT_MESSAGES = {"overloaded_error": "Overloaded", "rate_limit_error": "Rate limit exceeded",
                     "api_error": "Internal server error", "authentication_error": "invalid x-api-key",
                     "permission_error": "Your API key does not have permission to use the specified resource.",
                     "not_found_error": "Not found"}

MODELS = [
    ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-01T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
]

# Constant rate-limit headers, built once: realistic enough for a proxy to forward and for tests to look for.
RATELIMIT_HEADERS = {
    "anthropic-ratelimit-requests-limit": "4000",
    "anthropic-ratelimit-requests-remaining": "3999",
    "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:00Z",
    "anthropic-ratelimit-input-tokens-limit": "2000000",
    "anthropic-ratelimit-input-tokens-remaining": "2000000",
    "anthropic-ratelimit-input-tokens-reset": "2030-01-01T00:00:00Z",
    "anthropic-ratelimit-output-tokens-limit": "400000",
    "anthropic-ratelimit-output-tokens-remaining": "400000",
    "anthropic-ratelimit-output-tokens-reset": "2030-01-01T00:00:00Z",
    "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
}
PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def request_id() -> str:
    return b62_id("req_01")


def headers(req_id: str) -> dict[str, str]:
    return {"request-id": req_id, **RATELIMIT_HEADERS}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str | None, etype: str | None, req_id: str) -> bytes:
    etype = etype or error_type(status)
    message = message or _DEFAULT_MESSAGES.get(etype, f"Error {status}")
    return dumps({"type": "error", "error": {"type": etype, "message": message}, "request_id": req_id})


def error_event(message: str | None, etype: str | None) -> bytes:
    etype = etype or "overloaded_error"
    body = {"type": "error", "error": {"type": etype, "message": message or _DEFAULT_MESSAGES.get(etype, "Error")}}
    return b"event: error\ndata: " + dumps(body) + b"\n\n"


def validate(body: Any, *, count_tokens: bool = False) -> str | None:
    """The real API's 400 message for a malformed request, or None."""
    if not isinstance(body, dict):
        return "Input should be a valid dictionary"
    required = ("model", "messages") if count_tokens else ("model", "messages", "max_tokens")
    for key in required:
        if key not in body:
            return f"{key}: Field required"
    if not isinstance(body["model"], str):
        return "model: Input should be a valid string"
    if not isinstance(body["messages"], list):
        return "messages: Input should be a valid list"
    if not count_tokens:
        mt = body["max_tokens"]
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            return "max_tokens: Input should be greater than or equal to 1"
    return None


def _usage(reply: Reply, output_tokens: int) -> dict[str, Any]:
    u = reply.usage
    return {"input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_creation_input_tokens,
            "cache_read_input_tokens": u.cache_read_input_tokens, "cache_creation": _cache_creation(u),
            "output_tokens": output_tokens, "service_tier": "standard", **_server_tool_use(u)}


def _cache_creation(u: Usage) -> dict[str, int]:
    """The split of the cache writes by time to live, as the API reports it beside their total."""
    hour = min(u.cache_creation_1h_input_tokens, u.cache_creation_input_tokens)
    return {"ephemeral_5m_input_tokens": u.cache_creation_input_tokens - hour, "ephemeral_1h_input_tokens": hour}


def _server_tool_use(u: Usage) -> dict[str, Any]:
    """Server-side tool calls the answer made (only when there were any, like the API)."""
    return {"server_tool_use": {"web_search_requests": u.web_search_requests}} if u.web_search_requests else {}


def _content(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input})
    return blocks


def message(reply: Reply, msg_id: str) -> bytes:
    return dumps({"id": msg_id, "type": "message", "role": "assistant", "model": reply.model,
                  "content": _content(reply), "stop_reason": reply.stop_reason, "stop_sequence": None,
                  "usage": _usage(reply, reply.usage.output_tokens)})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def events(reply: Reply, msg_id: str) -> list[bytes]:
    """The exact SSE event sequence of a streamed message, each event pre-encoded."""
    out = [_event("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": reply.model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": _usage(reply, 1)}})]
    index = 0
    if reply.text:
        out.append(_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}}))
        out.append(PING)
        for piece in split(reply.text, reply.chunks):
            out.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "text_delta", "text": piece}}))
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    for call in reply.tool_calls:
        out.append(_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
            "type": "tool_use", "id": call.id, "name": call.name, "input": {}}}))
        if index == 0:
            out.append(PING)
        # The real API opens with an empty partial_json, then sends the input JSON in arbitrary cuts.
        for piece in ["", *split(call.arguments, 3)]:
            out.append(_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                      "delta": {"type": "input_json_delta", "partial_json": piece}}))
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if index == 0:
        out.append(PING)
    u = reply.usage
    out.append(_event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
        "usage": {"input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_creation_input_tokens,
                  "cache_read_input_tokens": u.cache_read_input_tokens, "cache_creation": _cache_creation(u),
                  "output_tokens": u.output_tokens, **_server_tool_use(u)}}))
    out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return out


def _model(model: tuple[str, str, str]) -> dict[str, str]:
    return {"type": "model", "id": model[0], "display_name": model[1], "created_at": model[2]}


def model_body(model: tuple[str, str, str]) -> bytes:
    return dumps(_model(model))


def models_body(models: list[tuple[str, str, str]]) -> bytes:
    data = [_model(m) for m in models]
    return dumps({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None})


def count_tokens_body(tokens: int) -> bytes:
    return dumps({"input_tokens": tokens})
