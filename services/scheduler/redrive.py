"""Re-drive: messages `queued` or `retrying` whose send command is no longer in Kafka.

A `queued` message's command is in `message.send` (published by the scheduler right
after the claim commits); a `retrying` one's is in a retry tier (published through the
dispatcher's outbox, held by the dispatcher until `not_before`). A crash between a
commit and its publish, records past their retention, or a bug can leave a message in
either status with no command anywhere: nothing would ever move it.

A short "stuck for N seconds" rule does not work: a big mailing legitimately has tens
of thousands of `queued` messages whose commands wait in Kafka, and a retry waits in its
tier. So the re-drive uses the dispatcher's own progress as the proof that a command is
gone, with a watermark:

1. A *mark*: the database clock `at`, then the end offset of every partition of the
   family's topics (`message.send` for `queued`; every retry tier for `retrying`).
   Every command published before `at - REDRIVE_GRACE_S` is below those offsets (the
   grace covers a commit and its publish; for `retrying`, the mark's time is also
   capped by the oldest outbox row of the retry tiers not yet published).
2. A later pass checks the dispatcher groups' committed offsets (a partition's log
   start counts as committed: records below it no longer exist). Once every partition
   has been committed up to the mark, every command published before the mark has been
   handled. With failing handlers committing nothing (`shared.consuming`), "committed"
   means the claim committed. A message still `queued` (or `retrying`, past its
   `retry_at` by the grace) that last changed before the mark therefore has no command:
   it gets a new one on `message.send` (its `updated_at` is bumped, so it is judged
   again only against a later mark), and `messages_redriven` is logged.
3. Until the groups have passed the mark, the mark stays: a backlog being worked
   through is never re-published; when they pass, a new mark is taken.

So an orphan is re-driven about `REDRIVE_INTERVAL_S + REDRIVE_GRACE_S` after the
dispatcher has caught up with what was published before it became one. A retried
message re-driven this way starts again at the first retry tier if it fails again.
A duplicate command (a race with a publish in flight) is harmless: the dispatcher's
claim is a compare-and-set on the status with `attempts` as fencing token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from services.scheduler.commands import publish_send_commands
from shared.consumer_lag import KafkaOffsets, consumed_up_to
from shared.logging import get_logger
from shared.metrics import SCHEDULER_REDRIVEN
from shared.models import MessageStatus, sql_literal
from shared.periodic import repeat

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence

    from aiokafka import TopicPartition
    from faststream.kafka import KafkaBroker
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings
    from shared.topics import Topics

log = get_logger(__name__)

# Orphans of one family, oldest first, locked so two schedulers never take the same
# rows; `updated_at` is bumped so a re-driven message waits for a later mark.
CLAIM = text(
    f"""
    WITH orphan AS (
        SELECT id FROM message
        WHERE status = :status AND updated_at < :before
          AND (:status <> {sql_literal(MessageStatus.RETRYING)}
               OR coalesce(retry_at, updated_at) < now() - :grace)
        ORDER BY updated_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE message AS m SET updated_at = now()
    FROM orphan WHERE m.id = orphan.id
    RETURNING m.id, m.mailing_id, m.client_id, m.attempts
    """  # noqa: S608 (a status name from its enum, not input)
)
OUTBOX_FLOOR = text(
    "SELECT min(created_at) FROM outbox WHERE published_at IS NULL AND topic = ANY(:topics)"
)


@dataclass(frozen=True)
class Family:
    status: MessageStatus
    topics: tuple[str, ...]
    groups: dict[str, str]  # topic -> the dispatcher group that consumes it


@dataclass(frozen=True)
class Mark:
    at: datetime  # commands published before this are below `ends`
    ends: dict[TopicPartition, int]


def passed(
    mark: Mark,
    committed: dict[TopicPartition, int | None],
    beginnings: dict[TopicPartition, int],
) -> bool:
    """Whether every partition has been consumed and committed up to the mark."""
    return consumed_up_to(mark.ends, committed, beginnings)


class Redrive:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: KafkaBroker,
        topics: Topics,
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        self.topics = topics
        self.settings = settings
        self.grace = timedelta(seconds=settings.redrive_grace_s)
        # The dispatcher's groups (named by the dispatcher's subscribers).
        retry_topics = tuple(
            topics.message_send_retry(tier) for tier in range(1, topics.retry_tiers + 1)
        )
        self.families = (
            Family(
                MessageStatus.QUEUED,
                (topics.message_send,),
                {topics.message_send: topics.group("dispatcher")},
            ),
            Family(
                MessageStatus.RETRYING,
                retry_topics,
                {
                    topic: topics.group(f"dispatcher-retry-{tier}")
                    for tier, topic in enumerate(retry_topics, start=1)
                },
            ),
        )
        self.marks: dict[str, Mark] = {}
        self.offsets: KafkaOffsets | None = None

    async def close(self) -> None:
        if self.offsets is not None:
            await self.offsets.close()
            self.offsets = None

    async def run_once(self) -> int:
        """One pass over both families; return how many messages were re-driven."""
        try:
            if self.offsets is None:
                self.offsets = KafkaOffsets(self.settings, "scheduler-redrive")
                await self.offsets.start()
            total = 0
            for family in self.families:
                total += await self._pass(self.offsets, family)
            return total
        except Exception:
            await self.close()  # fresh clients next time
            raise

    async def _committed(
        self, offsets: KafkaOffsets, family: Family, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        result: dict[TopicPartition, int | None] = {}
        for topic, group in family.groups.items():
            mine = [tp for tp in partitions if tp.topic == topic]
            result.update(await offsets.committed(group, mine))
        return result

    async def _pass(self, offsets: KafkaOffsets, family: Family) -> int:
        partitions = await offsets.partitions(family.topics)
        if not partitions:
            return 0
        mark = self.marks.get(family.status)
        redriven = 0
        if mark is not None:
            committed = await self._committed(offsets, family, partitions)
            beginnings = await offsets.beginning_offsets(partitions)
            if not passed(mark, committed, beginnings):
                return 0  # the dispatcher is still working through what came before
            redriven = await self._redrive(family, mark.at - self.grace)
        self.marks[family.status] = await self._mark(offsets, family, partitions)
        return redriven

    async def _mark(
        self, offsets: KafkaOffsets, family: Family, partitions: list[TopicPartition]
    ) -> Mark:
        async with self.sessions() as session:
            at: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
            if family.status == MessageStatus.RETRYING:
                floor = (
                    await session.execute(OUTBOX_FLOOR, {"topics": list(family.topics)})
                ).scalar_one()
                if floor is not None:
                    # Not yet in Kafka: the mark must not claim to cover it.
                    at = min(at, floor + self.grace)
        return Mark(at, await offsets.end_offsets(partitions))

    async def _redrive(self, family: Family, before: datetime) -> int:
        total = 0
        while True:
            async with self.sessions() as session, session.begin():
                rows = (
                    await session.execute(
                        CLAIM,
                        {
                            "status": family.status.value,
                            "before": before,
                            "grace": self.grace,
                            "limit": self.settings.scheduler_batch_size,
                        },
                    )
                ).all()
            if not rows:
                break
            await self._publish(rows)
            total += len(rows)
            if len(rows) < self.settings.scheduler_batch_size:
                break
        if total:
            SCHEDULER_REDRIVEN.labels(family.status.value).inc(total)
            log.warning(
                "messages_redriven",
                status=family.status.value,
                count=total,
                reason="no send command left in Kafka: the dispatcher has consumed past it",
            )
        return total

    async def _publish(self, rows: Sequence[Any]) -> None:
        await publish_send_commands(
            self.broker, self.topics.message_send, rows, event="send_command_redriven"
        )


async def run(redrive: Redrive, interval_s: float, started: asyncio.Event) -> None:
    """Every `interval_s`, one pass; failures are logged once per episode."""
    await started.wait()

    async def once() -> None:
        await redrive.run_once()

    try:
        await repeat(once, interval_s, name="redrive")
    finally:
        await redrive.close()
