"""Per-mailing message counts by status, kept from the `message.status` stream.

Status changes of named messages arrive as events naming each message's previous status
and the new one (`messages.transitioned`, a commit's worth at once;
`message.status_changed`, one message, from earlier releases), bulk creations as one
event with counts by status, and bulk status changes (expiry at stop time, the re-plan
of an edit) as one event per step with counts per (previous -> new):
a count is the sum of deltas, which commute, so the order events arrive in does not
matter. A batch of events is applied in one transaction together with their ids in
`processed_event`; an event whose id is already there (a Kafka redelivery, the outbox
republishing after a crash, a duplicate) changes nothing. At rest the counters
therefore equal a fresh `COUNT(*) ... GROUP BY mailing_id, status` over the messages.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from shared.db import engine_of, prune_in_batches
from shared.events import (
    MessagesCreated,
    MessagesStatusChanged,
    MessageStatusChanged,
    MessagesTransitioned,
    StatusEvent,
)
from shared.logging import get_logger
from shared.metrics import MAILING_STATUS, MAILINGS, REPORTER_STATUS
from shared.models import Mailing, MailingState, MailingStatusCount, MessageStatus

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = get_logger(__name__)

CONSUMER = "reporter"

_MARK_PROCESSED = text(
    """
    INSERT INTO processed_event (consumer, event_id)
    SELECT :consumer, id FROM unnest(CAST(:ids AS uuid[])) AS t(id)
    ON CONFLICT DO NOTHING
    RETURNING event_id
    """
)
# Deltas for mailings that still exist (a deleted mailing's late events are dropped);
# rows in key order so two reporters never deadlock on them.
ADD_DELTAS = text(
    """
    INSERT INTO mailing_status_count (mailing_id, status, count)
    SELECT d.mailing_id, d.status, d.delta
    FROM unnest(CAST(:mailings AS bigint[]), CAST(:statuses AS text[]),
                CAST(:deltas AS bigint[])) AS d(mailing_id, status, delta)
    JOIN mailing ON mailing.id = d.mailing_id
    ORDER BY d.mailing_id, d.status
    ON CONFLICT (mailing_id, status)
    DO UPDATE SET count = mailing_status_count.count + EXCLUDED.count
    """
)


# The one reporter at a time that prunes `processed_event`.
_PRUNE_LOCK = 0x7072756E65657674  # "pruneevt"
# One batch of ids past the window, oldest first (ix_processed_event_consumer_processed_at),
# deleted by row address (a TID scan: matching them again by key would scan the table).
# Rows of this table are never updated, so an address stays valid within the statement.
PRUNE_STATEMENT = """
    DELETE FROM processed_event WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM processed_event
        WHERE consumer = :consumer
          AND processed_at < now() - make_interval(secs => :keep_s)
        ORDER BY processed_at
        LIMIT :batch
    ))
