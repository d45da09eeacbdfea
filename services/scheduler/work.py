"""What every part of the scheduler works with, and the claim they share.

`Work` carries the session factory, the broker, the topics, the settings and two
callbacks: `on_commit` (events were committed to the outbox: wake its relay) and `wake`
(new due work: wake the scheduler's loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from shared.models import Message, MessageStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from faststream.kafka import KafkaBroker
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
