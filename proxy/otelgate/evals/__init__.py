"""`otelgate eval`: run an agent against cases through a gateway and judge what it answered and what it did.

The runner uses the gateway as a user would (a real app, agents as subprocesses with a base URL); nothing in the
core imports this package.
"""

from otelgate.evals.cases import Case, CasesError, load_cases, parse_cases
from otelgate.evals.recorder import CallRecord, Recorder, Recording, ToolCallRecord, ToolResultRecord
from otelgate.evals.runner import CaseResult, EvalOptions, RunResult, run_cases

__all__ = [
    "CallRecord",
    "Case",
    "CaseResult",
    "CasesError",
    "EvalOptions",
    "Recorder",
    "Recording",
    "RunResult",
    "ToolCallRecord",
    "ToolResultRecord",
    "load_cases",
    "parse_cases",
    "run_cases",
]
