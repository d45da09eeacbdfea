"""A token bucket: at most `rate` calls per second, bursts up to one second's worth."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(
                    max(self.rate, 1.0), self.tokens + (now - self.updated) * self.rate
                )
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)

    def hold(self, seconds: float) -> None:
        """The gateway asked us to slow down (429 Retry-After): spend the next tokens."""
        if self.rate > 0:
            self.tokens = min(self.tokens, -seconds * self.rate)
