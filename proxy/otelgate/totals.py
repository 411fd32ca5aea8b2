"""Totals over the calls an agent made, as the gateway saw them.

Shared by an eval run (`otelgate.evals`) and the pytest fixture (`otelgate.testing`); kept free of heavy imports
because the pytest plugin must cost nothing in a project that does not use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otelgate.evals.recorder import CallRecord


class CallTotals:
    """Mixed into anything with a ``calls`` list of CallRecord."""

    calls: list[CallRecord]

    @property
    def llm_calls(self) -> list[CallRecord]:
        return [call for call in self.calls if call.generates]

    @property
    def iterations(self) -> int:
        """LLM calls the agent made (messages / chat completions / responses requests)."""
        return len(self.llm_calls)

    @property
    def input_tokens(self) -> int:
        return sum(call.input_tokens for call in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(call.output_tokens for call in self.calls)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def usd(self) -> float | None:
        """Cost of the calls the gateway priced; None when it priced none."""
        priced = [call.usd for call in self.calls if call.usd is not None]
        return sum(priced) if priced else None
