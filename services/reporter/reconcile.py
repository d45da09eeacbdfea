"""Reconciliation: the counters of active mailings checked against `COUNT(*)`.

The counters are kept from status events, each applied once; if an event is ever lost
(a bug, a record past its retention, a hand edit), its count stays wrong for good. Every
`REPORTER_RECONCILE_INTERVAL_S` one reporter (a session advisory lock) compares the
counters of the active mailings (started, and running or stopped less than a day ago)
with the rows, and corrects the ones that drifted.

Why not just compare and overwrite: the counters lag the rows legitimately. A status
change commits with its event in the outbox; the event then waits for the relay, then
in Kafka, then in a reporter batch. A naive "counter != COUNT(*) -> write COUNT(*)"
during a busy run writes a value that the events still in flight then move again,
leaving the counter wrong by exactly those events. So the check accounts for every
event in flight, exactly, and only corrects what nothing in flight explains:

1. A *mark*: the database clock `at`, then the end offsets of `message.status`.
2. A later pass waits until the reporter group has committed every partition up to
   the mark (handlers commit only after their transaction: `shared.consuming`). From
   then on, every event published to Kafka before the mark has been applied, or was
   lost. Until then the pass does nothing (and keeps the mark).
3. One REPEATABLE READ snapshot reads, consistently: `COUNT(*)` by status, the
   counters, and the events still in flight: outbox rows of `message.status` for these
   mailings that are unpublished or were published after the mark (less a margin for
   the relay's transaction), whose `event_id` is not in `processed_event`. A status
   change commits atomically with its outbox row, and an event's application commits
   atomically with its `processed_event` row, so in that snapshot
   `counter + in-flight deltas == COUNT(*)` holds exactly unless an event was lost.
4. The residual `COUNT(*) - in-flight - counter` of each (mailing, status) is the
   drift (`notifications_reporter_counter_drift_messages`). It is corrected only when
   the next eligible pass finds the same non-zero residual again: belt and braces
   against an event the margin misjudged (its application changes the residual). The
   correction is a delta (`count = count + residual`), which commutes with events
   applied meanwhile; an absolute write would not. Each correction is logged as
   `counters_reconciled` (mailing, status, counter, true value) and counted in
   `notifications_reporter_counter_corrections_total`.

Cost per eligible pass: a `GROUP BY` over the active mailings' messages (index on
`(mailing_id, status)`), and, only when some counter differs, a scan of the outbox rows
of `message.status` for those mailings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import text

from services.reporter.counters import ADD_DELTAS, CONSUMER, deltas_of
from shared.consumer_lag import KafkaOffsets, consumed_up_to
from shared.events import StatusEvent, status_event_adapter
from shared.logging import get_logger
from shared.metrics import REPORTER_COUNTER_CORRECTIONS, REPORTER_COUNTER_DRIFT
from shared.models import MailingState, MessageStatus, sql_literal
from shared.periodic import repeat

if TYPE_CHECKING:
    import asyncio

    from aiokafka import TopicPartition
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from shared.settings import Settings

log = get_logger(__name__)

# Session advisory lock: one reporter reconciles at a time.
RECONCILE_LOCK = 0x7265636F6E63696C  # "reconcil"

ACTIVE = text(
    f"""
    SELECT id FROM mailing
    WHERE start_at <= now()
      AND (state = {sql_literal(MailingState.RUNNING)} OR stop_at > now() - interval '1 day')
    ORDER BY id
    """  # noqa: S608 (a state name from its enum, not input)
)
TRUTH = text(
    "SELECT mailing_id, status, count(*) FROM message "
    "WHERE mailing_id = ANY(CAST(:ids AS bigint[])) GROUP BY mailing_id, status"
)
COUNTERS = text(
    "SELECT mailing_id, status, count FROM mailing_status_count "
    "WHERE mailing_id = ANY(CAST(:ids AS bigint[]))"
)
IN_FLIGHT = text(
    """
    SELECT o.payload FROM outbox AS o
    WHERE o.topic = :topic AND o.key = ANY(CAST(:keys AS text[]))
      AND (o.published_at IS NULL OR o.published_at >= :since)
      AND NOT EXISTS (
          SELECT 1 FROM processed_event AS p
          WHERE p.consumer = :consumer AND p.event_id = CAST(o.payload->>'event_id' AS uuid)
      )
    """
)

Key = tuple[int, str]


@dataclass(frozen=True)
class Mark:
    at: datetime
    ends: dict[TopicPartition, int]


@dataclass(frozen=True)
class Snapshot:
    truth: dict[Key, int]
    counters: dict[Key, int]
    in_flight: dict[Key, int]

    def residual(self) -> dict[Key, int]:
        """COUNT(*) minus in-flight deltas minus counter, where non-zero."""
        keys = set(self.truth) | set(self.counters) | set(self.in_flight)
        found = {
            key: self.truth.get(key, 0) - self.in_flight.get(key, 0) - self.counters.get(key, 0)
            for key in keys
        }
        return {key: value for key, value in found.items() if value}


def confirmed(previous: dict[Key, int], current: dict[Key, int]) -> dict[Key, int]:
    """The drift found, with the same value, by two passes in a row."""
    return {key: value for key, value in current.items() if previous.get(key) == value}


class Reconciler:
    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        topic: str,
        group: str,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.settings = settings
        self.topic = topic
        self.group = group
        # The relay stamps `published_at` at its transaction's start, before the ack.
        self.margin = timedelta(seconds=30 + 2 * settings.kafka_request_timeout_s)
        self.mark: Mark | None = None
        self.previous: dict[Key, int] = {}
        self.offsets: KafkaOffsets | None = None

    async def close(self) -> None:
        if self.offsets is not None:
            await self.offsets.close()
            self.offsets = None

    async def run_once(self) -> dict[Key, int]:
        """One pass, if this process holds the lock; return the corrections made."""
        async with self.engine.connect() as lock:
            leader = (
                await lock.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": RECONCILE_LOCK})
            ).scalar_one()
            await lock.commit()
            if not leader:
                self.mark = None  # another reporter reconciles; start afresh if it stops
                self.previous = {}
                return {}
            try:
                return await self._pass()
            finally:
                try:
                    await lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": RECONCILE_LOCK})
                    await lock.commit()
                except Exception:
                    await lock.invalidate()  # closing the connection releases the lock

    async def _pass(self) -> dict[Key, int]:
        try:
            if self.offsets is None:
                self.offsets = KafkaOffsets(self.settings, "reporter-reconcile")
                await self.offsets.start()
            offsets = self.offsets
            partitions = await offsets.partitions([self.topic])
            if not partitions:
                return {}
            mark = self.mark
            corrections: dict[Key, int] = {}
            if mark is not None:
                committed = await offsets.committed(self.group, partitions)
                beginnings = await offsets.beginning_offsets(partitions)
                if not consumed_up_to(mark.ends, committed, beginnings):
                    return {}  # events published before the mark are still on their way
                corrections = await self._check(mark)
            self.mark = await self._mark(offsets, partitions)
            return corrections
        except Exception:
            await self.close()
            raise

    async def _mark(self, offsets: KafkaOffsets, partitions: list[TopicPartition]) -> Mark:
        async with self.sessions() as session:
            at: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
        return Mark(at, await offsets.end_offsets(partitions))

    async def _check(self, mark: Mark) -> dict[Key, int]:
        snapshot = await self.snapshot(mark.at - self.margin)
        residual = snapshot.residual()
        drift: Counter[str] = Counter()
        for (_, status), value in residual.items():
            drift[status] += value
        for status in {s.value for s in MessageStatus} | set(drift):
            REPORTER_COUNTER_DRIFT.labels(status).set(drift.get(status, 0))
        fix = confirmed(self.previous, residual)
        self.previous = {key: value for key, value in residual.items() if key not in fix}
        if fix:
            await self._correct(fix)
            for (mailing_id, status), delta in sorted(fix.items()):
                counter = snapshot.counters.get((mailing_id, status), 0)
                REPORTER_COUNTER_CORRECTIONS.labels(status).inc()
                log.warning(
                    "counters_reconciled",
                    mailing_id=mailing_id,
                    status=status,
                    counter=counter,
                    true_value=counter + delta,
                    count=snapshot.truth.get((mailing_id, status), 0),
                    in_flight=snapshot.in_flight.get((mailing_id, status), 0),
                )
        return fix

    async def snapshot(self, since: datetime) -> Snapshot:
        """COUNT(*), counters and in-flight events of the active mailings, all as of one
        REPEATABLE READ snapshot."""
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                ids = list((await conn.execute(ACTIVE)).scalars())
                if not ids:
                    return Snapshot({}, {}, {})
                truth = _keyed(await conn.execute(TRUTH, {"ids": ids}))
                counters = _keyed(await conn.execute(COUNTERS, {"ids": ids}))
                in_flight: dict[Key, int] = {}
                if truth != {key: n for key, n in counters.items() if n}:
                    payloads = (
                        await conn.execute(
                            IN_FLIGHT,
                            {
                                "topic": self.topic,
                                "keys": [str(i) for i in ids],
                                "since": since,
                                "consumer": CONSUMER,
                            },
                        )
                    ).scalars()
                    in_flight = dict(deltas_of(_events(payloads)))
        return Snapshot(truth, counters, in_flight)

    async def _correct(self, fix: dict[Key, int]) -> None:
        ordered = sorted(fix.items())
        async with self.sessions() as session, session.begin():
            await session.execute(
                ADD_DELTAS,
                {
                    "mailings": [mailing for (mailing, _), _ in ordered],
                    "statuses": [status for (_, status), _ in ordered],
                    "deltas": [delta for _, delta in ordered],
                },
            )


def _keyed(rows: Any) -> dict[Key, int]:
    return {(int(mailing), str(status)): int(count) for mailing, status, count in rows}


def _events(payloads: Any) -> list[StatusEvent]:
    events: list[StatusEvent] = []
    for payload in payloads:
        try:
            events.append(status_event_adapter.validate_python(payload))
        except ValidationError:
            continue  # the reporter skips it too
    return events


async def run(reconciler: Reconciler, interval_s: float, started: asyncio.Event) -> None:
    """A pass every `interval_s`; failures are logged once per episode."""
    await started.wait()

    async def once() -> None:
        await reconciler.run_once()

    try:
        await repeat(once, interval_s, name="reconcile")
    finally:
        await reconciler.close()
