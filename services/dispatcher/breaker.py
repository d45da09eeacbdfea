"""A circuit breaker for the gateway: stop calling one that keeps failing.

Closed: calls go through; `failures` transient failures in a row open it. Open: no
calls until `open_s` has passed, then half-open: one probe call. A successful probe
closes it; a failed one opens it again for twice as long (up to `open_max_s`).
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        open_s: float,
        open_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.base_open_s = open_s
        self.open_max_s = open_max_s
        self.clock = clock
        self.state = State.CLOSED
        self.consecutive = 0
        self.open_s = open_s
        self.opened_at = 0.0
        self.probing = False
        self.opened_count = 0

    def _refresh(self) -> None:
        if self.state == State.OPEN and self.clock() - self.opened_at >= self.open_s:
            self.state = State.HALF_OPEN
            self.probing = False

    def allow(self) -> bool:
        """May a call start now? In half-open, only one probe at a time."""
        self._refresh()
        if self.state == State.CLOSED:
            return True
        if self.state == State.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until a call may be tried again (0 when closed)."""
        self._refresh()
        if self.state == State.OPEN:
            return max(0.0, self.opened_at + self.open_s - self.clock())
        return 0.0 if self.state == State.CLOSED or not self.probing else 0.2

    def success(self) -> None:
        self.state = State.CLOSED
        self.consecutive = 0
        self.open_s = self.base_open_s
        self.probing = False

    def failure(self) -> None:
        self.consecutive += 1
        if self.state == State.HALF_OPEN:
            self._open(min(self.open_s * 2, self.open_max_s))
        elif self.state == State.CLOSED and self.consecutive >= self.threshold:
            self._open(self.base_open_s)

    def _open(self, seconds: float) -> None:
        self.state = State.OPEN
        self.open_s = seconds
        self.opened_at = self.clock()
        self.probing = False
        self.opened_count += 1
