"""Expiry: pending messages of mailings past their stop time expire, and the mailings
finish.

By message-id ranges, one transaction and one aggregated status event per range.
"""

from __future__ import annotations

from sqlalchemy import exists, func, select, update

from services.scheduler.work import WAITING, Work, move_waiting
from shared.logging import get_logger
from shared.models import Mailing, MailingState, Message, MessageStatus
from shared.statuses import STOP_REACHED

log = get_logger(__name__)


async def expire_past_stop(work: Work) -> int:
    """Pending messages (not in flight) of mailings past their stop time expire.

    A bounded step at a time: one message-id range (`scheduler_bulk_batch_size`) of
    one mailing per transaction, with one aggregated status event; messages locked
    by someone else are left for the next pass. Restartable as it goes: an expired
    message is no longer pending."""
    count = 0
    async with work.sessions() as session:
        stopped = list(
            await session.scalars(
                select(Mailing.id)
                .where(
                    Mailing.stop_at <= func.now(),
                    exists().where(Message.mailing_id == Mailing.id, Message.status.in_(WAITING)),
                )
                .order_by(Mailing.id)
            )
        )
        for mailing_id in stopped:
            count += await move_waiting(
                work,
                session,
                mailing_id,
                # Re-read each step: an edit may have moved the stop time.
                Message.mailing_id.in_(
                    select(Mailing.id).where(
                        Mailing.id == mailing_id, Mailing.stop_at <= func.now()
                    )
                ),
                MessageStatus.EXPIRED,
                error=STOP_REACHED,
            )
        await session.execute(
            update(Mailing)
            .where(
                Mailing.stop_at <= func.now(),
                # A paused mailing finishes at its stop time too; a cancelled one stays so.
                Mailing.state.not_in([MailingState.FINISHED, MailingState.CANCELLED]),
            )
            .values(state=MailingState.FINISHED, updated_at=func.now())
        )
        await session.commit()
    if count:
        log.info("messages_expired", count=count, mailings=len(stopped))
    return count
