"""What the demo prints: a table of calls as the gateway saw them, and the trace as a tree."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from otelgate.context import RequestContext


@dataclass
class CallRecord:
    session: str | None
    model: str | None
    status: int | None
    outcome: str
    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    latency_ms: float
    tools: list[str]
    refused: str | None

    @classmethod
    def from_context(cls, ctx: RequestContext) -> CallRecord:
        usage = ctx.result.usage
        return cls(
            session=ctx.session_id,
            model=ctx.served_model or ctx.model,
            status=ctx.status,
            outcome=ctx.outcome,
            attempts=len(ctx.attempts),
            input_tokens=usage.total_input,
            output_tokens=usage.output_tokens,
            cost_usd=ctx.cost_usd,
            latency_ms=ctx.elapsed * 1000,
            tools=[call.name for call in ctx.result.tool_calls],
            refused=ctx.rejected_reason,
        )


def print_header(gateway_url: str, sim_url: str) -> None:
    print("\033[1motelgate demo\033[0m — a simulated LLM, the real gateway, the official anthropic SDK")
    print(f"  simulated upstream  {sim_url}")
    print(f"  gateway             {gateway_url}   (the agent's ANTHROPIC_BASE_URL)")


def print_calls(calls: Sequence[CallRecord]) -> None:
    print("\n\033[1mWhat the gateway saw\033[0m")
    header = f"  {'session':<14} {'status':>6} {'tries':>5} {'in':>6} {'out':>5} {'cost $':>9} {'ms':>6}  detail"
    print(header)
    print("  " + "-" * (len(header) + 10))
    total_cost = 0.0
    for call in calls:
        cost = f"{call.cost_usd:.5f}" if call.cost_usd is not None else "-"
        total_cost += call.cost_usd or 0.0
        detail = ", ".join(call.tools) if call.tools else ""
        if call.refused:
            detail = f"refused: {call.refused}"
        elif call.outcome != "ok":
            detail = call.outcome
        print(
            f"  {(call.session or '-')[:14]:<14} {call.status or '-':>6} {call.attempts:>5} {call.input_tokens:>6} "
            f"{call.output_tokens:>5} {cost:>9} {call.latency_ms:>6.0f}  {detail}"
        )
    print(f"  {len(calls)} calls, ${total_cost:.5f} in all")


def print_trace(spans: Sequence[Any]) -> None:
    try:
        from otelgate.telemetry.console import render_trace_tree
    except ImportError:  # pragma: no cover
        return
    if not spans:
        return
    print("\n\033[1mTraces\033[0m (OpenTelemetry spans, GenAI semantic conventions)")
    print(render_trace_tree(spans))
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    where = f"exported over OTLP to {endpoint}" if endpoint else "set OTEL_EXPORTER_OTLP_ENDPOINT to export them"
    print(f"  Spans shown from memory; {where}. Metrics: GET /metrics on the gateway.")
