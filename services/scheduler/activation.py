"""Activation: a mailing whose start has come gets its audience expanded into messages.

Set-based `INSERT ... SELECT ... ON CONFLICT DO NOTHING` in client-id batches
(`convergence`). The mailing row is the truth: if it is edited while its audience is
being expanded, the messages made so far are brought to the new version before the
mailing becomes `running`. One scheduler activates a mailing at a time (its advisory
lock); another that finds the lock taken moves on.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select, update

from services.scheduler.convergence import Converged, converge, mailing_lock
from services.scheduler.work import Work, now
from shared.logging import bind_entities, clear_context, get_logger
from shared.models import Mailing, MailingState

log = get_logger(__name__)


async def activate_due_mailings(work: Work) -> int:
    """Activate every scheduled mailing whose start has come; return how many."""
    async with work.sessions() as session:
        ids = list(
            await session.scalars(
                select(Mailing.id)
                .where(Mailing.state == MailingState.SCHEDULED, Mailing.start_at <= func.now())
                .order_by(Mailing.start_at)
                .limit(20)
            )
        )
    activated = 0
    for mailing_id in ids:
        activated += await activate(work, mailing_id)
    return activated


async def activate(work: Work, mailing_id: int) -> int:
    """Expand one mailing's audience into messages; 1 if this call activated it.

    The mailing row is the truth: if it changes (an edit) while the audience is being
    expanded, the messages made so far are brought to the new version (clients that
    no longer match cancelled, the others re-planned) and the new audience expanded
    before the mailing becomes `running`, at its new version."""
    async with mailing_lock(work, mailing_id, wait=False) as locked:
        if not locked:
            return 0  # another scheduler is on it
        started = asyncio.get_running_loop().time()
        done = Converged()
        async with work.sessions() as session:
            while True:
                mailing = await session.get(Mailing, mailing_id, populate_existing=True)
                if mailing is None or mailing.state != MailingState.SCHEDULED:
                    return 0
                bind_entities(mailing_id=mailing_id)
                done += await converge(work, session, mailing, now=now())
                running = await session.scalar(
                    update(Mailing)
                    .where(
                        Mailing.id == mailing_id,
                        Mailing.version == mailing.version,
                        Mailing.state == MailingState.SCHEDULED,
                    )
                    .values(
                        state=MailingState.RUNNING,
                        activated_at=func.now(),
                        updated_at=func.now(),
                    )
                    .returning(Mailing.id)
                )
                await session.commit()
                if running is not None:
                    break
                # Edited meanwhile: bring what was made so far to the new version.
                log.info("mailing_changed_during_activation", version=mailing.version)
        log.info(
            "mailing_activated",
            messages=done.added,
            cancelled=done.cancelled,
            replanned=done.replanned,
            version=mailing.version,
            seconds=round(asyncio.get_running_loop().time() - started, 3),
        )
        clear_context()
        work.wake()
        return 1
