"""The provider-neutral answer to one request: text, tool calls, stop reason and usage.

Token counts are deterministic estimates (input: characters of the prompt JSON / 4; output: words of text plus
characters of tool input JSON / 4) so tests can predict them, and a scripted ``usage`` overrides any of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from .steps import Step, ToolCall

Api = Literal["anthropic", "chat", "responses"]

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Byte -> base62 character via bytes.translate: one C call per id (a slight bias toward the first 8 characters
# is irrelevant for ids that only need to look real and not collide).
_B62_TABLE = bytes((_B62 * 5)[:256], "ascii")


def b62_id(prefix: str, length: int = 22) -> str:
    """A random id in the providers' style, e.g. ``msg_01…`` (22 base62 characters after the prefix)."""
    return prefix + os.urandom(length).translate(_B62_TABLE).decode("ascii")


def hex_id(prefix: str, nbytes: int = 12) -> str:
    return prefix + os.urandom(nbytes).hex()


@dataclass(slots=True)
class ResolvedToolCall:
    id: str
    name: str
    input: dict[str, Any]
    arguments: str  # the input as compact JSON, as OpenAI carries it


@dataclass(slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0  # of cache_creation_input_tokens, those written for one hour
    web_search_requests: int = 0  # server-side searches (Anthropic usage.server_tool_use; OpenAI web_search_call)
    file_search_requests: int = 0  # OpenAI Responses file_search_call items

    @property
    def openai_prompt_tokens(self) -> int:
        # OpenAI counts cached prompt tokens inside prompt_tokens; Anthropic reports them beside input_tokens.
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens


@dataclass(slots=True)
class Reply:
    model: str
    text: str | None  # None or "" = no text block
    tool_calls: list[ResolvedToolCall]
    stop_reason: str  # Anthropic vocabulary: end_turn, tool_use, max_tokens, stop_sequence, refusal, ...
    usage: Usage
    chunks: int


def prompt_tokens(body: dict[str, Any], api: Api) -> int:
    if api == "anthropic":
        parts: Any = [body.get("system"), body.get("messages"), body.get("tools")]
    elif api == "chat":
        parts = [body.get("messages"), body.get("tools")]
    else:
        parts = [body.get("instructions"), body.get("input"), body.get("tools")]
    return max(1, len(json.dumps(parts, separators=(",", ":"), ensure_ascii=False)) // 4)


def words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any, text_types: tuple[str, ...]) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content
                        if isinstance(b, dict) and b.get("type") in text_types and isinstance(b.get("text"), str))
    return ""


def last_user_text(body: dict[str, Any], api: Api) -> str:
    if api == "responses":
        items = body.get("input")
        if isinstance(items, str):
            return items
        messages = items if isinstance(items, list) else []
    else:
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return _text_of(msg.get("content"), ("text", "input_text"))
    return ""


def default_text(body: dict[str, Any], api: Api) -> str:
    said = last_user_text(body, api).split()
    if not said:
        return "Simulated answer."
    summary = " ".join(said[:8]) + (" …" if len(said) > 8 else "")
    return f"Simulated answer to: {summary}"


def _requested_max(body: dict[str, Any], api: Api) -> int | None:
    keys = {"anthropic": ("max_tokens",), "chat": ("max_completion_tokens", "max_tokens"),
            "responses": ("max_output_tokens",)}[api]
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _tool_id(call: ToolCall, api: Api) -> str:
    if call.id:
        return call.id
    return b62_id("toolu_01") if api == "anthropic" else b62_id("call_", 24)


def build_reply(step: Step | None, body: dict[str, Any], api: Api, default_chunks: int) -> Reply:
    """Resolve a step (or the default behaviour) against the request into a concrete reply."""
    model = (step.model if step else None) or str(body.get("model") or "sim-model")
    tool_calls = []
    for call in step.tool_calls if step else ():
        tool_input = dict(call.input)
        tool_calls.append(ResolvedToolCall(_tool_id(call, api), call.name, tool_input,
                                           json.dumps(tool_input, separators=(",", ":"), ensure_ascii=False)))
    text = step.text if step else None
    if text is None and not tool_calls:
        text = default_text(body, api)

    stop_reason = step.stop_reason if step else None
    if stop_reason is None:
        stop_reason = "tool_use" if tool_calls else "end_turn"
        # Like the real APIs: an answer longer than the caller's max_tokens is cut there.
        limit = _requested_max(body, api)
        if text and not tool_calls and limit is not None and words(text) > limit:
            text = " ".join(text.split()[:limit])
            stop_reason = "max_tokens"

    out_tokens = (words(text) if text else 0) + sum(max(1, len(c.arguments) // 4) for c in tool_calls)
    scripted = step.usage if step else {}
    usage = Usage(
        input_tokens=scripted.get("input_tokens", prompt_tokens(body, api)),
        output_tokens=scripted.get("output_tokens", max(1, out_tokens)),
        cache_read_input_tokens=scripted.get("cache_read_input_tokens", 0),
        cache_creation_input_tokens=scripted.get("cache_creation_input_tokens", 0),
        cache_creation_1h_input_tokens=scripted.get("cache_creation_1h_input_tokens", 0),
        web_search_requests=scripted.get("web_search_requests", 0),
        file_search_requests=scripted.get("file_search_requests", 0),
    )
    chunks = (step.chunks if step and step.chunks else None) or default_chunks
    return Reply(model=model, text=text, tool_calls=tool_calls, stop_reason=stop_reason, usage=usage,
                 chunks=chunks)


def split(text: str, n: int) -> list[str]:
    """Split text into exactly n non-empty pieces (fewer only when it has fewer than n characters)."""
    if not text:
        return []
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces, pos = [], 0
    for i in range(n):
        end = pos + size + (1 if i < extra else 0)
        pieces.append(text[pos:end])
        pos = end
    return pieces
