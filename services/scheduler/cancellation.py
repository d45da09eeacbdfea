"""Cancellation: every pending message of a cancelled mailing becomes `cancelled`.

As expiry does it (`expiry.py`): by message-id ranges, one transaction and one
aggregated status event per range, rows locked by a dispatcher's claim left for the
next pass. It runs when the `mailing.state_changed` event arrives and on the
scheduler's slow tick, so a message that comes back from the dispatcher afterwards (a
request in flight at the cancel that ends `retrying`, say) is cancelled too.
"""

from __future__ import annotations

from sqlalchemy import exists, select

from services.scheduler.work import WAITING, Work, move_waiting
from shared.logging import get_logger
from shared.models import Mailing, MailingState, Message, MessageStatus
from shared.statuses import MAILING_CANCELLED

log = get_logger(__name__)


async def cancel_pending(work: Work, mailing_id: int | None = None) -> int:
    """Cancel the waiting messages of cancelled mailings (of `mailing_id` alone if
    given); return how many. Restartable: a cancelled message is no longer waiting."""
    count = 0
    async with work.sessions() as session:
        query = select(Mailing.id).where(
            Mailing.state == MailingState.CANCELLED,
            exists().where(Message.mailing_id == Mailing.id, Message.status.in_(WAITING)),
        )
        if mailing_id is not None:
            query = query.where(Mailing.id == mailing_id)
        cancelled = list(await session.scalars(query.order_by(Mailing.id)))
        for ident in cancelled:
            count += await move_waiting(
                work,
                session,
                ident,
                None,
                MessageStatus.CANCELLED,
                error=MAILING_CANCELLED,
                lease_until=None,
            )
    if count:
        log.info("messages_cancelled", count=count, mailings=len(cancelled))
    return count
