"""Circuit breaker and in-flight limiter logic, with a clock the test moves (the breaker is pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from otelgate.breaker import BreakerKey, BreakerRegistry, CircuitBreaker, State
from otelgate.config import CircuitConfig
from otelgate.overload import InflightLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kw: float) -> CircuitBreaker:
    config = CircuitConfig(**{"window_seconds": 10, "min_calls": 4, "failure_ratio": 0.5, "cooldown_seconds": 5,
                              "half_open_probes": 2, **kw})
    return CircuitBreaker(config, clock)


def test_stays_closed_below_min_calls_even_if_all_fail() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        assert b.allow()[0]
        assert b.record(False) is None
    assert b.state is State.CLOSED


def test_opens_at_the_failure_ratio_and_refuses_until_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    for ok in (True, True, False):
        b.allow()
        b.record(ok)
    b.allow()
    change = b.record(False)  # 2 failures of 4 calls = 0.5
    assert change is not None and (change.old, change.new) == (State.CLOSED, State.OPEN)
    assert (change.failures, change.calls) == (2, 4)
    assert b.allow() == (False, None)
    assert b.retry_at == pytest.approx(clock.now + 5)
    clock.now += 4.9
    assert b.allow() == (False, None)
    assert b.state is State.OPEN


def test_old_failures_slide_out_of_the_window() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.allow()
        b.record(False)
    clock.now += 11  # past the 10 s window
    b.allow()
    assert b.record(False) is None  # only 1 call in the window now
    assert b.window() == (1, 1)
    assert b.state is State.CLOSED


def test_half_open_admits_a_few_probes_then_closes() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(4):
        b.allow()
        b.record(False)
    clock.now += 5
    assert b.state is State.HALF_OPEN
    allowed, change = b.allow()
    assert allowed and change is not None and change.new is State.HALF_OPEN
    assert b.allow() == (True, None)
    assert b.allow() == (False, None)  # two probes out already
    assert b.record(True) is None
    change = b.record(True)
    assert change is not None and change.new is State.CLOSED
    # The failures that opened it were forgotten: one new failure does not re-open.
    b.allow()
    assert b.record(False) is None
    assert b.window() == (1, 1)


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(4):
        b.allow()
        b.record(False)
    clock.now += 5
    b.allow()
    change = b.record(False)
    assert change is not None and (change.old, change.new) == (State.HALF_OPEN, State.OPEN)
    assert b.retry_at == pytest.approx(clock.now + 5)
    assert b.allow() == (False, None)


def test_an_abandoned_probe_frees_its_slot() -> None:
    clock = Clock()
    b = breaker(clock, half_open_probes=1)
    for _ in range(4):
        b.allow()
        b.record(False)
    clock.now += 5
    assert b.allow()[0]
    assert not b.allow()[0]
    b.abandon()  # the agent went away mid-probe
    assert b.allow()[0]


def test_registry_is_bounded_and_keeps_open_breakers() -> None:
    clock = Clock()
    config = CircuitConfig(min_calls=1, failure_ratio=1.0)
    registry = BreakerRegistry(config, max_entries=3, clock=clock)
    sick = registry.get(BreakerKey("http://a", "a", "sick"))
    sick.allow()
    sick.record(False)
    for index in range(10):
        registry.get(BreakerKey("http://a", "a", f"model-{index}"))
    assert len(registry) <= 4
    states = {model: state for _, model, state in registry.states()}
    assert states["sick"] == int(State.OPEN)


async def test_limiter_hands_slots_over_in_order_and_times_out() -> None:
    limiter = InflightLimiter(limit=1, max_wait=5, max_waiters=2)
    assert await limiter.acquire(1.0)
    first = asyncio.create_task(limiter.acquire(1.0))
    second = asyncio.create_task(limiter.acquire(1.0))
    await asyncio.sleep(0)  # let both tasks queue (a scheduling step, not a timing assumption)
    assert limiter.waiting == 2
    assert not await limiter.acquire(1.0)  # queue full: refused at once
    limiter.release()
    assert await first
    assert not second.done()
    limiter.release()
    assert await second
    assert limiter.inflight == 1
    assert not await limiter.acquire(0.05)  # waits its budget, then gives up
    assert limiter.waiting == 0
    limiter.release()
    assert limiter.inflight == 0


async def test_limiter_cancelled_waiter_passes_the_slot_on() -> None:
    limiter = InflightLimiter(limit=1, max_wait=5, max_waiters=5)
    assert await limiter.acquire(1.0)
    doomed = asyncio.create_task(limiter.acquire(5.0))
    heir = asyncio.create_task(limiter.acquire(5.0))
    await asyncio.sleep(0)
    limiter.release()  # handed to `doomed`...
    doomed.cancel()  # ...which is cancelled before it runs: the slot must reach `heir`
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert await heir
    assert limiter.inflight == 1


def test_disabled_circuit_never_refuses_and_keeps_nothing() -> None:
    registry = BreakerRegistry(CircuitConfig(enabled=False, min_calls=1, failure_ratio=0.1))
    b = registry.get(BreakerKey("http://a", "a", "m"))
    for _ in range(20):
        assert b.allow() == (True, None)
        assert b.record(False) is None
    assert list(registry.states()) == []
