"""Time sources. Everything that waits or reads the time takes a Clock, so tests run in
simulated time instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock time, epoch seconds."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""

    async def sleep(self, seconds: float) -> None: ...

    async def elapse(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock, without moving it: a time
        limit on other work (`watcher.aio.within`), where `sleep` is a wait of one's own."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def elapse(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """Time that moves only when told to. `sleep` advances it at once (and yields to the
    loop), so code that backs off for minutes finishes instantly and deterministically;
    `elapse` (a time limit) passes only when the test calls `advance` past it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self.slept: list[float] = []
        self._limits: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        waiting = []
        for at, future in self._limits:
            if at <= self._now + 1e-6 and not future.done():  # float sums: 0.1 + 0.1
                future.set_result(None)
            elif not future.done():
                waiting.append((at, future))
        self._limits = waiting

    async def sleep(self, seconds: float) -> None:
        # Moves time without passing anyone's limit: code that idles in a loop would
        # otherwise time out real I/O in flight within milliseconds.
        self.slept.append(seconds)
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)

    async def elapse(self, seconds: float) -> None:
        if seconds <= 0:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._limits.append((self._now + seconds, future))
        await future


class AcceleratedClock:
    """Real time sped up by `speed`, starting at `start`: a day of simulated jobs in minutes."""

    def __init__(self, *, speed: float, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin_real = time.monotonic()
        self._origin = time.time() if start is None else start

    def time(self) -> float:
        return self._origin + (time.monotonic() - self._origin_real) * self.speed

    def monotonic(self) -> float:
        return self.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def elapse(self, seconds: float) -> None:
        await self.sleep(seconds)
