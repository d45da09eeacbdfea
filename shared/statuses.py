"""Status changes of messages, each a compare-and-set with its `message.status` event.

The event is staged in the outbox in the same transaction as the change, so the
reporter and other systems see every change exactly once per commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from shared.events import MessageStatusChanged, StatusData
from shared.models import Message, MessageStatus
from shared.outbox import add_events

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.topics import Topics


async def transition_where(
    session: AsyncSession,
    topics: Topics,
    condition: ColumnElement[bool],
    to: MessageStatus,
    *,
    error: str | None = None,
) -> int:
    """Move every message matching `condition` to `to`; stage one event each.

    Returns the number of messages changed. Rows are locked in id order, so concurrent
    bulk transitions do not deadlock.
    """
    old = (
        select(Message.id, Message.status)
        .where(condition)
        .order_by(Message.id)
        .with_for_update()
        .cte("old")
    )
    rows = (
        await session.execute(
            update(Message)
            .where(Message.id == old.c.id)
            .values(status=to, updated_at=func.now(), last_error=error)
            .returning(
                Message.id, Message.mailing_id, Message.client_id, Message.attempts, old.c.status
            )
        )
    ).all()
    await stage_status_events(session, topics, rows, to, error)
    return len(rows)


async def stage_status_events(
    session: AsyncSession,
    topics: Topics,
    rows: Sequence[tuple[int, int, int, int, str]],
    to: MessageStatus,
    error: str | None,
) -> None:
    """rows: (message_id, mailing_id, client_id, attempt, previous_status)."""
    await add_events(
        session,
        topics.message_status,
        [
            MessageStatusChanged(
                payload=StatusData(
                    message_id=message_id,
                    mailing_id=mailing_id,
                    client_id=client_id,
                    status=to.value,
                    previous_status=previous,
                    attempt=attempt,
                    error=error,
                )
            )
            for message_id, mailing_id, client_id, attempt, previous in rows
        ],
    )
