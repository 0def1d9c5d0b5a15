"""How fast messages may go: ``[smtp] rate`` for this process alone, or shared by every process on the database."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

__all__ = [
    "RateLimiter",
    "SharedRateLimiter",
]


class RateLimiter:
    """At most ``rate`` sends a second across all connections (0 = no limit), evenly spaced."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    async def wait(self) -> None:
        """Return when the next send may start."""
        if not self.interval:
            return
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await self._sleep(slot - now)


class SharedRateLimiter(RateLimiter):
    """``rate`` sends a second across every process on the database, evenly spaced.

    Slots are reserved from the ledger a quarter of a second's worth at a time (one small
    transaction), so the processes' slots interleave instead of adding up.
    """

    def __init__(self, rate: float, reserve: Callable[[int, float], float], *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(rate, clock=clock, sleep=sleep)
        self._reserve = reserve
        self._chunk = max(1, int(rate / 4))
        self._slots: collections.deque[float] = collections.deque()

    async def wait(self) -> None:
        """Return when this process's next reserved slot comes."""
        if not self._slots:
            start = self._reserve(self._chunk, self.interval)
            self._slots.extend(start + number * self.interval for number in range(self._chunk))
        slot = self._slots.popleft()
        now = self._clock()
        if slot > now:
            await self._sleep(slot - now)
