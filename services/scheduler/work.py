"""What every part of the scheduler works with, the claim they share, and the bulk
move of a mailing's waiting messages (expiry and cancellation).

`Work` carries the session factory, the broker, the topics, the settings and two
callbacks: `on_commit` (events were committed to the outbox: wake its relay) and `wake`
(new due work: wake the scheduler's loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select, update

from shared.models import Message, MessageStatus
from shared.statuses import move_batch, plan_each_batch, stage_changes, total

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from faststream.kafka import KafkaBroker
    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings
    from shared.topics import Topics

# Pending but not in flight: an edit may re-plan these, the stop time expires them.
WAITING = (MessageStatus.SCHEDULED, MessageStatus.QUEUED, MessageStatus.RETRYING)


@dataclass(frozen=True)
class Work:
    sessions: async_sessionmaker[AsyncSession]
    broker: KafkaBroker
    topics: Topics
    settings: Settings
    on_commit: Callable[[], None]
    wake: Callable[[], None]


def now() -> datetime:
    return datetime.now(UTC)


async def claim(work: Work, session: AsyncSession, condition: Any, **values: Any) -> Sequence[Any]:
    """Lock up to a batch of messages matching `condition` (skipping locked ones),
    set `values`, and return (id, mailing_id, client_id, attempts) of each."""
    return (
        await session.execute(
            update(Message)
            .where(
                Message.id.in_(
                    select(Message.id)
                    .where(condition)
                    .limit(work.settings.scheduler_batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            .values(updated_at=func.now(), **values)
            .returning(Message.id, Message.mailing_id, Message.client_id, Message.attempts)
        )
    ).all()


async def move_waiting(
    work: Work,
    session: AsyncSession,
    mailing_id: int,
    still: ColumnElement[bool] | None,
    to: MessageStatus,
    *,
    error: str,
    **values: Any,
) -> int:
    """Move the mailing's waiting messages (those meeting `still` too, re-read at each
    step) to `to`, one message-id range of `scheduler_bulk_batch_size` per transaction
    with one aggregated status event; rows locked by someone else (a dispatcher's
    claim) are left for the next pass. Restartable: a moved message no longer waits.
    Returns how many moved."""
    step = work.settings.scheduler_bulk_batch_size
    waiting = Message.status.in_(WAITING)
    low, high = (
        await session.execute(
            select(func.min(Message.id), func.max(Message.id)).where(
                Message.mailing_id == mailing_id, waiting
            )
        )
    ).one()
    await session.commit()
    count = 0
    for first in range(low, high + 1, step) if low is not None else ():
        await plan_each_batch(session)
        changes = await move_batch(
            session,
            and_(
                Message.mailing_id == mailing_id,
                Message.id >= first,
                Message.id < first + step,
            ),
            waiting if still is None else and_(waiting, still),
            to,
            error=error,
            skip_locked=True,
            **values,
        )
        await stage_changes(session, work.topics, changes)
        await session.commit()
        if changes:
            count += total(changes)
            work.on_commit()
    return count
