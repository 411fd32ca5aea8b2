"""Circuit breakers: one per (upstream base URL, model), so one sick model does not cut off the others.

A breaker is closed while the failure ratio over a sliding time window stays under the threshold (or too few calls
were seen to judge). Past it, the breaker opens: calls are refused at once until a cool-down has passed. Then it
half-opens and lets a few probes through; they all succeed → closed, one fails → open again for another cool-down.

Pure logic with an injectable clock: no I/O, no asyncio, so it is tested without waiting.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otelgate.config import CircuitConfig

log = logging.getLogger("otelgate.breaker")

# The sliding window is kept as a ring of this many buckets: constant memory whatever the request rate.
_BUCKETS = 10


class State(IntEnum):
    """Values as exported by the otelgate.circuit.state gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    failures: int  # failures in the window when it happened (closed → open), else 0
    calls: int


class CircuitBreaker:
    def __init__(self, config: CircuitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._state = State.CLOSED
        self._bucket_width = config.window_seconds / _BUCKETS
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._epochs = [-1] * _BUCKETS  # which bucket-interval each slot currently counts
        self._opened_at = 0.0
        self._probes_out = 0  # half-open: probes allowed through and not yet recorded
        self._probe_successes = 0

    # --- reading ---

    @property
    def state(self) -> State:
        """The state as a caller would find it now (an expired open breaker reads as half-open)."""
        if self._state is State.OPEN and self._clock() >= self.retry_at:
            return State.HALF_OPEN
        return self._state

    @property
    def retry_at(self) -> float:
        """Clock time at which an open breaker lets the next probe through."""
        return self._opened_at + self.config.cooldown_seconds

    def window(self) -> tuple[int, int]:
        """(calls, failures) in the sliding window."""
        current = self._epoch()
        calls = failures = 0
        for slot in range(_BUCKETS):
            if current - self._epochs[slot] < _BUCKETS:
                calls += self._calls[slot]
                failures += self._failures[slot]
        return calls, failures

    # --- calls ---

    def allow(self) -> tuple[bool, Transition | None]:
        """May a call go through now? Half-open admits at most `half_open_probes` calls in flight."""
        change = None
        if self._state is State.OPEN:
            if self._clock() < self.retry_at:
                return False, None
            change = self._move(State.HALF_OPEN)
        if self._state is State.HALF_OPEN:
            if self._probes_out + self._probe_successes >= self.config.half_open_probes:
                return False, change
            self._probes_out += 1
        return True, change

    def record(self, ok: bool) -> Transition | None:
        """The outcome of a call that `allow` let through."""
        if self._state is State.HALF_OPEN:
            self._probes_out = max(self._probes_out - 1, 0)
            if not ok:
                return self._open()
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_probes:
                return self._move(State.CLOSED)
            return None
        if self._state is State.OPEN:
            return None  # a straggler that started before the breaker opened: already judged
        slot = self._slot()
        self._calls[slot] += 1
        if not ok:
            self._failures[slot] += 1
            calls, failures = self.window()
            if calls >= self.config.min_calls and failures / calls >= self.config.failure_ratio:
                return self._open(failures, calls)
        return None

    def abandon(self) -> None:
        """A call let through ended without a verdict (the agent went away): free its probe slot."""
        if self._state is State.HALF_OPEN:
            self._probes_out = max(self._probes_out - 1, 0)

    # --- internals ---

    def _open(self, failures: int = 0, calls: int = 0) -> Transition:
        self._opened_at = self._clock()
        return self._move(State.OPEN, failures, calls)

    def _move(self, new: State, failures: int = 0, calls: int = 0) -> Transition:
        old, self._state = self._state, new
        self._probes_out = 0
        self._probe_successes = 0
        if new is State.CLOSED:
            # A fresh start: the failures that opened the breaker must not re-open it on the first new error.
            self._calls = [0] * _BUCKETS
            self._failures = [0] * _BUCKETS
        return Transition(old, new, failures, calls)

    def _epoch(self) -> int:
        return math.floor(self._clock() / self._bucket_width)

    def _slot(self) -> int:
        epoch = self._epoch()
        slot = epoch % _BUCKETS
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._calls[slot] = 0
            self._failures[slot] = 0
        return slot


class NullBreaker(CircuitBreaker):
    """`circuit.enabled: false`: lets every call through and keeps no state."""

    def allow(self) -> tuple[bool, Transition | None]:
        return True, None

    def record(self, ok: bool) -> Transition | None:
        return None


@dataclass(frozen=True, slots=True)
class BreakerKey:
    base_url: str
    server_address: str
    model: str


class BreakerRegistry:
    """The breakers of one upstream, created on first use. Model names come from clients, so the registry is
    bounded: past `max_entries` the least recently used *closed* breaker is forgotten (it holds no state worth
    keeping); open and half-open ones are never evicted."""

    def __init__(
        self, config: CircuitConfig, *, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.max_entries = max_entries
        self._clock = clock
        self._breakers: OrderedDict[BreakerKey, CircuitBreaker] = OrderedDict()
        self._null = NullBreaker(config, clock)

    def get(self, key: BreakerKey) -> CircuitBreaker:
        if not self.config.enabled:
            return self._null
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(self.config, self._clock)
            self._breakers[key] = breaker
            if len(self._breakers) > self.max_entries:
                self._evict()
        else:
            self._breakers.move_to_end(key)
        return breaker

    def _evict(self) -> None:
        for key, breaker in self._breakers.items():
            if breaker.state is State.CLOSED:
                del self._breakers[key]
                return

    def states(self) -> Iterator[tuple[str, str, int]]:
        for key, breaker in list(self._breakers.items()):
            yield key.server_address, key.model, int(breaker.state)

    def __len__(self) -> int:
        return len(self._breakers)
