"""Firing: due messages are claimed and their send commands published.

Due messages are claimed with `FOR UPDATE SKIP LOCKED` and moved to `queued`; after
that commits, their `SendMessage` commands are published (a command must never reach a
dispatcher before the row it names is `queued`). If publishing fails, the batch goes
back to `scheduled` (compare-and-set) and is fired again; a crash between the commit
and the publish is covered by re-publishing long-`queued` messages (`requeue_stale`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select, text, update

from services.scheduler.commands import publish_send_commands
from services.scheduler.work import Work, claim
from shared.logging import get_logger
from shared.metrics import MESSAGES_FIRED
from shared.models import HALTED_STATES, Mailing, Message, MessageStatus
from shared.statuses import changes_of, stage_status_events, transition_where

if TYPE_CHECKING:
    from collections.abc import Sequence

log = get_logger(__name__)


async def room(work: Work) -> int:
    """How many messages to fire now: a batch, or fewer when the dispatchers have not
    yet taken what was fired (`scheduler_max_queued` messages `queued`, counted up to
    that many from the waiting-for-dispatch index): the scheduler fires at the pace
    they drain."""
    batch = work.settings.scheduler_batch_size
    most = work.settings.scheduler_max_queued
    if not most:
        return batch
    async with work.sessions() as session:
        queued = await session.scalar(
            select(func.count()).select_from(
                select(Message.id)
                .where(Message.status == MessageStatus.QUEUED)
                .limit(most)
                .subquery()
            )
        )
    return min(batch, most - int(queued or 0))


# The firing statement walks `ix_message_due_scheduled` in due order and stops after a
# batch, whatever the table's statistics say. Right after a big audience is expanded
# they are stale (autovacuum's ANALYZE comes up to a minute later): PostgreSQL then
# expects a few hundred due rows, and chose to read every due row (a million) and sort
# them on disk for each batch, 300 ms per 500 messages, until the ANALYZE came. Sorting
# is what the index makes unnecessary, so it is switched off for this transaction.
INDEX_ORDER = text("SELECT set_config('enable_sort', 'off', true)")


def due_claim(limit: int) -> Any:
    """Move up to `limit` due messages (earliest first, skipping locked ones, none of a
    paused or cancelled mailing) to `queued`; returns what the send commands need."""
    due = (
        select(Message.id)
        .where(
            Message.status == MessageStatus.SCHEDULED,
            Message.due_at <= func.now(),
            # Paused or cancelled by an operator: none of its messages is fired.
            Message.mailing_id.not_in(select(Mailing.id).where(Mailing.state.in_(HALTED_STATES))),
        )
        .order_by(Message.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    return (
        update(Message)
        .where(Message.id == due.c.id)
        .values(status=MessageStatus.QUEUED, updated_at=func.now())
        .returning(Message.id, Message.mailing_id, Message.client_id, Message.attempts)
    )


async def fire_due(work: Work, limit: int | None = None) -> int:
    """Claim due messages (a batch, or `limit`), commit the claim, then publish their
    send commands."""
    async with work.sessions() as session, session.begin():
        await session.execute(INDEX_ORDER)
        rows = (await session.execute(due_claim(limit or work.settings.scheduler_batch_size))).all()
        if not rows:
            return 0
        await stage_status_events(
            session,
            work.topics,
            changes_of(rows, previous=MessageStatus.SCHEDULED),
            MessageStatus.QUEUED,
        )
    work.on_commit()
    try:
        await publish_sends(work, rows)
    except Exception as exc:
        log.warning("send_commands_not_published", count=len(rows), error=repr(exc))
        await unqueue(work, [row[0] for row in rows])
        raise
    MESSAGES_FIRED.inc(len(rows))
    return len(rows)


async def unqueue(work: Work, ids: list[int]) -> None:
    """Put messages whose commands could not be published back to `scheduled`."""
    async with work.sessions() as session, session.begin():
        await transition_where(
            session,
            work.topics,
            and_(Message.id.in_(ids), Message.status == MessageStatus.QUEUED),
            MessageStatus.SCHEDULED,
            error="send command not published; will retry",
        )


async def publish_sends(work: Work, rows: Sequence[Any]) -> None:
    await publish_send_commands(
        work.broker, work.topics.message_send, rows, event="send_command_published"
    )


async def requeue_stale(work: Work) -> int:
    """Safety net: a message `queued` for long has its command published again.

    Commands are published right after the claim commits; this covers a crash in
    between. A duplicate command is harmless (the dispatcher's claim is a
    compare-and-set)."""
    stale = func.now() - timedelta(seconds=work.settings.requeue_after_s)
    async with work.sessions() as session, session.begin():
        rows = await claim(
            work, session, and_(Message.status == MessageStatus.QUEUED, Message.updated_at < stale)
        )
    if rows:
        await publish_sends(work, rows)
        log.warning("queued_messages_republished", count=len(rows))
    return len(rows)


async def backlog(work: Work) -> int:
    async with work.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.status == MessageStatus.SCHEDULED, Message.due_at <= func.now())
        )
    return int(count or 0)
