"""Sessions resolved from what the store remembers of a continued answer, and what happens when the store fails."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from otelgate.providers import PROVIDERS
from otelgate.sessions import NOTE_PREFIX, Sessions

OPENAI = PROVIDERS["openai"]


def _ctx(body: dict[str, Any]) -> Any:
    return SimpleNamespace(json=body, request=SimpleNamespace(headers={"authorization": "Bearer sk-x"}),
                           session_id=None, session_source=None)


class Notes:
    def __init__(self) -> None:
        self.notes: dict[str, str] = {}

    async def remember(self, name: str, value: str, ttl_seconds: float) -> None:
        self.notes[name] = value

    async def recall(self, name: str) -> str | None:
        return self.notes.get(name)


class BrokenNotes(Notes):
    async def recall(self, name: str) -> str | None:
        raise RuntimeError("store gone")


CONTINUATION = {"model": "m", "previous_response_id": "resp_1",
                "input": [{"type": "function_call_output", "call_id": "c1", "output": "42"}]}


async def test_a_continuation_this_process_did_not_answer_takes_its_session_from_the_store() -> None:
    notes = Notes()
    notes.notes[NOTE_PREFIX + "resp_1"] = "conv-abc"
    ctx = _ctx(CONTINUATION)
    await Sessions(shared=notes).resolve(ctx, OPENAI)
    assert (ctx.session_id, ctx.session_source) == ("conv-abc", "previous_response")


async def test_a_failing_store_costs_the_continuation_its_session_not_the_request() -> None:
    ctx = _ctx(CONTINUATION)
    await Sessions(shared=BrokenNotes()).resolve(ctx, OPENAI)  # no exception: the request goes on
    assert ctx.session_id is None  # no user message to hash, as without a store
    opening = _ctx({"model": "m", "input": "Count the files."})
    await Sessions(shared=BrokenNotes()).resolve(opening, OPENAI)
    assert opening.session_source == "hash"
