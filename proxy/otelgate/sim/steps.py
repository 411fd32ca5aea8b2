"""Script steps: parse and validate the plain dicts (or YAML) that script the simulated upstream.

The format is documented in the package docstring (``otelgate.sim``). Everything here is pure data: a step is
validated once, when it is scripted, so that a typo fails loudly at the call site and not as a puzzling default
answer in the middle of a test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

StepKind = Literal["answer", "error", "fault"]

# Fault name -> the parameters it takes (besides the answer keys every fault step also accepts).
FAULT_PARAMS: dict[str, frozenset[str]] = {
    "reset_before_headers": frozenset(),
    "stall_before_headers": frozenset({"seconds"}),
    "stall_mid_stream": frozenset({"after_events", "seconds"}),
    "reset_mid_stream": frozenset({"after_events"}),
    "slow_drip": frozenset({"interval"}),
    "malformed_sse": frozenset({"after_events"}),
    "truncated_json": frozenset({"after_events", "mode"}),
    "end_stream_early": frozenset({"after_events"}),
    "error_mid_stream": frozenset({"after_events", "message", "type"}),
}
FAULTS = frozenset(FAULT_PARAMS)

ANSWER_KEYS = frozenset({"text", "tool_call", "tool_calls", "usage", "stop_reason", "chunks", "delay", "model",
                         "headers"})
ERROR_KEYS = frozenset({"status", "headers", "message", "type", "code", "delay"})
USAGE_KEYS = frozenset({"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                        "cache_creation_1h_input_tokens", "web_search_requests",
                        "file_search_requests"})
TOOL_CALL_KEYS = frozenset({"name", "input", "id"})
TRUNCATE_MODES = frozenset({"cut", "invalid"})

# OpenAI finish reasons accepted as a convenience and stored in the Anthropic vocabulary.
_OPENAI_STOP_ALIASES = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                        "content_filter": "refusal"}


class ScriptError(ValueError):
    """A scripted step is malformed; the message names the step and the offending key."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    input: Mapping[str, Any]
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One validated step. ``raw`` keeps the dict it came from (recorded on the request it was applied to)."""

    kind: StepKind
    raw: Mapping[str, Any] = field(default_factory=dict)
    # answer (also allowed on fault steps: what is streamed before / around the fault)
    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Mapping[str, int] = field(default_factory=dict)
    stop_reason: str | None = None
    chunks: int | None = None
    model: str | None = None
    # every kind
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    # error
    status: int = 200
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    # fault
    fault: str | None = None
    seconds: float = 0.0
    after_events: int | None = None
    interval: float = 0.0
    mode: str = "cut"


def _fail(where: str, msg: str) -> ScriptError:
    return ScriptError(f"{where}: {msg}")


def _number(where: str, key: str, value: Any, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool) or value < 0 or not math.isfinite(value):
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise _fail(where, f"{key!r} must be {kind}, got {value!r}")
    return value


def _string(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"{key!r} must be a string, got {value!r}")
    return value


def _tool_call(where: str, obj: Any) -> ToolCall:
    if not isinstance(obj, Mapping):
        raise _fail(where, f"a tool call must be a mapping like {{'name': 'search', 'input': {{}}}}, got {obj!r}")
    unknown = set(obj) - TOOL_CALL_KEYS
    if unknown:
        raise _fail(where, f"unknown tool call key(s) {sorted(unknown)} (allowed: {sorted(TOOL_CALL_KEYS)})")
    if "name" not in obj:
        raise _fail(where, "a tool call needs a 'name'")
    name = _string(where, "name", obj["name"])
    tool_input = obj.get("input", {})
    if not isinstance(tool_input, Mapping):
        raise _fail(where, f"tool call 'input' must be a mapping, got {tool_input!r}")
    try:
        json.dumps(tool_input)
    except (TypeError, ValueError) as exc:
        raise _fail(where, f"tool call 'input' must be JSON-serialisable: {exc}") from None
    tool_id = obj.get("id")
    if tool_id is not None:
        tool_id = _string(where, "id", tool_id)
    return ToolCall(name=name, input=dict(tool_input), id=tool_id)


def _headers(where: str, obj: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(obj, Mapping):
        raise _fail(where, f"'headers' must be a mapping, got {obj!r}")
    out = []
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, str | int | float) or isinstance(value, bool):
            raise _fail(where, f"header {name!r} must map a name to a string or number, got {value!r}")
        # YAML turns `retry-after: 1` into an int; a header is text on the wire.
        out.append((name, str(value)))
    return tuple(out)


def _answer_fields(where: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if "text" in obj:
        fields["text"] = _string(where, "text", obj["text"])
    if "tool_call" in obj and "tool_calls" in obj:
        raise _fail(where, "give either 'tool_call' or 'tool_calls', not both")
    if "tool_call" in obj:
        fields["tool_calls"] = (_tool_call(where, obj["tool_call"]),)
    if "tool_calls" in obj:
        calls = obj["tool_calls"]
        if not isinstance(calls, list) or not calls:
            raise _fail(where, f"'tool_calls' must be a non-empty list, got {calls!r}")
        fields["tool_calls"] = tuple(_tool_call(f"{where}, tool_calls[{i}]", c) for i, c in enumerate(calls))
    if "usage" in obj:
        usage = obj["usage"]
        if not isinstance(usage, Mapping):
            raise _fail(where, f"'usage' must be a mapping, got {usage!r}")
        unknown = set(usage) - USAGE_KEYS
        if unknown:
            raise _fail(where, f"unknown usage key(s) {sorted(unknown)} (allowed: {sorted(USAGE_KEYS)})")
        fields["usage"] = {k: int(_number(where, f"usage.{k}", v, integer=True)) for k, v in usage.items()}
    if "stop_reason" in obj:
        reason = _string(where, "stop_reason", obj["stop_reason"])
        fields["stop_reason"] = _OPENAI_STOP_ALIASES.get(reason, reason)
    if "chunks" in obj:
        chunks = int(_number(where, "chunks", obj["chunks"], integer=True))
        if chunks < 1:
            raise _fail(where, "'chunks' must be at least 1")
        fields["chunks"] = chunks
    if "model" in obj:
        fields["model"] = _string(where, "model", obj["model"])
    return fields


def parse_step(obj: Any, where: str = "step") -> Step:
    """Validate one step dict (see the package docstring) into a :class:`Step`."""
    if isinstance(obj, Step):
        return obj
    if not isinstance(obj, Mapping):
        raise _fail(where, f"a step must be a mapping, got {type(obj).__name__}: {obj!r}")
    raw = dict(obj)
    common: dict[str, Any] = {"raw": raw}
    if "delay" in obj:
        common["delay"] = _number(where, "delay", obj["delay"])
    if "headers" in obj:
        common["headers"] = _headers(where, obj["headers"])

    if "fault" in obj:
        name = obj["fault"]
        if name not in FAULTS:
            raise _fail(where, f"unknown fault {name!r} (known: {sorted(FAULTS)})")
        allowed = FAULT_PARAMS[name] | ANSWER_KEYS | {"fault"}
        unknown = set(obj) - allowed
        if unknown:
            raise _fail(where, f"unknown key(s) {sorted(unknown)} for fault {name!r} (allowed: {sorted(allowed)})")
        fault: dict[str, Any] = {"fault": name}
        if "seconds" in obj:
            fault["seconds"] = _number(where, "seconds", obj["seconds"])
        if "interval" in obj:
            fault["interval"] = _number(where, "interval", obj["interval"])
        if "after_events" in obj:
            fault["after_events"] = int(_number(where, "after_events", obj["after_events"], integer=True))
        if "mode" in obj:
            if obj["mode"] not in TRUNCATE_MODES:
                raise _fail(where, f"'mode' must be one of {sorted(TRUNCATE_MODES)}, got {obj['mode']!r}")
            fault["mode"] = obj["mode"]
        if "message" in obj:
            fault["message"] = _string(where, "message", obj["message"])
        if "type" in obj:
            fault["error_type"] = _string(where, "type", obj["type"])
        return Step(kind="fault", **common, **_answer_fields(where, obj), **fault)

    if "status" in obj:
        unknown = set(obj) - ERROR_KEYS
        if unknown:
            raise _fail(where, f"unknown key(s) {sorted(unknown)} for an error step (allowed: {sorted(ERROR_KEYS)})")
        status = obj["status"]
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise _fail(where, f"'status' must be an HTTP error status 400..599, got {status!r}")
        err: dict[str, Any] = {"status": status}
        if "message" in obj:
            err["message"] = _string(where, "message", obj["message"])
        if "type" in obj:
            err["error_type"] = _string(where, "type", obj["type"])
        if "code" in obj:
            err["code"] = _string(where, "code", obj["code"])
        return Step(kind="error", **common, **err)

    unknown = set(obj) - ANSWER_KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)} (an answer step allows {sorted(ANSWER_KEYS)}; "
                           f"an error step needs 'status', a fault step needs 'fault')")
    return Step(kind="answer", **common, **_answer_fields(where, obj))


def parse_steps(steps: Iterable[Any] | str) -> list[Step]:
    """Validate a list of step dicts, or YAML text holding such a list (or a mapping with an ``llm:`` list)."""
    if isinstance(steps, str):
        steps = _from_yaml(steps)
    if isinstance(steps, Mapping):
        raise ScriptError("steps must be a list of step mappings, got a single mapping (wrap it in a list)")
    return [parse_step(s, f"step {i}") for i, s in enumerate(steps)]


def _from_yaml(text: str) -> list[Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScriptError(f"steps are not valid YAML: {exc}") from None
    if isinstance(data, Mapping) and "llm" in data:
        data = data["llm"]
    if not isinstance(data, list):
        raise ScriptError(f"YAML steps must be a list (or a mapping with an 'llm' list), got {type(data).__name__}")
    return data


def load_steps(path: str) -> list[Step]:
    """Read steps from a YAML file (a list, or a mapping with an ``llm:`` list)."""
    with open(path, encoding="utf-8") as f:
        return parse_steps(f.read())