"""
_PRUNE = text(PRUNE_STATEMENT)


@dataclass(frozen=True, slots=True)
class Applied:
    applied: list[StatusEvent]
    duplicates: int


def deltas_of(events: Sequence[StatusEvent]) -> Counter[tuple[int, str]]:
    """The net change of each (mailing, status) count that `events` make."""
    deltas: Counter[tuple[int, str]] = Counter()
    for event in events:
        if isinstance(event, MessagesCreated):
            for status, count in event.payload.counts.items():
                deltas[(event.payload.mailing_id, status)] += count
        elif isinstance(event, MessagesStatusChanged):
            for change in event.payload.changes:
                deltas[(event.payload.mailing_id, change.status)] += change.count
                deltas[(event.payload.mailing_id, change.previous_status)] -= change.count
        elif isinstance(event, MessagesTransitioned):
            mailing = event.payload.mailing_id
            deltas[(mailing, event.payload.status)] += len(event.payload.messages)
            for message in event.payload.messages:
                if message.previous_status is not None:
                    deltas[(mailing, message.previous_status)] -= 1
        else:
            data = event.payload
            deltas[(data.mailing_id, data.status)] += 1
            if data.previous_status is not None:
                deltas[(data.mailing_id, data.previous_status)] -= 1
    return deltas


class Counters:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def apply(self, events: Sequence[StatusEvent]) -> Applied:
        """Apply each event not applied before, exactly once, in one transaction."""
        unique: dict[uuid.UUID, StatusEvent] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        if not unique:
            return Applied([], len(events))
        for attempt in range(3):
            try:
                return await self._apply(unique, len(events))
            except IntegrityError:
                # A mailing was deleted between the join and the foreign-key check:
                # the next attempt's join leaves it out.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _apply(self, unique: dict[uuid.UUID, StatusEvent], received: int) -> Applied:
        async with self.sessions() as session, session.begin():
            fresh = set(
                await session.scalars(
                    _MARK_PROCESSED, {"consumer": CONSUMER, "ids": sorted(unique, key=str)}
                )
            )
            applied = [event for event_id, event in unique.items() if event_id in fresh]
            changes = sorted((key, n) for key, n in deltas_of(applied).items() if n)
            if changes:
                await session.execute(
                    ADD_DELTAS,
                    {
                        "mailings": [mailing for (mailing, _), _ in changes],
                        "statuses": [status for (_, status), _ in changes],
                        "deltas": [n for _, n in changes],
                    },
                )
        return Applied(applied, received - len(applied))

    async def prune(self, older_than: timedelta) -> int | None:
        """Forget applied event ids past the de-duplication window: in batches, by an
        index range scan; None when another reporter is at it."""
        return await prune_in_batches(
            engine_of(self.sessions),
            lock=_PRUNE_LOCK,
            statement=_PRUNE,
            params={"consumer": CONSUMER, "keep_s": older_than.total_seconds()},
        )

    async def refresh_gauges(self, now: datetime) -> None:
        """Export the counters: totals by status, and per mailing for recent mailings;
        and how many mailings are in each state."""
        async with self.sessions() as session:
            states = dict(
                (
                    await session.execute(
                        select(Mailing.state, func.count()).group_by(Mailing.state)
                    )
                ).all()
            )
            totals = dict(
                (
                    await session.execute(
                        select(
                            MailingStatusCount.status, func.sum(MailingStatusCount.count)
                        ).group_by(MailingStatusCount.status)
                    )
                ).all()
            )
            recent = (
                await session.execute(
                    select(
                        MailingStatusCount.mailing_id,
                        MailingStatusCount.status,
                        MailingStatusCount.count,
                    )
                    .join(Mailing, Mailing.id == MailingStatusCount.mailing_id)
                    .where(Mailing.start_at <= now, Mailing.stop_at > now - timedelta(hours=24))
                )
            ).all()
        for status in MessageStatus:
            REPORTER_STATUS.labels(status.value).set(int(totals.get(status.value, 0)))
        for state in MailingState:
            MAILINGS.labels(state.value).set(int(states.get(state.value, 0)))
        MAILING_STATUS.clear()
        for mailing_id, name, count in recent:
            MAILING_STATUS.labels(str(mailing_id), name).set(count)


def log_applied(events: Sequence[StatusEvent]) -> None:
    """One line per applied event, carrying the ids: the status part of a message's story.

    A `messages.transitioned` event's line names its messages in parallel lists
    (`message_ids`, `client_ids`, `previous_statuses`, `attempts`): `make logs
    MESSAGE=id` finds the line by any of them and shows that message's entry."""
    for event in events:
        if isinstance(event, MessagesTransitioned):
            moved = event.payload
            messages = moved.messages
            log.info(
                "messages_transitioned",
                mailing_id=moved.mailing_id,
                status=moved.status,
                error=moved.error,
                count=len(messages),
                message_ids=[m.message_id for m in messages],
                client_ids=[m.client_id for m in messages],
                previous_statuses=[m.previous_status for m in messages],
                attempts=[m.attempt for m in messages],
            )
        elif isinstance(event, MessageStatusChanged):
            data = event.payload
            log.info(
                "message_status_changed",
                mailing_id=data.mailing_id,
                message_id=data.message_id,
                client_id=data.client_id,
                status=data.status,
                previous_status=data.previous_status,
                attempt=data.attempt,
                error=data.error,
            )
        elif isinstance(event, MessagesCreated):
            log.info(
                "messages_created",
                mailing_id=event.payload.mailing_id,
                counts=event.payload.counts,
            )
        else:
            log.info(
                "messages_status_changed",
                mailing_id=event.payload.mailing_id,
                changes=[change.model_dump(exclude_none=True) for change in event.payload.changes],
            )
