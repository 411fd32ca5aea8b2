"""Admission control for one upstream: at most `limit` requests in flight, a bounded FIFO queue behind them.

Past the cap a request waits for a slot at most `max_wait` seconds, and at most `max_waiters` requests wait at
all; everything beyond is refused at once. That keeps memory bounded under any overload: the gateway holds
`limit + max_waiters` request bodies, never a backlog that grows with the arrival rate.
"""

from __future__ import annotations

import asyncio
from collections import deque


class InflightLimiter:
    def __init__(self, limit: int, max_wait: float, max_waiters: int) -> None:
        self.limit = limit
        self.max_wait = max_wait
        self.max_waiters = max_waiters
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, budget: float) -> bool:
        """Take a slot, waiting at most min(budget, max_wait) seconds. False when none came free in time."""
        if self.inflight < self.limit and not self._waiters:
            self.inflight += 1
            return True
        wait = min(budget, self.max_wait)
        if wait <= 0 or len(self._waiters) >= self.max_waiters:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            async with asyncio.timeout(wait):
                await future
            return True
        except TimeoutError:
            # The slot may have been handed over in the same loop iteration the timer fired: keep it then.
            return future.done() and not future.cancelled()
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled: pass it on
            raise
        finally:
            if not future.done():
                future.cancel()
            try:
                self._waiters.remove(future)
            except ValueError:
                pass

    def release(self) -> None:
        # Hand the slot straight to the oldest live waiter, so a newcomer cannot overtake the queue.
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.inflight -= 1
