"""A token bucket: at most `rate` calls per second, bursts up to one second's worth."""

from __future__ import annotations

import asyncio
import contextlib
import time


class RateLimiter:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for a token and take it; False, with none taken, once `stop` is set
        (callers queued behind each other then all return at once)."""
        if self.rate <= 0:
            return True
        async with self.lock:
            while True:
                if stop is not None and stop.is_set():
                    return False
                now = time.monotonic()
                self.tokens = min(
                    max(self.rate, 1.0), self.tokens + (now - self.updated) * self.rate
                )
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return True
                wait = (1 - self.tokens) / self.rate
                if stop is None:
                    await asyncio.sleep(wait)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await stop.wait()

    def hold(self, seconds: float) -> None:
        """The gateway asked us to slow down (429 Retry-After): spend the next tokens."""
        if self.rate > 0:
            self.tokens = min(self.tokens, -seconds * self.rate)
