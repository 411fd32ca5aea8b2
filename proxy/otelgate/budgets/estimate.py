"""Input-token estimate of an Anthropic or OpenAI request body, for the reservation before the call.

No tokenizer: walk the parsed body once, add up the lengths of the strings that reach the model, and
convert: ASCII text at 3.5 characters per token, other text at 2.5 UTF-8 bytes per token, plus fixed
costs — 1,600 tokens per image (Anthropic's ceiling for an image; OpenAI's ``detail: low`` is 85), 4 per
message, 8 per tool, 350 once when tools are present (the tool-use system prompt both providers add).
English prose runs about 4 characters per token and CJK about 1 token per character, so the estimate is
deliberately a little high: a low estimate is the one way a reservation can fall short of the bill.
Base64 payloads of images are not read (fixed cost); those of documents and audio count like text.
The body is never re-serialised; only the small ``input``/``parameters`` objects of tools are walked with
their keys, since their JSON structure is what the model reads.
"""

from __future__ import annotations

import math
from typing import Any

ASCII_CHARS_PER_TOKEN = 3.5
BYTES_PER_TOKEN = 2.5
IMAGE_TOKENS = 1600
IMAGE_LOW_DETAIL_TOKENS = 85
PER_MESSAGE = 4
PER_TOOL = 8
TOOLS_PREAMBLE = 350
DEFAULT_MAX_OUTPUT = 4096
MAX_COMPLETIONS = 128  # OpenAI refuses a larger n

# Top-level fields that reach the model (Messages, Chat Completions, Responses, legacy Completions).
_CONTENT_FIELDS = ("system", "instructions", "prompt", "tool_choice")
# Fields that never reach the model as tokens, or are opaque blobs billed otherwise.
_SKIP = frozenset({"type", "role", "id", "tool_use_id", "tool_call_id", "call_id", "cache_control",
                   "signature", "encrypted_content", "status", "media_type", "detail", "format",
                   "citations", "file_id", "file_name", "filename", "mime_type"})
_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_STRUCTURED = frozenset({"input", "parameters", "input_schema", "arguments", "schema"})


class _Tally:
    __slots__ = ("ascii", "fixed", "other")

    def __init__(self) -> None:
        self.ascii = 0
        self.other = 0
        self.fixed = 0

    def text(self, s: str) -> None:
        if s.isascii():
            self.ascii += len(s)
        else:
            self.other += len(s.encode("utf-8", "surrogatepass"))

    def walk(self, obj: Any, with_keys: bool = False) -> None:
        if isinstance(obj, str):
            self.text(obj)
        elif isinstance(obj, dict):
            kind = obj.get("type")
            # `type` is any JSON value here: in a tool's input_schema it is often a property named "type"
            # whose value is a schema object (a dict: unhashable, so never tested against the set).
            if (isinstance(kind, str) and kind in _IMAGE_TYPES) or (
                kind is None and "image_url" in obj and len(obj) <= 2
            ):
                self.fixed += _image_cost(obj)
                return
            for k, v in obj.items():
                if k in _SKIP:
                    continue
                if with_keys:
                    self.ascii += len(k) + 2  # the key and its quotes/colon, as the model sees JSON
                self.walk(v, with_keys or (k in _STRUCTURED and isinstance(v, dict)))
        elif isinstance(obj, list):
            for v in obj:
                self.walk(v, with_keys)
        elif obj is not None and with_keys:
            self.ascii += len(str(obj))

    def tokens(self) -> int:
        return math.ceil(self.ascii / ASCII_CHARS_PER_TOKEN + self.other / BYTES_PER_TOKEN) + self.fixed


def _image_cost(block: dict[str, Any]) -> int:
    inner = block.get("image_url")
    detail = block.get("detail") or (inner.get("detail") if isinstance(inner, dict) else None)
    return IMAGE_LOW_DETAIL_TOKENS if detail == "low" else IMAGE_TOKENS


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """Estimated input tokens of a request body (Anthropic Messages, OpenAI Chat Completions or
    Responses), including system prompt, messages, tool results and tool definitions."""
    t = _Tally()
    for f in _CONTENT_FIELDS:
        v = body.get(f)
        if v is not None:
            t.walk(v)
    for key in ("messages", "input"):
        items = body.get(key)
        if isinstance(items, str):
            t.text(items)
            t.fixed += PER_MESSAGE
        elif isinstance(items, list):
            t.fixed += PER_MESSAGE * len(items)
            t.walk(items)
    tools = body.get("tools") or body.get("functions")
    if isinstance(tools, list) and tools:
        t.fixed += TOOLS_PREAMBLE + PER_TOOL * len(tools)
        for tool in tools:
            t.walk(tool, with_keys=False)
    return t.tokens()


def max_output_tokens(body: dict[str, Any], cap: int | None = None) -> int:
    """The most output tokens the request can produce: its output cap (``cap`` if the caller has it, else the one
    the body asks for, else the default) for each completion it asks for (OpenAI Chat ``n``, up to 128)."""
    per_completion = cap or requested_max_output_tokens(body)
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return per_completion * min(n, MAX_COMPLETIONS)
    return per_completion


def requested_max_output_tokens(body: dict[str, Any], default: int = DEFAULT_MAX_OUTPUT) -> int:
    """The output cap the request asks for (``max_tokens``, ``max_completion_tokens`` or
    ``max_output_tokens``), else ``default``: the other half of a reservation's worst case."""
    for f in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        v = body.get(f)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return default
