"""OpenAI wire format: Chat Completions and Responses bodies, SSE chunks/events, errors, headers, validation."""

from __future__ import annotations

import time
from typing import Any

from .answers import Reply, b62_id, hex_id, split
from .anthropic import dumps

ERRORS = {  # status -> (type, code), as the real API labels them
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "not_found"), 409: ("invalid_request_error", None),
    413: ("invalid_request_error", "request_too_large"), 422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length",
          "refusal": "content_filter"}

MODELS = [("gpt-4o", 1715367049, "system"), ("gpt-4o-mini", 1721172741, "system"),
          ("gpt-4.1", 1744316542, "system"), ("gpt-5", 1754425777, "system"),
          ("o3-mini", 1737146383, "system"), ("text-embedding-3-small", 1705948997, "system")]

RATELIMIT_HEADERS = {
    "openai-version": "2020-10-01",
    "openai-organization": "sim-org",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-tokens": "29999000",
    "x-ratelimit-reset-tokens": "2ms",
}
DONE = b"data: [DONE]\n\n"


def request_id() -> str:
    return hex_id("req_", 16)


def headers(req_id: str, started: float) -> dict[str, str]:
    return {"x-request-id": req_id, "openai-processing-ms": str(int((time.monotonic() - started) * 1000)),
            **RATELIMIT_HEADERS}


def error_body(status: int, message: str | None, etype: str | None, code: str | None,
               param: str | None = None) -> bytes:
    default_type, default_code = ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error",
                                                     None))
    if message is None:
        message = {429: "Rate limit reached for requests", 401: "Incorrect API key provided."}.get(
            status, "The server had an error while processing your request. Sorry about that!"
            if status >= 500 else f"Error {status}")
    return dumps({"error": {"message": message, "type": etype or default_type, "param": param,
                            "code": code if code is not None else default_code}})


