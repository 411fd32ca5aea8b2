"""The verdict on one run of a case: a list of reasons it failed, each saying what was expected and what was seen."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otelgate.evals.cases import Case
    from otelgate.evals.runner import RunResult


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _called(names: list[str]) -> str:
    return ", ".join(dict.fromkeys(names)) or "none"


def judge(case: Case, run: RunResult) -> list[str]:
    reasons: list[str] = []
    if run.timed_out:
        reasons.append(f"no answer within {run.time_limit:g} s: the agent was stopped")
    elif run.exit_code != case.expect_exit_code:
        seen = f"exit code {run.exit_code}, expected {case.expect_exit_code}"
        last = run.stderr.strip().splitlines()[-1:] if run.stderr.strip() else []
        reasons.append(seen + (f" (stderr: {_excerpt(last[0])})" if last else ""))
    answer = run.answer
    for text in case.expected_contains:
        if text not in answer:
            reasons.append(f"expected the answer to contain {text!r}, got {_excerpt(answer)}")
    for text in case.expected_not_contains:
        if text in answer:
            reasons.append(f"expected the answer not to contain {text!r}, got {_excerpt(answer)}")
    called = run.tool_calls
    for tool in case.expected_tool_calls:
        if tool not in called:
            reasons.append(f"expected tool {tool}, called: {_called(called)}")
    for tool in case.forbidden_tool_calls:
        times = called.count(tool)
        if times:
            reasons.append(f"forbidden tool {tool} was called {times} time{'s' if times > 1 else ''}")
    if case.max_iterations is not None and run.iterations > case.max_iterations:
        reasons.append(f"{run.iterations} iterations > max {case.max_iterations}")
    if case.max_tokens is not None and run.tokens > case.max_tokens:
        reasons.append(
            f"{run.tokens} tokens > max {case.max_tokens} ({run.input_tokens} in, {run.output_tokens} out)"
        )
    if case.max_usd is not None:
        if run.usd is None:
            reasons.append(f"cost unknown (the gateway priced none of the calls), cannot check max ${case.max_usd:g}")
        elif run.usd > case.max_usd:
            reasons.append(f"${run.usd:.4f} > max ${case.max_usd:g}")
    if case.max_seconds is not None and not run.timed_out and run.seconds > case.max_seconds:
        reasons.append(f"{run.seconds:.1f} s > max {case.max_seconds:g} s")
    return reasons
