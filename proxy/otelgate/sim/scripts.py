"""Which scripted step applies to a request: header faults, header sequences, then named queues.

Thread-safe, because the synchronous helper (``SimUpstream.in_thread``) lets test code script the sim from another
thread than the one serving requests.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from .steps import ScriptError, Step, parse_step, parse_steps

DEFAULT_QUEUE = "default"
FAULT_HEADER = "x-sim-fault"
SEQUENCE_HEADER = "x-sim-sequence"
SEQUENCE_ID_HEADER = "x-sim-id"
QUEUE_HEADER = "x-sim-script"


class ScriptBook:
    """Named queues of steps plus per-``x-sim-id`` counters for stateless header sequences."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Step]] = {}
        self._seen: dict[str, int] = {}
        # Header values repeat for every retry of one logical request: parse each distinct value once.
        self._parsed: dict[str, Any] = {}

    def script(self, steps: Iterable[Any] | str, name: str = DEFAULT_QUEUE) -> int:
        parsed = parse_steps(steps)  # all-or-nothing: validate before queueing any
        with self._lock:
            self._queues.setdefault(name, deque()).extend(parsed)
        return len(parsed)

    def remaining(self, name: str = DEFAULT_QUEUE) -> int:
        with self._lock:
            return len(self._queues.get(name, ()))

    def queues(self) -> dict[str, int]:
        with self._lock:
            return {name: len(q) for name, q in self._queues.items() if q}

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self._seen.clear()

    def select(self, queue: str, headers: Mapping[str, str], *, consume_queue: bool) -> Step | None:
        """The step for this request, or None for the default behaviour.

        Raises ScriptError when a control header is malformed (the caller answers 400: the test is wrong).
        """
        fault = headers.get(FAULT_HEADER)
        if fault is not None:
            return self._header_step(fault)
        sequence = headers.get(SEQUENCE_HEADER)
        if sequence is not None:
            seq_id = headers.get(SEQUENCE_ID_HEADER)
            if seq_id is None:
                raise ScriptError(f"{SEQUENCE_HEADER} needs an {SEQUENCE_ID_HEADER} header to count requests by")
            steps = self._header_sequence(sequence)
            with self._lock:
                n = self._seen.get(seq_id, 0)
                self._seen[seq_id] = n + 1
            return steps[min(n, len(steps) - 1)]
        if not consume_queue:
            return None
        with self._lock:
            q = self._queues.get(queue)
            return q.popleft() if q else None

    def _header_step(self, value: str) -> Step:
        cached = self._parsed.get(value)
        if cached is None:
            cached = parse_step(_json(FAULT_HEADER, value), FAULT_HEADER)
            self._parsed[value] = cached
        return cached

    def _header_sequence(self, value: str) -> list[Step]:
        cached = self._parsed.get(value)
        if cached is None:
            data = _json(SEQUENCE_HEADER, value)
            if not isinstance(data, list) or not data:
                raise ScriptError(f"{SEQUENCE_HEADER} must be a non-empty JSON list of steps")
            cached = [parse_step(s, f"{SEQUENCE_HEADER} step {i}") for i, s in enumerate(data)]
            if len(self._parsed) > 10_000:  # distinct values are few in practice; never grow without bound
                self._parsed.clear()
            self._parsed[value] = cached
        return cached


def _json(header: str, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ScriptError(f"{header} is not valid JSON: {exc}") from None
