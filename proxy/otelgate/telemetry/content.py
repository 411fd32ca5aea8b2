"""Message content for spans — only when capture is on (it is off by default).

Builds `gen_ai.input.messages`, `gen_ai.output.messages` and `gen_ai.system_instructions` in the JSON shape of
the GenAI conventions (messages of `{role, parts: [{type: text|tool_call|tool_call_response|..., ...}]}`) from
the Anthropic Messages, OpenAI Chat Completions and OpenAI Responses request shapes. Every string goes through
secret redaction, and the serialised attribute is capped at `content_max_bytes` by trimming the strings.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from otelgate.telemetry import semconv as sc

if TYPE_CHECKING:
    from otelgate.context import RequestContext

try:
    from otelgate.screening import redact_secrets as _redact
except Exception:  # screening not importable: keep a minimal local redaction so capture never leaks keys
    _FALLBACK = re.compile(
        r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{16,}|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{12,}=*)"
    )

    def _redact(text: str) -> str:
        return _FALLBACK.sub("[REDACTED]", text)


redact: Callable[[str], str] = _redact
TRUNCATED = "…[truncated]"


def capture_enabled(config_flag: bool) -> bool:
    value = os.environ.get(sc.ENV_CAPTURE_CONTENT, "").strip().lower()
    if value:
        # Accept the boolean spelling and util-genai's modes (span_only, span_and_event, event_only → spans too).
        return value in ("true", "1", "yes", "on", "span_only", "span_and_event", "event_only")
    return config_flag


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _anthropic_part(block: Any) -> dict[str, Any] | None:
    if isinstance(block, str):
        return {"type": "text", "content": block}
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "content": block.get("text", "")}
    if kind == "tool_use":
        return {"type": "tool_call", "id": block.get("id"), "name": block.get("name"), "arguments": block.get("input")}
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
        return {"type": "tool_call_response", "id": block.get("tool_use_id"), "response": content}
    if kind in ("thinking", "redacted_thinking"):
        return {"type": "reasoning", "content": block.get("thinking", "")}
    return {"type": str(kind)}  # images, documents: the kind only, never the bytes


def _openai_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    if not isinstance(content, list):
        return parts
    for item in content:
        if isinstance(item, dict) and item.get("type") in ("text", "input_text", "output_text"):
            parts.append({"type": "text", "content": item.get("text", "")})
        elif isinstance(item, dict):
            parts.append({"type": str(item.get("type"))})
    return parts


def _openai_item(item: dict[str, Any], system: list[dict[str, Any]]) -> dict[str, Any] | None:
    role, kind = item.get("role"), item.get("type")
    if kind == "function_call":  # Responses API items
        call = {
            "type": "tool_call",
            "id": item.get("call_id"),
            "name": item.get("name"),
            "arguments": item.get("arguments"),
        }
        return {"role": "assistant", "parts": [call]}
    if kind == "function_call_output":
        return {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": item.get("call_id"), "response": item.get("output")}],
        }
    if role in ("system", "developer"):
        system += _openai_parts(item.get("content"))
        return None
    if role == "tool":
        return {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": item.get("tool_call_id"), "response": item.get("content")}],
        }
    parts = _openai_parts(item.get("content"))
    calls = item.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": function.get("name"),
                "arguments": function.get("arguments"),
            }
        )
    return {"role": role or "user", "parts": parts}


def request_messages(body: dict[str, Any], provider: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(input messages, system instructions) from the Anthropic, Chat Completions or Responses request shape."""
    messages: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    if provider == "anthropic":
        raw_system = body.get("system")
        if isinstance(raw_system, str):
            system.append({"type": "text", "content": raw_system})
        elif isinstance(raw_system, list):
            system += [p for p in (_anthropic_part(b) for b in raw_system) if p]
        items = body.get("messages")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                content = item.get("content")
                blocks = content if isinstance(content, list) else [content] if content is not None else []
                parts = [p for p in (_anthropic_part(b) for b in blocks) if p]
                messages.append({"role": item.get("role") or "user", "parts": parts})
        return messages, system
    if isinstance(body.get("instructions"), str):
        system.append({"type": "text", "content": body["instructions"]})
    items = body.get("messages")
    if items is None:
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and (message := _openai_item(item, system)) is not None:
            messages.append(message)
    return messages, system


def output_messages(ctx: RequestContext) -> list[dict[str, Any]]:
    result = ctx.result
    parts: list[dict[str, Any]] = [{"type": "text", "content": t} for t in (result.output_text or []) if t]
    for call in result.tool_calls:
        parts.append({"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments})
    if not parts and not result.finish_reasons:
        return []
    return [
        {
            "role": "assistant",
            "parts": parts,
            "finish_reason": result.finish_reasons[0] if result.finish_reasons else "",
        }
    ]


# Structural fields of the semconv message shape; every other string is free text (redacted, trimmed).
_STRUCTURAL_KEYS = frozenset({"type", "role", "id", "name", "finish_reason"})


def _walk(node: Any, fn: Callable[[str], str]) -> Any:
    """Apply fn to every free-text string (message contents, tool arguments and results), keep the structure."""
    if isinstance(node, str):
        return fn(node)
    if isinstance(node, list):
        return [_walk(v, fn) for v in node]
    if isinstance(node, dict):
        return {k: v if k in _STRUCTURAL_KEYS and isinstance(v, str) else _walk(v, fn) for k, v in node.items()}
    return node


def _serialise(value: Any, max_bytes: int) -> str:
    value = _walk(value, lambda s: redact(s))
    text = json.dumps(value, ensure_ascii=False, default=str)
    limit = max_bytes
    while len(text.encode()) > max_bytes and limit > 16:
        limit //= 2
        trimmed = _walk(value, lambda s, n=limit: s if len(s) <= n else s[:n] + TRUNCATED)
        text = json.dumps(trimmed, ensure_ascii=False, default=str)
    if len(text.encode()) > max_bytes:  # too many messages even with short strings: keep the most recent ones
        keep = list(value) if isinstance(value, list) else [value]
        while keep and len(text.encode()) > max_bytes:
            keep = keep[1:]
            text = json.dumps(_walk(keep, lambda s: s[:16]), ensure_ascii=False, default=str)
    return text


def capture(ctx: RequestContext, max_bytes: int) -> dict[str, str]:
    """Span attributes with the call's content (redacted, capped). Only called when capture is enabled."""
    attributes: dict[str, str] = {}
    if isinstance(ctx.json, dict):
        messages, system = request_messages(ctx.json, ctx.provider.name)
        if messages:
            attributes[sc.GEN_AI_INPUT_MESSAGES] = _serialise(messages, max_bytes)
        if system:
            attributes[sc.GEN_AI_SYSTEM_INSTRUCTIONS] = _serialise(system, max_bytes)
    output = output_messages(ctx)
    if output:
        attributes[sc.GEN_AI_OUTPUT_MESSAGES] = _serialise(output, max_bytes)
    return attributes
