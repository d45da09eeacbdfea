"""Mailings: create, read with counts, replace, delete; messages; the forecast."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select

from services.api import outlook
from services.api.buckets import BUCKET_OF, BUCKETS, UNDELIVERED
from services.api.errors import Conflict, NotFound
from services.api.schemas import (
    FailureReason,
    ForecastItem,
    MailingIn,
    MailingOut,
    MessageOut,
    Preview,
)
from shared.events import MailingCreated, MailingData, MailingDeleted, MailingRef, MailingUpdated
from shared.logging import bind_entities, get_logger
from shared.models import (
    Mailing,
    MailingState,
    MailingStatusCount,
    Message,
    MessageStatus,
)
from shared.outbox import add_event

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.topics import Topics

log = get_logger(__name__)

TOP_FAILURE_REASONS = 5


def _data(mailing: Mailing) -> MailingData:
    return MailingData(
        id=mailing.id,
        version=mailing.version,
        start_at=mailing.start_at,
        stop_at=mailing.stop_at,
        text=mailing.text,
        filter_tags=list(mailing.filter_tags),
        filter_codes=list(mailing.filter_codes),
        window_start=mailing.window_start,
        window_end=mailing.window_end,
    )


def _out(mailing: Mailing, counts: dict[str, int]) -> MailingOut:
    buckets = {bucket: 0 for bucket in BUCKETS}
    for status, count in counts.items():
        if status in BUCKET_OF:
            buckets[BUCKET_OF[status]] += count
    return MailingOut(
        id=mailing.id,
        date_time_start=mailing.start_at,
        text=mailing.text,
        date_time_stop=mailing.stop_at,
        tag=list(mailing.filter_tags),
        mobile_code=list(mailing.filter_codes),
        time_interval_start=mailing.window_start,
        time_interval_end=mailing.window_end,
        number_of_messages=buckets,
        messages_by_status={status: count for status, count in counts.items() if count},
        state=mailing.state,
        version=mailing.version,
    )


async def _counts(session: AsyncSession, ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """The reporter's per-mailing counters: a primary-key read, whatever the mailing's
    size. They follow the messages within the reporter's lag (typically well under a
    second) and equal a COUNT ... GROUP BY over them at rest."""
    counts: dict[int, dict[str, int]] = {ident: {} for ident in ids}
    if not ids:
        return counts
    rows = await session.execute(
        select(
            MailingStatusCount.mailing_id, MailingStatusCount.status, MailingStatusCount.count
        ).where(MailingStatusCount.mailing_id.in_(list(ids)))
    )
    for mailing_id, status, count in rows:
        counts[mailing_id][status] = count
    return counts


async def lock_mailing(session: AsyncSession, mailing_id: int) -> Mailing:
    """The mailing row, locked until the transaction ends; 404 if there is none."""
    return await _mailing(session, mailing_id, lock=True)


async def _mailing(session: AsyncSession, mailing_id: int, *, lock: bool = False) -> Mailing:
    query = select(Mailing).where(Mailing.id == mailing_id)
    if lock:
        query = query.with_for_update()
    mailing = await session.scalar(query)
    if mailing is None:
        raise NotFound("mailing", mailing_id)
    return mailing


def _apply(mailing: Mailing, body: MailingIn) -> None:
    mailing.start_at = body.date_time_start
    mailing.stop_at = body.date_time_stop
    mailing.text = body.text
    mailing.filter_tags = body.tag
    mailing.filter_codes = body.mobile_code
    mailing.window_start = body.time_interval_start
    mailing.window_end = body.time_interval_end


async def create_mailing(session: AsyncSession, topics: Topics, body: MailingIn) -> MailingOut:
    mailing = Mailing(version=1, state=MailingState.SCHEDULED)
    _apply(mailing, body)
    session.add(mailing)
    await session.flush()
    await session.refresh(mailing)
    bind_entities(mailing_id=mailing.id)
    add_event(session, topics.mailing_events, MailingCreated(payload=_data(mailing)))
    log.info("mailing_created", start_at=str(mailing.start_at), stop_at=str(mailing.stop_at))
    return _out(mailing, {})


async def get_mailing(session: AsyncSession, mailing_id: int) -> MailingOut:
    mailing = await _mailing(session, mailing_id)
    out = _out(mailing, (await _counts(session, [mailing_id]))[mailing_id])
    out.failure_reasons = await failure_reasons(session, mailing_id)
    return out


async def failure_reasons(
    session: AsyncSession, mailing_id: int, top: int = TOP_FAILURE_REASONS
) -> list[FailureReason]:
    """The `top` most frequent `last_error`s of the mailing's failed messages (from the
    (mailing_id, status) index: as cheap as the failures are few)."""
    n = func.count().label("n")
    rows = await session.execute(
        select(func.coalesce(Message.last_error, "(no reason)"), n)
        .where(Message.mailing_id == mailing_id, Message.status == MessageStatus.FAILED)
        .group_by(Message.last_error)
        .order_by(n.desc(), Message.last_error)
        .limit(top)
    )
    return [FailureReason(reason=reason, count=count) for reason, count in rows]


async def list_mailings(
    session: AsyncSession, limit: int, offset: int
) -> tuple[int, list[MailingOut]]:
    count = await session.scalar(select(func.count()).select_from(Mailing)) or 0
    mailings = list(
        await session.scalars(select(Mailing).order_by(Mailing.id).limit(limit).offset(offset))
    )
    counts = await _counts(session, [m.id for m in mailings])
    return count, [_out(m, counts[m.id]) for m in mailings]


async def replace_mailing(
    session: AsyncSession, topics: Topics, mailing_id: int, body: MailingIn
) -> MailingOut:
    """A new version; the scheduler re-plans pending messages (docs/architecture.md, rule 6)."""
    mailing = await _mailing(session, mailing_id, lock=True)
    bind_entities(mailing_id=mailing_id)
    if mailing.state == MailingState.CANCELLED:
        raise Conflict("state", "a cancelled mailing cannot be edited: it never sends again")
    _apply(mailing, body)
    mailing.version += 1
    mailing.updated_at = func.now()
    await session.flush()
    await session.refresh(mailing)
    add_event(session, topics.mailing_events, MailingUpdated(payload=_data(mailing)))
    log.info("mailing_updated", version=mailing.version)
    return _out(mailing, (await _counts(session, [mailing_id]))[mailing_id])


async def delete_mailing(session: AsyncSession, topics: Topics, mailing_id: int) -> None:
    """The mailing and its messages go; a message not yet claimed is never sent."""
    mailing = await _mailing(session, mailing_id, lock=True)
    bind_entities(mailing_id=mailing_id)
    version = mailing.version
    await session.execute(delete(Mailing).where(Mailing.id == mailing_id))
    add_event(
        session,
        topics.mailing_events,
        MailingDeleted(payload=MailingRef(id=mailing_id, version=version)),
    )
    log.info("mailing_deleted")


async def list_messages(
    session: AsyncSession, mailing_id: int, limit: int, offset: int, statuses: Sequence[str]
) -> tuple[int, list[MessageOut]]:
    await _mailing(session, mailing_id)
    condition = Message.mailing_id == mailing_id
    if statuses:
        condition = condition & Message.status.in_(list(statuses))
    # The total from the reporter's counters, not a count over the messages.
    total = select(func.coalesce(func.sum(MailingStatusCount.count), 0)).where(
        MailingStatusCount.mailing_id == mailing_id
    )
    if statuses:
        total = total.where(MailingStatusCount.status.in_(list(statuses)))
    count = int(await session.scalar(total) or 0)
    messages = await session.scalars(
        select(Message).where(condition).order_by(Message.id).limit(limit).offset(offset)
    )
    return count, [
        MessageOut(
            id=m.id,
            pub_date=m.sent_at or m.created_at,
            status=BUCKET_OF.get(m.status, UNDELIVERED),
            notification=m.mailing_id,
            clients=[m.client_id],
            state=m.status,
            attempts=m.attempts,
            due_at=m.due_at,
            sent_at=m.sent_at,
            last_error=m.last_error,
        )
        for m in messages
    ]


async def forecast(
    session: AsyncSession, mailing_id: int, limit: int, offset: int, now: datetime | None = None
) -> tuple[int, list[ForecastItem], dict[str, int]]:
    """Planned send time per client, by the scheduler's own window algebra.

    Before activation: every client matching the filter now. After: the clients with a
    pending message. `by_hour` covers all of them, not only the page; it is computed per
    time zone (services/api/outlook.py), never by loading the clients.
    """
    mailing = await _mailing(session, mailing_id)
    return await outlook.forecast(session, mailing, limit, offset, now or datetime.now(UTC))


async def preview(session: AsyncSession, body: MailingIn) -> Preview:
    """What creating `body` now would reach, and when; creates nothing."""
    return await outlook.preview(session, body)