def validate(body: Any, api: str) -> tuple[str, str | None, str | None] | None:
    """(message, param, code) of the real API's 400 for a malformed request, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None, None
    if not isinstance(body.get("model"), str):
        return "you must provide a model parameter", None, None
    if api == "chat":
        if "messages" not in body:
            return "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        if not isinstance(body["messages"], list):
            return "Invalid type for 'messages': expected an array.", "messages", "invalid_type"
    return None


def _chat_usage(reply: Reply) -> dict[str, Any]:
    u = reply.usage
    prompt = u.openai_prompt_tokens
    return {"prompt_tokens": prompt, "completion_tokens": u.output_tokens,
            "total_tokens": prompt + u.output_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cache_read_input_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def chat_id() -> str:
    return b62_id("chatcmpl-", 29)


def chat_completion(reply: Reply, cid: str, created: int) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text if reply.text else None,
                               "refusal": None, "annotations": []}
    if reply.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name,
                                                                              "arguments": c.arguments}}
                                 for c in reply.tool_calls]
    return dumps({"id": cid, "object": "chat.completion", "created": created, "model": reply.model,
                  "choices": [{"index": 0, "message": message, "logprobs": None,
                               "finish_reason": FINISH.get(reply.stop_reason, "stop")}],
                  "usage": _chat_usage(reply), "service_tier": "default", "system_fingerprint": "fp_sim"})


def chat_chunks(reply: Reply, cid: str, created: int, include_usage: bool) -> list[bytes]:
    """The ``data:`` chunk sequence of a streamed chat completion, ending with ``data: [DONE]``."""
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": reply.model,
            "service_tier": "default", "system_fingerprint": "fp_sim"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body: dict[str, Any] = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                     "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return b"data: " + dumps(body) + b"\n\n"

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    for piece in split(reply.text or "", reply.chunks):
        out.append(chunk({"content": piece}))
    for i, call in enumerate(reply.tool_calls):
        out.append(chunk({"tool_calls": [{"index": i, "id": call.id, "type": "function",
                                          "function": {"name": call.name, "arguments": ""}}]}))
        for piece in split(call.arguments, 3):
            out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    out.append(chunk({}, FINISH.get(reply.stop_reason, "stop")))
    if include_usage:
        out.append(b"data: " + dumps({**head, "choices": [], "usage": _chat_usage(reply)}) + b"\n\n")
    out.append(DONE)
    return out


def chat_error_chunk(message: str | None, etype: str | None) -> bytes:
    # What the real API sends when a stream fails after it started: a data line carrying an error object.
    return b"data: " + dumps({"error": {"message": message or "The server had an error while processing your "
                                                              "request.", "type": etype or "server_error",
                                        "param": None, "code": None}}) + b"\n\n"


# --- Responses API ---

def response_id() -> str:
    return hex_id("resp_", 24)


def _responses_usage(reply: Reply) -> dict[str, Any]:
    u = reply.usage
    prompt = u.openai_prompt_tokens
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": u.cache_read_input_tokens,
                                     "cache_write_tokens": u.cache_creation_input_tokens},
            "output_tokens": u.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + u.output_tokens}


class _ResponseItems:
    """The output items of one response, with their ids fixed so the stream and the final object agree."""

    def __init__(self, reply: Reply) -> None:
        self.message_id = hex_id("msg_", 24) if reply.text else None
        self.call_ids = [hex_id("fc_", 24) for _ in reply.tool_calls]
        # The built-in tools ran before the answer: their items come first, each with an id of its own.
        self.searches = [_web_search_item(hex_id("ws_", 24)) for _ in range(reply.usage.web_search_requests)]
        self.searches += [_file_search_item(hex_id("fs_", 24)) for _ in range(reply.usage.file_search_requests)]

    def done(self, reply: Reply) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = list(self.searches)
        if self.message_id:
            items.append({"id": self.message_id, "type": "message", "status": "completed", "role": "assistant",
                          "content": [_text_part(reply.text or "")]})
        for item_id, call in zip(self.call_ids, reply.tool_calls, strict=True):
            items.append(_call_item(item_id, call.id, call.name, call.arguments, "completed"))
        return items


def _web_search_item(item_id: str) -> dict[str, Any]:
    return {"id": item_id, "type": "web_search_call", "status": "completed",
            "action": {"type": "search", "query": "simulated search"}}


def _file_search_item(item_id: str) -> dict[str, Any]:
    return {"id": item_id, "type": "file_search_call", "status": "completed", "queries": ["simulated search"],
            "results": None}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}


def _response(reply: Reply, rid: str, created: int, body: dict[str, Any], status: str,
              output: list[dict[str, Any]], with_usage: bool) -> dict[str, Any]:
    incomplete = status == "incomplete"
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": reply.model, "output": output, "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": True,
            "temperature": 1.0, "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []), "top_p": 1.0,
            "truncation": "disabled", "usage": _responses_usage(reply) if with_usage else None,
            "user": None, "metadata": body.get("metadata") or {}}


def _final_status(reply: Reply) -> str:
    return "incomplete" if reply.stop_reason == "max_tokens" else "completed"


def response(reply: Reply, rid: str, created: int, body: dict[str, Any]) -> bytes:
    return dumps(_response(reply, rid, created, body, _final_status(reply), _ResponseItems(reply).done(reply),
                           True))


def response_events(reply: Reply, rid: str, created: int, body: dict[str, Any]) -> list[bytes]:
    """The Responses API SSE event sequence, ``event:`` + ``data:`` with a running ``sequence_number``."""
    out: list[bytes] = []

    def ev(kind: str, data: dict[str, Any]) -> None:
        out.append(b"event: " + kind.encode() + b"\ndata: " +
                   dumps({"type": kind, **data, "sequence_number": len(out)}) + b"\n\n")

    items = _ResponseItems(reply)
    ev("response.created", {"response": _response(reply, rid, created, body, "in_progress", [], False)})
    ev("response.in_progress", {"response": _response(reply, rid, created, body, "in_progress", [], False)})
    index = 0
    for search in items.searches:
        ev("response.output_item.added", {"output_index": index, "item": {**search, "status": "in_progress"}})
        ev("response.output_item.done", {"output_index": index, "item": search})
        index += 1
    if items.message_id:
        mid, text = items.message_id, reply.text or ""
        ev("response.output_item.added", {"output_index": index, "item": {
            "id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []}})
        ev("response.content_part.added", {"item_id": mid, "output_index": index, "content_index": 0,
                                           "part": _text_part("")})
        for piece in split(text, reply.chunks):
            ev("response.output_text.delta", {"item_id": mid, "output_index": index, "content_index": 0,
                                              "delta": piece, "logprobs": []})
        ev("response.output_text.done", {"item_id": mid, "output_index": index, "content_index": 0, "text": text,
                                         "logprobs": []})
        ev("response.content_part.done", {"item_id": mid, "output_index": index, "content_index": 0,
                                          "part": _text_part(text)})
        ev("response.output_item.done", {"output_index": index, "item": items.done(reply)[index]})
        index += 1
    for item_id, call in zip(items.call_ids, reply.tool_calls, strict=True):
        ev("response.output_item.added", {"output_index": index,
                                          "item": _call_item(item_id, call.id, call.name, "", "in_progress")})
        for piece in split(call.arguments, 3):
            ev("response.function_call_arguments.delta", {"item_id": item_id, "output_index": index,
                                                          "delta": piece})
        ev("response.function_call_arguments.done", {"item_id": item_id, "output_index": index,
                                                     "name": call.name, "arguments": call.arguments})
        ev("response.output_item.done", {"output_index": index, "item": _call_item(
            item_id, call.id, call.name, call.arguments, "completed")})
        index += 1
    status = _final_status(reply)
    ev(f"response.{status}", {"response": _response(reply, rid, created, body, status, items.done(reply), True)})
    return out


def response_error_event(message: str | None, code: str | None, sequence_number: int) -> bytes:
    data = {"type": "error", "code": code or "server_error", "param": None,
            "message": message or "The server had an error while processing your request.",
            "sequence_number": sequence_number}
    return b"event: error\ndata: " + dumps(data) + b"\n\n"


def _model(model: tuple[str, int, str]) -> dict[str, Any]:
    return {"id": model[0], "object": "model", "created": model[1], "owned_by": model[2]}


def model_body(model: tuple[str, int, str]) -> bytes:
    return dumps(_model(model))


def models_body(models: list[tuple[str, int, str]]) -> bytes:
    return dumps({"object": "list", "data": [_model(m) for m in models]})
