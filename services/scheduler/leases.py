"""Lease recovery: messages stuck in `sending` past their lease.

The dispatcher died mid-request (or cannot reach PostgreSQL to record the outcome), and
the request may have reached the gateway. With a gateway that de-duplicates by message
id the message is fired again with the same id (`scheduled`, due in half a lease); with
`PROVIDER_DEDUPLICATES=false` a re-send could deliver it twice, so it becomes `failed`
("unknown outcome: lease expired") with a DLQ record for an operator, as the dispatcher
does with an ambiguous answer. Either way `attempts` is kept: an outcome of that attempt
that arrives late is still written (the dispatcher fences on it) and corrects this guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func

from services.scheduler.work import Work, claim
from shared.events import SendData, SendMessage
from shared.logging import get_logger
from shared.models import Message, MessageStatus
from shared.outbox import add_events
from shared.statuses import LEASE_UNKNOWN, changes_of, stage_status_events

log = get_logger(__name__)

LEASE_EXPIRED = "lease expired: dispatcher stopped mid-request"


@dataclass(frozen=True)
class Recovery:
    """What becomes of a message whose sending lease expired."""

    status: MessageStatus
    error: str  # written to the row's last_error
    reason: str  # the status event's error
    due_in: timedelta | None  # fired again this long from now; None: not fired again
    dlq: bool  # a DLQ record for an operator


def recovery(*, provider_deduplicates: bool, sending_lease_s: float) -> Recovery:
    if provider_deduplicates:
        # Fired again after a further half lease: a dispatcher that is slow rather than
        # dead still writes its outcome meanwhile (its writes fence on `attempts`, which
        # a new claim would bump).
        return Recovery(
            status=MessageStatus.SCHEDULED,
            error=LEASE_EXPIRED,
            reason="lease expired",
            due_in=timedelta(seconds=sending_lease_s / 2),
            dlq=False,
        )
    return Recovery(
        status=MessageStatus.FAILED,
        error=LEASE_UNKNOWN,
        reason=LEASE_UNKNOWN,
        due_in=None,
        dlq=True,
    )


async def recover_stuck(work: Work) -> int:
    """Recover a batch of messages in `sending` past their lease; return how many."""
    rule = recovery(
        provider_deduplicates=work.settings.provider_deduplicates,
        sending_lease_s=work.settings.sending_lease_s,
    )
    async with work.sessions() as session, session.begin():
        extra: dict[str, Any] = {} if rule.due_in is None else {"due_at": func.now() + rule.due_in}
        rows = await claim(
            work,
            session,
            and_(Message.status == MessageStatus.SENDING, Message.lease_until < func.now()),
            status=rule.status,
            lease_until=None,
            last_error=rule.error,
            **extra,
        )
        await stage_status_events(
            session,
            work.topics,
            changes_of(rows, previous=MessageStatus.SENDING),
            rule.status,
            error=rule.reason,
        )
        if rule.dlq and rows:
            await add_events(
                session,
                work.topics.message_send_dlq,
                [
                    SendMessage(
                        payload=SendData(
                            message_id=row.id,
                            mailing_id=row.mailing_id,
                            client_id=row.client_id,
                            attempt=row.attempts,
                            last_error=rule.error,
                        )
                    )
                    for row in rows
                ],
            )
    if rows:
        log.warning("messages_recovered", count=len(rows), status=rule.status.value)
        work.on_commit()
    return len(rows)
