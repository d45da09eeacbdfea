"""The scheduler's work, all of it on PostgreSQL (the timer store), and its loop.

Each responsibility has a module of its own; `Scheduler` holds what they work with
(`work.Work`) and runs them:

- activation (`activation.py`): a mailing whose start has come gets its audience
  expanded into messages with set-based `INSERT ... SELECT ... ON CONFLICT DO NOTHING`
  in client-id batches;
- firing (`firing.py`): due messages are claimed with `FOR UPDATE SKIP LOCKED` and moved
  to `queued`; after that commits, their `SendMessage` commands are published (a command
  must never reach a dispatcher before the row it names is `queued`). If publishing
  fails, the batch goes back to `scheduled` (compare-and-set) and is fired again; a
  crash between the commit and the publish is covered by re-publishing long-`queued`
  messages;
- expiry (`expiry.py`): pending messages of mailings past their stop time, by
  message-id ranges, one transaction and one aggregated status event per range;
- cancellation (`cancellation.py`): waiting messages of a mailing an operator
  cancelled become `cancelled`, by message-id ranges as expiry does (a paused or
  cancelled mailing's messages are never fired: `firing.py`);
- lease recovery (`leases.py`): messages stuck in `sending` past their lease go back to
  `scheduled` and are fired again with the same message id (the gateway de-duplicates
  by it), or become `failed` with a DLQ record when it does not;
- edits (`edits.py`): a new mailing version re-plans pending messages, cancels clients
  that no longer match, adds new ones and gives failed, expired and cancelled ones a new
  chance, by message-id ranges as expiry does; activation does the same when the mailing
  is edited while its audience is being expanded (`convergence.py`: the row is the
  truth);
- audience counts: every `COMPACT_EVERY_S`, the deltas the client triggers append to
  the audience counts (`shared.audience.compact_counts`) are folded into one row per key.

Several scheduler processes may run: row claims skip locked rows, and work on one
mailing (activation, edit) holds that mailing's advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.scheduler import activation, cancellation, edits, expiry, firing, leases
from services.scheduler.work import Work
from shared.audience import compact_counts
from shared.logging import get_logger
from shared.metrics import SCHEDULER_BACKLOG

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings
    from shared.topics import Topics

log = get_logger(__name__)

# How often the backlog gauge is refreshed: a count, cheap to skip, costly at 10^6 rows.
GAUGE_EVERY_S = 15.0
# How often the audience counts' deltas are folded (each client write appends a few).
COMPACT_EVERY_S = 60.0


def slow_every_s(poll_interval_s: float) -> float:
    """How often expiry, lease recovery and the re-publish of stale messages run."""
    return max(1.0, poll_interval_s * 5)


@dataclass
class Every:
    """A task run at most once every `seconds` of the loop's clock (at once the first
    time)."""

    seconds: float
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        if now < self.next_at:
            return False
        self.next_at = now + self.seconds
        return True


class Scheduler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: KafkaBroker,
        topics: Topics,
        settings: Settings,
        *,
        on_commit: Any = None,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        self.topics = topics
        self.settings = settings
        self._wake = asyncio.Event()
        self.work = Work(
            sessions=sessions,
            broker=broker,
            topics=topics,
            settings=settings,
            on_commit=on_commit or (lambda: None),
            wake=self.wake,
        )

    def wake(self) -> None:
        self._wake.set()

    # --- each responsibility, in its module ----------------------------------------

    async def activate_due_mailings(self) -> int:
        """Activate every scheduled mailing whose start has come; return how many."""
        return await activation.activate_due_mailings(self.work)

    async def activate(self, mailing_id: int) -> int:
        """Expand one mailing's audience into messages; 1 if this call activated it."""
        return await activation.activate(self.work, mailing_id)

    async def fire_due(self, limit: int | None = None) -> int:
        """Claim due messages (a batch, or `limit`), commit the claim, then publish
        their send commands."""
        return await firing.fire_due(self.work, limit)

    async def room(self) -> int:
        """How many messages to fire now (fewer while the dispatchers catch up)."""
        return await firing.room(self.work)

    async def requeue_stale(self) -> int:
        """Re-publish the commands of messages `queued` for long."""
        return await firing.requeue_stale(self.work)

    async def backlog(self) -> int:
        """How many scheduled messages are due."""
        return await firing.backlog(self.work)

    async def expire_past_stop(self) -> int:
        """Expire pending messages of mailings past their stop time; return how many."""
        return await expiry.expire_past_stop(self.work)

    async def cancel_pending(self, mailing_id: int | None = None) -> int:
        """Cancel the waiting messages of cancelled mailings; return how many."""
        return await cancellation.cancel_pending(self.work, mailing_id)

    async def recover_stuck(self) -> int:
        """Recover messages in `sending` past their lease; return how many."""
        return await leases.recover_stuck(self.work)

    async def apply_edit(self, mailing_id: int) -> None:
        """Re-plan a running mailing after an update, from its row."""
        await edits.apply_edit(self.work, mailing_id)

    async def replan_client(self, client_id: int) -> None:
        """A client's time zone changed: re-plan its scheduled messages."""
        await edits.replan_client(self.work, client_id)

    async def compact_audience_counts(self) -> None:
        """Fold the audience counts' deltas into one row per key (same sums)."""
        async with self.sessions() as session, session.begin():
            await compact_counts(session)

    # --- the loop ----------------------------------------------------------------------

    async def run(self, started: asyncio.Event) -> None:
        await started.wait()
        interval = self.settings.scheduler_poll_interval_s
        loop = asyncio.get_running_loop()
        slow, gauge = Every(slow_every_s(interval)), Every(GAUGE_EVERY_S)
        counts = Every(COMPACT_EVERY_S)
        # Activation runs beside the loop: each expansion batch wakes it, and its
        # messages are fired while the rest of the audience is expanded.
        activating: asyncio.Task[int] | None = None
        try:
            while True:
                room = fired = 0
                try:
                    if activating is None or activating.done():
                        previous, activating = activating, None
                        if previous is not None:
                            previous.result()  # its failure is this tick's
                        activating = asyncio.create_task(self.activate_due_mailings())
                    room = await self.room()
                    fired = await self.fire_due(room) if room > 0 else 0
                    if slow.due(loop.time()):
                        await self.expire_past_stop()
                        await self.cancel_pending()
                        await self.recover_stuck()
                        await self.requeue_stale()
                    if gauge.due(loop.time()):
                        SCHEDULER_BACKLOG.set(await self.backlog())
                    if counts.due(loop.time()):
                        await self.compact_audience_counts()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("scheduler_tick_failed", error=repr(exc))
                    fired = 0
                    await asyncio.sleep(1.0)
                if room > 0 and fired >= room:
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
        finally:
            if activating is not None and not activating.done():
                activating.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await activating
