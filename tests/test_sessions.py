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


async def test_shutdown_waits_for_the_notes_still_on_their_way() -> None:
    """The last answers' notes reach the store before it closes (app cleanup awaits Sessions.close)."""
    import asyncio

    class SlowNotes(Notes):
        async def remember(self, name: str, value: str, ttl_seconds: float) -> None:
            await asyncio.sleep(0)  # a store round trip: the note lands on a later turn of the loop
            await super().remember(name, value, ttl_seconds)

    notes = SlowNotes()
    sessions = Sessions(shared=notes)
    ctx = SimpleNamespace(result=SimpleNamespace(response_id="resp_9"), session_id="conv-9", json={"input": "x"},
                          provider=SimpleNamespace(continuable=lambda route, body: True), route=None)
    sessions.remember(ctx)  # type: ignore[arg-type]
    assert notes.notes == {}
    await sessions.close()
    assert notes.notes == {NOTE_PREFIX + "resp_9": "conv-9"}
