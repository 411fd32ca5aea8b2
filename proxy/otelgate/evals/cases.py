"""Eval cases: the YAML model and its loader.

Everything is validated before any agent runs: an unknown field or an ill-typed value is an error naming the case
and the field, because a typo such as ``max_iteration: 3`` must not silently turn a check off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from otelgate.sim import ScriptError, parse_steps


class CasesError(Exception):
    """A cases file that cannot be used; the message names the file, the case and the field."""


def _as_list(value: Any) -> Any:
    # `expected_contains: Paris` reads naturally in YAML; it means a list of one.
    return [value] if isinstance(value, str) else value


class Case(BaseModel):
    # strict: `max_iterations: "5"` is a mistake worth reporting, not a value to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(min_length=1, max_length=200)
    input: str
    expected_contains: list[str] = Field(default_factory=list)
    expected_not_contains: list[str] = Field(default_factory=list)
    expected_tool_calls: list[str] = Field(default_factory=list)
    forbidden_tool_calls: list[str] = Field(default_factory=list)
    max_iterations: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_usd: float | None = Field(None, gt=0)
    max_seconds: float | None = Field(None, gt=0)
    expect_exit_code: int = 0
    # Steps for the simulated upstream (the otelgate.sim format). Present: the case runs offline against the sim.
    llm: list[dict[str, Any]] | None = None

    _lists = field_validator(
        "expected_contains", "expected_not_contains", "expected_tool_calls", "forbidden_tool_calls", mode="before"
    )(_as_list)

    @field_validator("llm")
    @classmethod
    def _steps(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value is not None:
            if not value:
                raise ValueError("must list at least one step (leave llm out to use the configured upstream)")
            try:
                parse_steps(value)
            except ScriptError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def scripted(self) -> bool:
        return self.llm is not None


def _case_label(raw: Any, index: int) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"case {name!r} (#{index + 1})" if isinstance(name, str) and name else f"case #{index + 1}"


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(case)"
    message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
    message = message.removeprefix("Value error, ")
    return f"{loc}: {message}"


def parse_cases(data: Any, source: str = "cases") -> list[Case]:
    """Validate already-parsed YAML: a mapping with a ``cases:`` list, or a bare list. Raises CasesError."""
    if isinstance(data, dict):
        extra = sorted(set(data) - {"cases"})
        if extra:
            raise CasesError(f"{source}: unknown top-level field {extra[0]!r} (expected a 'cases:' list)")
        data = data.get("cases")
    if not isinstance(data, list):
        raise CasesError(f"{source}: expected a 'cases:' list (or a bare list of cases)")
    if not data:
        raise CasesError(f"{source}: no cases")
    cases: list[Case] = []
    seen: set[str] = set()
    for index, raw in enumerate(data):
        label = _case_label(raw, index)
        if not isinstance(raw, dict):
            raise CasesError(f"{source}: {label}: a case must be a mapping with name and input")
        try:
            case = Case.model_validate(raw)
        except ValidationError as exc:
            details = "; ".join(_describe(error) for error in exc.errors())
            raise CasesError(f"{source}: {label}: {details}") from None
        if case.name in seen:
            raise CasesError(f"{source}: {label}: duplicate case name")
        seen.add(case.name)
        cases.append(case)
    return cases


def load_cases(path: str | Path) -> list[Case]:
    """Read and validate a cases file. Raises CasesError with a message fit for the terminal."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CasesError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CasesError(f"{path} is not valid YAML: {exc}") from None
    return parse_cases(data, str(path))
