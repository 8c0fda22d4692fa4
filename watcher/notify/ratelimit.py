"""A token bucket on an injected clock: `burst` sends at once, then `rate` per second."""

from __future__ import annotations

import asyncio
import math

from watcher.clock import Clock


class TokenBucket:
    def __init__(self, *, rate: float, burst: int, clock: Clock) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    async def acquire(self) -> float:
        """Take one token, waiting (first come, first served) until there is one; returns
        the seconds waited on the clock."""
        waited = 0.0
        async with self._lock:
            while True:
                self._refill()
                # A hair short counts as a token: on an epoch-sized clock a refill of
                # (1 - tokens) / rate seconds can come out a float step short, and the
                # wait for the rest would be too small to move the clock at all. The
                # hair: what a few float steps of the clock's value refill.
                hair = 4 * math.ulp(self._updated) * self._rate
                if self._tokens >= 1 - max(hair, 1e-9):
                    self._tokens -= 1
                    return waited
                delay = (1 - self._tokens) / self._rate
                waited += delay
                await self._clock.sleep(delay)
