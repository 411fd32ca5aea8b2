"""A small tool-using agent on the official `anthropic` SDK: the example tested in docs/testing-agents.md.

    python examples/weather_agent/agent.py "Should I take an umbrella in Paris today?"

It reads ANTHROPIC_BASE_URL (point it at otelgate) and ANTHROPIC_API_KEY like any SDK client, prints the final
answer on stdout, and on an API error prints the error on stderr and exits 1 (2 when it ran out of iterations).
Tools: `get_weather` (a fixed table, so runs are repeatable) and `read_notes` (reads a local text file — the kind
of tool that brings untrusted text into the conversation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic

MODEL = os.environ.get("WEATHER_AGENT_MODEL", "claude-haiku-4-5")
SYSTEM = (
    "You are a concise travel assistant. Use get_weather for current weather and read_notes for the user's "
    "travel notes. Answer in one or two sentences."
)

WEATHER: dict[str, dict[str, Any]] = {
    "paris": {"city": "Paris", "condition": "rain", "temperature_c": 14},
    "tokyo": {"city": "Tokyo", "condition": "sunny", "temperature_c": 22},
    "oslo": {"city": "Oslo", "condition": "snow", "temperature_c": -3},
}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
            "required": ["city"],
        },
    },
    {
        "name": "read_notes",
        "description": "Read the user's travel notes from a local text file.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "Path of the notes file"}},
            "required": ["path"],
        },
    },
]


class ToolError(Exception):
    """A tool could not do its job; the model is told, and may try something else."""


def get_weather(city: str) -> dict[str, Any]:
    found = WEATHER.get(city.strip().lower())
    if found is None:
        raise ToolError(f"no weather data for {city!r}; known cities: {', '.join(w['city'] for w in WEATHER.values())}")
    return found


def read_notes(path: str, limit: int = 4000) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")[:limit]
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror}") from None


def run_tool(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
    """The tool's output as text, and whether it failed. A failing tool never ends the run."""
    try:
        if name == "get_weather":
            return json.dumps(get_weather(str(arguments.get("city", "")))), False
        if name == "read_notes":
            return read_notes(str(arguments.get("path", ""))), False
        raise ToolError(f"unknown tool {name!r}")
    except ToolError as exc:
        return str(exc), True


class OutOfIterations(Exception):
    pass


@dataclass
class Answer:
    text: str
    iterations: int


def run_agent(question: str, client: anthropic.Anthropic | None = None, *, max_iterations: int = 6) -> Answer:
    """Ask the model, run the tools it asks for, and repeat until it answers. Raises anthropic.APIError."""
    client = client or anthropic.Anthropic()  # ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY from the environment
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for iteration in range(1, max_iterations + 1):
        response = client.messages.create(
            model=MODEL, max_tokens=1024, system=SYSTEM, tools=TOOLS, messages=messages  # type: ignore[arg-type]
        )
        messages.append({"role": "assistant", "content": [block.model_dump() for block in response.content]})
        uses = [block for block in response.content if block.type == "tool_use"]
        if response.stop_reason != "tool_use" or not uses:
            text = "".join(block.text for block in response.content if block.type == "text")
            return Answer(text.strip(), iteration)
        results = []
        for use in uses:
            output, failed = run_tool(use.name, dict(use.input))  # type: ignore[arg-type]
            results.append({"type": "tool_result", "tool_use_id": use.id, "content": output, "is_error": failed})
        messages.append({"role": "user", "content": results})
    raise OutOfIterations(f"no answer after {max_iterations} iterations")


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return exc.message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ask the weather agent a question.")
    parser.add_argument("question")
    parser.add_argument("--max-iterations", type=int, default=6)
    args = parser.parse_args(argv)
    try:
        answer = run_agent(args.question, max_iterations=args.max_iterations)
    except anthropic.APIStatusError as exc:
        # The gateway's refusals (budgets, session limits, screening) arrive here with a message naming the limit.
        print(f"error: {exc.status_code}: {_error_message(exc)}", file=sys.stderr)
        return 1
    except anthropic.APIConnectionError as exc:
        print(f"error: cannot reach the model: {exc}", file=sys.stderr)
        return 1
    except OutOfIterations as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(answer.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
