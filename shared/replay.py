"""Replaying failed messages: the one rule `make replay-dlq` and the API's
`POST /api/v1/notifications/{id}/replay/` share.

A message is replayed when it is still `failed` and its mailing can still send (its
stop time has not passed and it is not cancelled): it goes back to `scheduled`, due
now (a compare-and-set, with its status event), and takes the normal path again:
window, stop time, claim, retries. Anything that changed since (sent, deleted, mailing
stopped) is left alone. A replayed message of a paused mailing waits for the resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from shared.models import Mailing, MailingState, Message, MessageStatus
from shared.statuses import transition_where

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.topics import Topics

FROM_DLQ = "replayed from the dead-letter topic"
BY_OPERATOR = "replayed by an operator"


def replayable() -> ColumnElement[bool]:
    """Still `failed`, and its mailing can still send."""
    return (Message.status == MessageStatus.FAILED) & Message.mailing_id.in_(
        select(Mailing.id).where(
            Mailing.stop_at > func.now(), Mailing.state != MailingState.CANCELLED
        )
    )


async def replay_failed(
    session: AsyncSession, topics: Topics, which: ColumnElement[bool], *, error: str
) -> int:
    """Put the messages matching `which` that are replayable back to `scheduled`, due
    now, each with its status event (staged in `session`'s transaction); return how
    many. `which` should pass its ids as one array parameter (`= ANY(:ids)`), never an
    `IN` list of one parameter each: PostgreSQL takes at most 65,535 in a statement."""
    chosen = which & replayable()
    # Due now (the scheduler fires them on its next tick); the rows are locked from
    # here to the commit, so the transition below moves these very rows.
    await session.execute(update(Message).where(chosen).values(due_at=func.now()))
    return await transition_where(session, topics, chosen, MessageStatus.SCHEDULED, error=error)
