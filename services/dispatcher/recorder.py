"""Recording outcomes as they arrive, in small groups, and holding them through an outage.

A batch's requests finish one by one; each outcome is added here and written with the
others that arrived within `flush_s` (at most `group_max` per transaction). A crash then
loses only the outcomes of requests in flight and of the group being gathered or
written, not those of the whole batch.

When PostgreSQL cannot be reached the outcomes are kept (the requests were made: their
outcomes are the truth) and written again with a growing pause until it answers. A
group that fails for another reason is written one outcome at a time, so one bad
outcome cannot keep the others from being recorded; an outcome that still fails is
logged and left to the lease recovery.

`room()` is back-pressure: a request starts only while fewer than `group_max`
outcomes wait to be written, so the outcomes a crash can lose stay bounded (the
requests in flight, plus about two groups) and no request starts while PostgreSQL is
down and outcomes pile up.

Leaving the `async with` block waits until every outcome added is written (or given
up), so a caller commits its Kafka offsets only after its outcomes are committed. Left
by an exception (the process stopping while PostgreSQL is still unreachable), the
outcomes not written are named in one `outcomes_not_recorded` error: the lease
recovery decides those messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.logging import get_logger
from shared.metrics import OUTCOMES_HELD

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

log = get_logger(__name__)

T = TypeVar("T")

OUTCOME_FLUSH_S = 0.05
OUTCOME_GROUP_MAX = 64
BACKOFF_FIRST_S = 0.1
# Short: once PostgreSQL answers again, held outcomes should land before anything else
# (such as the stale-`queued` re-publish) starts another attempt of their messages.
BACKOFF_MAX_S = 2.0


def unreachable(exc: BaseException) -> bool:
    """The database could not be reached (worth waiting for), as opposed to a
    statement that failed."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout, OSError, TimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class OutcomeRecorder(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[None]],
        *,
        describe: Callable[[T], dict[str, Any]] = lambda _: {},
        flush_s: float = OUTCOME_FLUSH_S,
        group_max: int = OUTCOME_GROUP_MAX,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.write = write
        self.describe = describe
        self.flush_s = flush_s
        self.group_max = group_max
        self.backoff_max_s = backoff_max_s
        self.pending: list[T] = []
        self.written = 0
        self.dropped = 0
        self.abandoned = 0  # not written: the block was left by an exception
        self._more = asyncio.Event()
        self._full = asyncio.Event()
        self._roomy = asyncio.Event()
        self._roomy.set()
        self._closing = False
        self._singles = 0
        self._held = 0  # what this recorder adds to the OUTCOMES_HELD gauge
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> OutcomeRecorder[T]:
        self._task = asyncio.create_task(self._run(), name="outcome-recorder")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._closing = True
        self._more.set()
        self._full.set()
        if exc_type is None:
            await self._task
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._report_held(0)
        if self.pending:
            self.abandoned = len(self.pending)
            log.error(
                "outcomes_not_recorded",
                count=self.abandoned,
                reason=f"stopped before they could be written ({exc_type.__name__})",
                hint="the requests were made; the lease recovery re-sends these messages "
                "with the same id, or fails them as unknown outcomes "
                "(PROVIDER_DEDUPLICATES=false)",
                outcomes=[self.describe(item) for item in self.pending[:50]],
            )

    def _report_held(self, count: int) -> None:
        OUTCOMES_HELD.inc(count - self._held)
        self._held = count

    def add(self, item: T) -> None:
        self.pending.append(item)
        self._more.set()
        if len(self.pending) >= self.group_max:
            self._full.set()
            self._roomy.clear()

    async def room(self) -> None:
        """Wait while a full group of outcomes is waiting to be written."""
        while len(self.pending) >= self.group_max:
            self._roomy.clear()
            await self._roomy.wait()

    def _removed(self, count: int) -> None:
        del self.pending[:count]
        if len(self.pending) < self.group_max:
            self._roomy.set()

    async def _run(self) -> None:
        failures = 0
        held_since: float | None = None
        while True:
            if not self.pending:
                if self._closing:
                    return
                self._more.clear()
                await self._more.wait()
                continue
            if failures == 0 and len(self.pending) < self.group_max and not self._closing:
                # Gather a group: a short linger, cut short when it is full.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_s)
            size = 1 if self._singles else self.group_max
            group = self.pending[:size]
            try:
                await self.write(group)
            except Exception as exc:
                if unreachable(exc):
                    failures += 1
                    self._report_held(len(self.pending))
                    if held_since is None:
                        held_since = time.monotonic()
                        log.warning(
                            "outcomes_held",
                            count=len(self.pending),
                            error=f"{exc!r:.300}",
                            hint="PostgreSQL unreachable: outcomes are kept and written "
                            "when it answers",
                        )
                    await asyncio.sleep(
                        min(self.backoff_max_s, BACKOFF_FIRST_S * 2 ** (failures - 1))
                    )
                    continue
                if len(group) > 1:
                    self._singles = len(group)  # one at a time, to find the bad one
                    continue
                log.error("outcome_not_recorded", error=f"{exc!r:.300}", **self.describe(group[0]))
                self._removed(1)
                self.dropped += 1
                self._singles = max(0, self._singles - 1)
                continue
            self._removed(len(group))
            self.written += len(group)
            self._singles = max(0, self._singles - len(group)) if self._singles else 0
            if held_since is not None:
                self._report_held(0)
                log.warning(
                    "outcomes_written_after_outage",
                    count=len(group),
                    still_pending=len(self.pending),
                    held_s=round(time.monotonic() - held_since, 3),
                )
                held_since = None
            failures = 0
