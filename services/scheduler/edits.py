"""Edits: a mailing or a client changed, so its pending messages are planned anew.

A mailing edit re-plans the mailing from its row, the truth (`convergence`), so a
replayed or reordered event does the same thing; it waits for another scheduler
working on the same mailing. A client's time zone change re-plans its scheduled
messages (`expired` when its new zone leaves no allowed time before the stop).
"""

from __future__ import annotations

from sqlalchemy import func, select, update

from services.scheduler.convergence import converge, mailing_lock
from services.scheduler.planning import due_by_zone
from services.scheduler.work import Work, now
from shared.logging import bind_entities, clear_context, get_logger
from shared.models import Client, Mailing, MailingState, Message, MessageStatus
from shared.statuses import StatusChange, stage_status_events
from shared.windows import NO_ALLOWED_TIME_BEFORE_STOP as NO_TIME

log = get_logger(__name__)


async def apply_edit(work: Work, mailing_id: int) -> None:
    """Re-plan a running mailing after an update, from the row (the truth), so a
    replayed or reordered event does the same thing (`converge`)."""
    # Waits while another scheduler activates or edits this mailing.
    async with (
        mailing_lock(work, mailing_id, wait=True),
        work.sessions() as session,
    ):
        mailing = await session.get(Mailing, mailing_id)
        if mailing is None or mailing.state in (MailingState.SCHEDULED, MailingState.CANCELLED):
            # Deleted, or not active yet (activation uses the new version), or
            # cancelled (never sends again; the API refuses its edits).
            return
        bind_entities(mailing_id=mailing_id)
        moment = now()
        if mailing.state == MailingState.FINISHED and moment < mailing.stop_at:
            mailing.state = MailingState.RUNNING
            await session.commit()
        done = await converge(work, session, mailing, now=moment)
        log.info(
            "mailing_replanned",
            version=mailing.version,
            cancelled=done.cancelled,
            replanned=done.replanned,
            added=done.added,
            superseded=done.superseded,
        )
        clear_context()
    work.on_commit()
    work.wake()


async def replan_client(work: Work, client_id: int) -> None:
    """A client's time zone changed: re-plan its scheduled messages."""
    async with work.sessions() as session, session.begin():
        rows = (
            await session.execute(
                select(Message.id, Mailing, Client.timezone)
                .join(Mailing, Mailing.id == Message.mailing_id)
                .join(Client, Client.id == Message.client_id)
                .where(
                    Message.client_id == client_id,
                    Message.status == MessageStatus.SCHEDULED,
                )
                .with_for_update(of=Message)
            )
        ).all()
        moment = now()
        expired = []
        for message_id, mailing, zone_name in rows:
            _, [due] = due_by_zone(mailing, [zone_name], moment)
            changed = await session.execute(
                update(Message)
                .where(Message.id == message_id, Message.status == MessageStatus.SCHEDULED)
                .values(
                    due_at=due,
                    status=MessageStatus.SCHEDULED if due else MessageStatus.EXPIRED,
                    last_error=None if due else NO_TIME,
                    updated_at=func.now(),
                )
                .returning(Message.attempts)
            )
            attempts = changed.scalar_one_or_none()
            if due is None and attempts is not None:
                expired.append(
                    StatusChange(
                        message_id=message_id,
                        mailing_id=mailing.id,
                        client_id=client_id,
                        attempt=attempts,
                        previous=MessageStatus.SCHEDULED.value,
                    )
                )
        await stage_status_events(
            session, work.topics, expired, MessageStatus.EXPIRED, error=NO_TIME
        )
