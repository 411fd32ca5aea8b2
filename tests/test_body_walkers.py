"""Every function that walks a request or response body survives any JSON in any place.

A body is the agent's (or the upstream's) JSON: a field the gateway reads by name ("type", "name", "role",
"content", "input", ...) can hold any JSON value, and real traffic does this legitimately — Claude Code's tool
schemas have properties *named* "type" whose value is a schema object, which once crashed the token estimate
with a 500 (`dict in frozenset`). These properties call the walkers directly with bodies built from the field
names they look for, so every branch meets strings, numbers, lists and objects where it expects one of them.
A body the adapter's parse_request refuses (a GatewayError: a 400 naming the field) goes no further, as in
the pipeline; every body it accepts must get through every walker."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from otelgate.budgets.estimate import estimate_input_tokens, max_output_tokens, requested_max_output_tokens
from otelgate.context import Result
from otelgate.errors import GatewayError
from otelgate.filters.screening import new_part
from otelgate.providers import ANTHROPIC, OPENAI, Route
from otelgate.telemetry.content import request_messages

PROPERTY = settings(max_examples=300, deadline=None)
ROUTES = [
    (ANTHROPIC, Route("anthropic", "messages", "chat", "/v1/messages", "POST", True)),
    (OPENAI, Route("openai", "chat_completions", "chat", "/chat/completions", "POST", True)),
    (OPENAI, Route("openai", "responses", "chat", "/responses", "POST", True)),
]
LOCATIONS = frozenset({"user", "tool_result", "system", "documents"})
# The names the adapters, the estimate, screening and telemetry look up, plus some they do not.
KEYS = st.sampled_from([
    "type", "name", "role", "content", "text", "input", "id", "tool_use_id", "tool_call_id", "call_id", "output",
    "image_url", "source", "data", "function", "arguments", "parameters", "input_schema", "properties", "tools",
    "tool_choice", "messages", "system", "instructions", "metadata", "user_id", "user", "model", "stream",
    "max_tokens", "usage", "input_tokens", "output_tokens", "choices", "message", "tool_calls", "delta",
    "stop_reason", "finish_reason", "detail", "url", "title", "context", "citations", "cache_control",
    "conversation", "previous_response_id", "store", "prompt_cache_key", "safety_identifier", "n",
    "stream_options", "action",
]) | st.text(max_size=6)
VALUES = st.sampled_from([
    "text", "image", "image_url", "input_image", "tool_use", "tool_result", "document", "function", "user",
    "assistant", "system", "developer", "tool", "function_call", "function_call_output", "message", "input_text",
    "output_text", "search", "read_file", "web_search_call", "file_search_call",
])
leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | VALUES | st.text(
    max_size=12)
json_value = st.recursive(
    leaf, lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=40,
)


def shaped(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """An object with some of the expected keys, each holding any JSON value (or a plausible string)."""
    return st.dictionaries(st.sampled_from(keys), VALUES | json_value, max_size=len(keys))


block = shaped(["type", "text", "content", "id", "tool_use_id", "name", "input", "source", "image_url", "title"])
message = shaped(["role", "content", "name", "tool_call_id", "tool_calls", "type", "call_id", "output"]) | st.builds(
    lambda role, content: {"role": role, "content": content}, VALUES, st.lists(block, max_size=4) | json_value)
tool = shaped(["name", "type", "description", "input_schema", "function", "parameters"]) | st.builds(
    lambda fn: {"type": "function", "function": fn}, shaped(["name", "parameters", "description"]))


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "max_tokens": 16}
    if draw(st.booleans()):  # shaped like a request, with any JSON inside
        body["messages" if draw(st.booleans()) else "input"] = draw(st.lists(message, max_size=5))
        body["tools"] = draw(st.lists(tool, max_size=4))
        body["tool_choice"] = draw(shaped(["type", "name", "function"]) | json_value)
        body["system"] = draw(st.lists(block, max_size=3) | json_value)
    body.update(draw(st.dictionaries(KEYS, json_value, max_size=4)))
    return body


@PROPERTY
@given(body=bodies())
def test_request_walkers_take_any_json_the_adapter_accepts(body: dict[str, Any]) -> None:
    # As in the pipeline: a body the adapter refuses (a GatewayError, a 400) goes no further.
    for provider, route in ROUTES:
        data = copy.deepcopy(body)
        try:
            provider.parse_request(data, route)
        except GatewayError:
            continue
        estimate_input_tokens(data)
        requested_max_output_tokens(data)
        max_output_tokens(data)
        provider.ask_stream_usage(copy.deepcopy(data), route)
        provider.session_hint(data)
        provider.continues(data)
        provider.continuable(route, data)
        provider.conversation_seed(data)
        provider.tool_results(data)
        for view in (data, new_part(data)):
            for ref in provider.texts(view, LOCATIONS):
                assert isinstance(ref.text, str)
                ref.replace("[redacted]")
        names = provider.tool_names(data)
        provider.remove_tools(data, {*names[:1], "search"})
        request_messages(data, provider.name)


@PROPERTY
@given(body=bodies())
def test_response_readers_take_any_json_or_say_they_cannot(body: dict[str, Any]) -> None:
    # The pipeline relays an answer it cannot read with usage unknown: these three exceptions are its contract.
    for provider, route in ROUTES:
        try:
            provider.parse_response(copy.deepcopy(body), route, Result())
        except (AttributeError, TypeError, ValueError):
            pass


def test_a_tool_schema_with_a_property_named_type_is_estimated():
    # The shape of Claude Code's own tools (e.g. a "type" parameter of its Grep tool).
    tool = {"name": "Grep", "description": "search", "input_schema": {
        "type": "object", "properties": {"type": {"type": "string", "description": "file type"}}}}
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    assert estimate_input_tokens(body) > 350
