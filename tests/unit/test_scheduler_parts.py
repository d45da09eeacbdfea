"""The scheduler's pure parts, without PostgreSQL or Kafka: the loop's cadence, the
lease-recovery rule, the bookkeeping of a convergence, and the loop itself driven with
stand-in steps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.scheduler.convergence import Converged
from services.scheduler.leases import LEASE_EXPIRED, Recovery, recovery
from services.scheduler.planning import due_by_zone
from services.scheduler.service import (
    COMPACT_EVERY_S,
    GAUGE_EVERY_S,
    Every,
    Scheduler,
    slow_every_s,
)
from shared.models import MessageStatus as S
from shared.statuses import LEASE_UNKNOWN

# --- the loop's cadence ------------------------------------------------------------------


def test_a_task_runs_at_once_then_once_per_period() -> None:
    every = Every(5.0)
    assert [every.due(t) for t in (100.0, 101.0, 104.9, 105.0, 106.0, 110.0)] == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(("poll_s", "slow_s"), [(0.01, 1.0), (0.2, 1.0), (1.0, 5.0), (3.0, 15.0)])
def test_the_slow_tasks_run_every_five_polls_and_at_most_once_a_second(
    poll_s: float, slow_s: float
) -> None:
    assert slow_every_s(poll_s) == slow_s


# --- lease recovery ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deduplicates", "expected"),
    [
        pytest.param(
            True,
            Recovery(
                status=S.SCHEDULED,
                error=LEASE_EXPIRED,
                reason="lease expired",
                due_in=timedelta(seconds=15),
                dlq=False,
            ),
            id="gateway de-duplicates: fired again after half a lease",
        ),
        pytest.param(
            False,
            Recovery(
                status=S.FAILED, error=LEASE_UNKNOWN, reason=LEASE_UNKNOWN, due_in=None, dlq=True
            ),
            id="no de-duplication: failed, for an operator",
        ),
    ],
)
def test_a_message_past_its_lease(deduplicates: bool, expected: Recovery) -> None:
    assert recovery(provider_deduplicates=deduplicates, sending_lease_s=30.0) == expected


# --- convergence bookkeeping --------------------------------------------------------------


def test_convergence_steps_add_up_and_the_last_says_whether_it_was_superseded() -> None:
    done = Converged()
    done += Converged(cancelled=1, replanned=2, added=3, superseded=True)
    done += Converged(cancelled=10, replanned=20, added=30)
    assert done == Converged(cancelled=11, replanned=22, added=33, superseded=False)


def test_due_times_are_computed_once_per_zone() -> None:
    start = datetime(2031, 1, 1, 6, 0, tzinfo=UTC)
    mailing = SimpleNamespace(
        start_at=start,
        stop_at=start + timedelta(hours=4),
        window_start=time(9),
        window_end=time(17),
    )
    names, dues = due_by_zone(
        cast("Any", mailing), ["Asia/Tokyo", "UTC", "UTC", "America/New_York"], start
    )
    assert names == ["America/New_York", "Asia/Tokyo", "UTC"]
    # New York opens after the stop; Tokyo (15:00 local) is open; UTC opens at 09:00.
    assert dues == [None, start, datetime(2031, 1, 1, 9, 0, tzinfo=UTC)]


# --- the loop, with stand-in steps ---------------------------------------------------------


class Stub(Scheduler):
    """A Scheduler whose steps count their calls instead of touching PostgreSQL."""

    def __init__(self, *, fired: list[int], fail_first: bool = False) -> None:
        settings = SimpleNamespace(scheduler_poll_interval_s=0.01, scheduler_batch_size=10)
        super().__init__(
            cast("Any", None), cast("Any", None), cast("Any", None), cast("Any", settings)
        )
        self.fired = fired
        self.fail_first = fail_first
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def activate_due_mailings(self) -> int:
        self._count("activate")
        if self.fail_first and self.calls["activate"] == 1:
            raise ConnectionError("database down")
        return 0

    async def room(self) -> int:
        self._count("room")
        return int(self.settings.scheduler_batch_size)

    async def fire_due(self, limit: int | None = None) -> int:
        self._count("fire")
        return self.fired.pop(0) if self.fired else 0

    async def expire_past_stop(self) -> int:
        self._count("expire")
        return 0

    async def cancel_pending(self, mailing_id: int | None = None) -> int:
        self._count("cancel")
        return 0

    async def recover_stuck(self) -> int:
        self._count("recover")
        return 0

    async def requeue_stale(self) -> int:
        self._count("requeue")
        return 0

    async def backlog(self) -> int:
        self._count("backlog")
        return 0

    async def compact_audience_counts(self) -> None:
        self._count("compact")


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    started = asyncio.Event()
    started.set()
    task = asyncio.create_task(scheduler.run(started))
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_loop_polls_often_and_runs_the_slow_steps_once_a_period() -> None:
    scheduler = Stub(fired=[])
    await run_for(scheduler, 0.3)
    assert scheduler.calls["fire"] >= 5  # every poll interval (0.01 s)
    # Activation is looked for at every poll too, beside the loop (a task of its own,
    # so the last one may be cancelled before it starts).
    assert scheduler.calls["fire"] - 1 <= scheduler.calls["activate"] <= scheduler.calls["fire"]
    # The slow steps and the gauge: once at the start, not again within their period.
    assert slow_every_s(0.01) > 0.3
    assert GAUGE_EVERY_S > 0.3
    assert COMPACT_EVERY_S > 0.3
    slow = ("expire", "cancel", "recover", "requeue", "backlog", "compact")
    assert {k: scheduler.calls[k] for k in slow} == {
        "expire": 1,
        "cancel": 1,
        "recover": 1,
        "requeue": 1,
        "backlog": 1,
        "compact": 1,
    }


async def test_a_full_batch_is_followed_at_once_by_the_next() -> None:
    scheduler = Stub(fired=[10, 10, 10])
    scheduler.settings = cast(
        "Any", SimpleNamespace(scheduler_poll_interval_s=60.0, scheduler_batch_size=10)
    )
    await run_for(scheduler, 0.2)
    # Three full batches, then a short one, then it waits (60 s) for a wake-up.
    assert scheduler.calls["fire"] == 4


async def test_a_wake_up_cuts_the_wait_short() -> None:
    scheduler = Stub(fired=[])
    scheduler.settings = cast(
        "Any", SimpleNamespace(scheduler_poll_interval_s=60.0, scheduler_batch_size=10)
    )
    started = asyncio.Event()
    started.set()
    task = asyncio.create_task(scheduler.run(started))
    await asyncio.sleep(0.05)
    assert scheduler.calls["fire"] == 1
    scheduler.wake()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scheduler.calls["fire"] == 2


async def test_a_failed_tick_is_survived() -> None:
    scheduler = Stub(fired=[], fail_first=True)
    await run_for(scheduler, 1.3)  # the loop pauses a second after a failure
    assert scheduler.calls["activate"] >= 2
    assert scheduler.calls["fire"] >= 1


async def test_nothing_is_fired_while_the_dispatchers_have_enough_queued() -> None:
    class Full(Stub):
        async def room(self) -> int:
            self._count("room")
            return 0

    scheduler = Full(fired=[10, 10])
    await run_for(scheduler, 0.2)
    assert scheduler.calls["room"] >= 5  # asked again at every poll
    assert "fire" not in scheduler.calls


async def test_firing_goes_on_while_a_mailing_is_being_activated() -> None:
    release = asyncio.Event()

    class Slow(Stub):
        async def activate_due_mailings(self) -> int:
            self._count("activate")
            await release.wait()  # a big audience being expanded
            return 1

    scheduler = Slow(fired=[])
    started = asyncio.Event()
    started.set()
    task = asyncio.create_task(scheduler.run(started))
    await asyncio.sleep(0.2)
    # One activation under way, and the loop fired at every poll meanwhile.
    assert scheduler.calls["activate"] == 1
    assert scheduler.calls["fire"] >= 5
    release.set()
    await asyncio.sleep(0.1)
    assert scheduler.calls["activate"] >= 2  # the next one once it is done
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
