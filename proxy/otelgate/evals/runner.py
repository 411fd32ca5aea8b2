"""Run eval cases: one agent process per case (and repetition) against a gateway started for the run.

Scripted cases (with ``llm:``) go to an in-process simulated upstream, each run drawing from its own named queue;
the others go to the configured upstreams. The two kinds run in two phases, each with its own gateway, so that
one process never holds two telemetry pipelines exporting the same series.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from otelgate.config import Settings
from otelgate.evals.cases import Case
from otelgate.evals.gateway import SIM_QUEUE_HEADER, EvalGateway, with_upstream
from otelgate.evals.judge import judge
from otelgate.evals.recorder import CallRecord, Recording
from otelgate.sessions import SESSION_HEADER
from otelgate.totals import CallTotals

DEFAULT_TIMEOUT = 300.0
# Scripted runs need no real key, but SDKs refuse to start without one.
_PLACEHOLDER_KEY = "sk-otelgate-eval-scripted"


@dataclass
class RunResult(CallTotals):
    """One execution of a case."""

    case: Case
    index: int  # repetition number, from 0
    answer: str = ""
    stderr: str = ""
    exit_code: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    time_limit: float = DEFAULT_TIMEOUT
    calls: list[CallRecord] = field(default_factory=list)
    trace_id: str = ""
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons



    @property
    def tool_calls(self) -> list[str]:
        return [tool.name for call in self.calls for tool in call.tool_calls]






@dataclass
class CaseResult:
    """All runs of one case and the verdict: passed when the pass rate reaches the minimum."""

    case: Case
    runs: list[RunResult]
    min_pass_rate: float = 1.0

    @property
    def pass_rate(self) -> float:
        return sum(run.passed for run in self.runs) / len(self.runs) if self.runs else 0.0

    @property
    def passed(self) -> bool:
        return bool(self.runs) and self.pass_rate >= self.min_pass_rate

    @property
    def reasons(self) -> list[str]:
        reasons = list(dict.fromkeys(reason for run in self.runs for reason in run.reasons))
        if len(self.runs) > 1 and not self.passed:
            passes = sum(run.passed for run in self.runs)
            reasons.insert(
                0, f"passed {passes} of {len(self.runs)} runs ({self.pass_rate:.0%}) < min {self.min_pass_rate:.0%}"
            )
        return reasons

    @property
    def representative(self) -> RunResult:
        """The run whose trace a reader should open: the first failure, else the first run."""
        return next((run for run in self.runs if not run.passed), self.runs[0])


@dataclass
class EvalOptions:
    agent: str  # shell command; {input} is replaced by the shell-quoted input, else the input goes to stdin
    concurrency: int = 1
    repeat: int = 1
    min_pass_rate: float = 1.0
    timeout: float = DEFAULT_TIMEOUT  # per run, when the case sets no max_seconds
    env: Mapping[str, str] | None = None  # base environment for agents (default: this process's)
    telemetry: Any = "default"  # passed to EvalGateway; None turns telemetry off


def agent_command(template: str, case_input: str) -> tuple[str, bytes | None]:
    """The shell command for a case, and what to write on its stdin (when the template has no {input})."""
    if "{input}" in template:
        return template.replace("{input}", shlex.quote(case_input)), None
    return template, case_input.encode()


def _traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


class _Run:
    def __init__(self, case: Case, index: int, position: int, token: str) -> None:
        self.case = case
        self.index = index
        self.queue = f"eval-{token}-{position}-{index}"
        self.session = f"eval:{token}:{index}:{case.name}"[:200]
        self.trace_id = secrets.token_hex(16)


async def _execute(
    gateway: EvalGateway, run: _Run, options: EvalOptions, sim: Any | None
) -> RunResult:
    case = run.case
    recording = Recording(case.name, {"eval.case": case.name, "eval.run": str(run.index)})
    headers = {SESSION_HEADER: run.session, "traceparent": _traceparent(run.trace_id)}
    if sim is not None:
        assert case.llm is not None
        sim.script(case.llm, name=run.queue)
        headers[SIM_QUEUE_HEADER] = run.queue
    site = await gateway.open(recording, headers)
    limit = case.max_seconds if case.max_seconds is not None else options.timeout
    result = RunResult(case, run.index, time_limit=limit, trace_id=run.trace_id)
    env = dict(options.env if options.env is not None else os.environ)
    env.update(site.env())
    env["OTELGATE_EVAL_CASE"] = case.name
    if sim is not None:
        env.setdefault("ANTHROPIC_API_KEY", _PLACEHOLDER_KEY)
        env.setdefault("OPENAI_API_KEY", _PLACEHOLDER_KEY)
    command, stdin = agent_command(options.agent, case.input)
    try:
        await _spawn(command, stdin, env, limit, result)
        result.calls = await recording.settled_async()
    finally:
        await gateway.close_run(site)
    # An agent with its own traceparent keeps its trace; report the one its calls carried.
    seen = next((call.trace_id for call in result.calls if call.trace_id), None)
    result.trace_id = seen or run.trace_id
    result.reasons = judge(case, result)
    return result


async def _spawn(command: str, stdin: bytes | None, env: dict[str, str], limit: float, result: RunResult) -> None:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own process group: a timeout stops the agent and its children
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(proc.stdout.read(), proc.stderr.read())
    if stdin is not None and proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(stdin)
            await proc.stdin.drain()
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), limit)
    except TimeoutError:
        result.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    result.seconds = time.monotonic() - started
    result.exit_code = proc.returncode
    try:
        out, err = await asyncio.wait_for(readers, 5.0)
    except TimeoutError:  # a detached grandchild still holds the pipes
        readers.cancel()
        out, err = b"", b""
    result.answer = out.decode("utf-8", "replace")
    result.stderr = err.decode("utf-8", "replace")


async def _phase(
    settings: Settings,
    runs: list[_Run],
    options: EvalOptions,
    scripted: bool,
    limiter: asyncio.Semaphore,
    on_result: Callable[[RunResult], None] | None,
) -> list[RunResult]:
    if not runs:
        return []
    sim_cm: Any = contextlib.nullcontext()
    if scripted:
        from otelgate.sim import SimUpstream

        sim_cm = SimUpstream(port=0)
    async with sim_cm as sim:
        phase_settings = with_upstream(settings, sim.url, sim.openai_base_url) if scripted else settings
        async with EvalGateway(phase_settings, telemetry=options.telemetry) as gateway:

            async def one(run: _Run) -> RunResult:
                async with limiter:
                    result = await _execute(gateway, run, options, sim if scripted else None)
                if on_result is not None:
                    on_result(result)
                return result

            return list(await asyncio.gather(*(one(run) for run in runs)))


async def run_cases(
    cases: Sequence[Case],
    settings: Settings,
    options: EvalOptions,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[CaseResult]:
    """Run every case `options.repeat` times, at most `options.concurrency` at once; results in case order."""
    token = secrets.token_hex(4)  # distinguishes this invocation's sessions and queues from any other
    runs = [
        _Run(case, index, position, token) for position, case in enumerate(cases) for index in range(options.repeat)
    ]
    limiter = asyncio.Semaphore(max(1, options.concurrency))
    results: list[RunResult] = []
    for scripted in (True, False):
        chosen = [run for run in runs if run.case.scripted == scripted]
        results += await _phase(settings, chosen, options, scripted, limiter, on_result)
    by_case: dict[str, list[RunResult]] = {case.name: [] for case in cases}
    for result in results:
        by_case[result.case.name].append(result)
    return [
        CaseResult(case, sorted(by_case[case.name], key=lambda r: r.index), options.min_pass_rate) for case in cases
    ]
