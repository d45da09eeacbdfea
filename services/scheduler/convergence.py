"""Bringing a mailing's messages to its row, the truth: shared by activation and edits.

`converge` works by message-id ranges, a bounded step at a time: waiting messages of
clients that no longer match are cancelled, waiting and retryable ones of an older
version re-planned, then matching clients without a message get one. Work on one
mailing holds that mailing's advisory lock (`mailing_lock`), so two schedulers never
converge the same mailing at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Integer,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, insert

from services.scheduler.planning import due_by_zone
from services.scheduler.work import WAITING, Work
from shared.audience import NO_LONGER_MATCHES, Audience, resolve_audience
from shared.events import MessagesCreated, MessagesCreatedData
from shared.models import Client, Mailing, Message, MessageStatus
from shared.outbox import add_events
from shared.statuses import Changes, Moved, move_batch, plan_each_batch, stage_changes, total
from shared.windows import NO_ALLOWED_TIME_BEFORE_STOP as NO_TIME

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession

# Advisory-lock namespace for per-mailing work (activation, edits).
MAILING_LOCK = 0x6D61696C  # "mail"
# Did not receive the mailing: an edit gives these a new chance.
RETRYABLE = (MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.CANCELLED)


def _plan(names: list[str], dues: list[datetime | None]) -> Any:
    """(zone, due) rows for SQL to join onto clients by time zone."""
    return select(
        func.unnest(bindparam("zones", names, type_=ARRAY(Client.timezone.type))).label("zone"),
        func.unnest(bindparam("dues", dues, type_=ARRAY(TIMESTAMP(timezone=True)))).label("due"),
    ).subquery("plan")


@dataclass
class Plans:
    """Due times by time zone for one mailing version at one moment, computed per zone
    as batches of clients meet it: no pass over the whole audience before the first
    batch, and one `due_time` call per zone for the whole mailing."""

    mailing: Mailing
    now: datetime
    dues: dict[str, datetime | None] = field(default_factory=dict)

    async def plan(self, session: AsyncSession, match: ColumnElement[bool]) -> Any:
        """The (zone, due) rows for the zones of the clients meeting `match` (a batch's
        condition); None when no client does."""
        zones = list(await session.scalars(select(Client.timezone).where(match).distinct()))
        if not zones:
            return None
        new = [name for name in zones if name not in self.dues]
        if new:
            self.dues.update(zip(*due_by_zone(self.mailing, new, self.now), strict=True))
        return _plan(zones, [self.dues[name] for name in zones])


@dataclass
class Converged:
    """What bringing a mailing's messages to its row did (`converge`)."""

    cancelled: int = 0
    replanned: int = 0
    added: int = 0
    superseded: bool = False  # the mailing changed meanwhile; stopped early

    def __iadd__(self, other: Converged) -> Converged:
        self.cancelled += other.cancelled
        self.replanned += other.replanned
        self.added += other.added
        self.superseded = other.superseded
        return self


@asynccontextmanager
async def mailing_lock(work: Work, mailing_id: int, *, wait: bool) -> AsyncIterator[bool]:
    """Hold this mailing's advisory lock while the block runs (its own transaction on
    its own connection, so the work's commits do not release it)."""
    key = mailing_id & 0x7FFFFFFF
    async with work.sessions() as lock_session, lock_session.begin():
        if wait:
            await lock_session.execute(select(func.pg_advisory_xact_lock(MAILING_LOCK, key)))
            yield True
        else:
            yield bool(
                await lock_session.scalar(select(func.pg_try_advisory_xact_lock(MAILING_LOCK, key)))
            )


async def converge(
    work: Work, session: AsyncSession, mailing: Mailing, *, now: datetime
) -> Converged:
    """Bring the mailing's messages to its row (the truth), a bounded step at a time.

    By message-id ranges of `scheduler_bulk_batch_size`: waiting messages of clients
    that no longer match are `cancelled`; waiting and retryable (`failed`, `expired`,
    `cancelled`) messages of an older version whose client matches are re-planned
    (`scheduled` at a new due time, or `expired` without one). Then matching clients
    without a message get one (`_expand`). Each step is a transaction with one
    aggregated status event; a message done carries the mailing's version, so a
    crash mid-way resumes where it stopped and a replay changes nothing. Stops early
    when the mailing changes meanwhile: the caller (or the next edit) starts over
    from the new row."""
    done = Converged()
    audience = await resolve_audience(session, mailing.filter_tags, mailing.filter_codes)
    plans = Plans(mailing, now)
    low, high, _ = (
        await session.execute(
            # With the count, from the (mailing, status) index: not a walk of the
            # primary key from its start until this mailing's first message.
            select(func.min(Message.id), func.max(Message.id), func.count()).where(
                Message.mailing_id == mailing.id,
                Message.status.in_([*WAITING, *RETRYABLE]),
            )
        )
    ).one()
    await session.commit()
    step = work.settings.scheduler_bulk_batch_size
    for first in range(low, high + 1, step) if low is not None else ():
        if not await hold_version(session, mailing):
            done.superseded = True
            return done
        await plan_each_batch(session)
        in_range = and_(
            Message.mailing_id == mailing.id, Message.id >= first, Message.id < first + step
        )
        # The range's clients, as an id range too: the statements below then read
        # the clients of this batch, not the whole audience. (The count keeps the
        # planner from walking the (mailing, client) index for the min and max.)
        first_client, last_client, count = (
            await session.execute(
                select(
                    func.min(Message.client_id), func.max(Message.client_id), func.count()
                ).where(in_range)
            )
        ).one()
        if not count:
            continue
        of_range = audience.condition((first_client, last_client))
        changes = await move_batch(
            session,
            in_range,
            and_(
                Message.status.in_(WAITING),
                ~exists(select(Client.id).where(Client.id == Message.client_id, of_range)),
            ),
            MessageStatus.CANCELLED,
            error=NO_LONGER_MATCHES,
            mailing_version=mailing.version,
        )
        done.cancelled += total(changes)
        plan = await plans.plan(session, of_range)
        if plan is not None:
            replanned = await _replan(session, mailing, of_range, plan, in_range)
            done.replanned += total(replanned)
            changes.update(replanned)
        staged = await stage_changes(session, work.topics, changes)
        await session.commit()
        if staged:
            work.on_commit()
    added = await _expand(work, session, mailing, audience, plans)
    done.added += added.added
    done.superseded = added.superseded
    return done


async def hold_version(session: AsyncSession, mailing: Mailing) -> bool:
    """Whether the mailing row still has the version being worked on; a key-share lock
    on the row until the step commits, so the row is not deleted while the step writes
    messages naming it (a deletion waits, then deletes them with it: migration 0008).

    `FOR KEY SHARE` (`read=True`; `key_share=True` alone is `FOR NO KEY UPDATE`): it
    conflicts with a deletion and with the API's `FOR UPDATE` (edit, pause, resume,
    cancel: each lands between two steps, and the next step sees an edit's version),
    not with the dispatchers' `FOR SHARE` of a claim, so the messages fired so far are
    claimed while the rest of the audience is expanded."""
    version = await session.scalar(
        select(Mailing.version)
        .where(Mailing.id == mailing.id)
        .with_for_update(read=True, key_share=True)
    )
    return version == mailing.version


async def _replan(
    session: AsyncSession,
    mailing: Mailing,
    match: ColumnElement[bool],
    plan: Any,
    in_range: ColumnElement[bool],
) -> Changes:
    """Waiting and retryable messages in `in_range` of matching clients, of an older
    version: a new due time from their zone's plan (`expired` when there is none)."""
    old = (
        select(Message.id, Message.status, plan.c.due)
        .join(Client, Client.id == Message.client_id)
        .join(plan, plan.c.zone == Client.timezone)
        .where(
            in_range,
            Message.status.in_([*WAITING, *RETRYABLE]),
            Message.mailing_version < mailing.version,
            match,
        )
        .order_by(Message.id)
        .with_for_update(of=Message)
        .cte("old")
    )
    no_time = old.c.due.is_(None)
    changed = (
        update(Message)
        # The range again: the update then reads the batch's rows, not the table.
        .where(Message.id == old.c.id, in_range)
        .values(
            status=case(
                (no_time, MessageStatus.EXPIRED.value), else_=MessageStatus.SCHEDULED.value
            ),
            due_at=old.c.due,
            mailing_version=mailing.version,
            last_error=case((no_time, NO_TIME), else_=null()),
            updated_at=func.now(),
        )
        .returning(old.c.status.label("previous"), Message.status)
        .cte("changed")
    )
    counted = await session.execute(
        select(changed.c.previous, changed.c.status, func.count()).group_by(
            changed.c.previous, changed.c.status
        )
    )
    return Counter(
        {
            Moved(
                mailing_id=mailing.id,
                previous=previous,
                status=status,
                error=NO_TIME if status == MessageStatus.EXPIRED else None,
            ): n
            for previous, status, n in counted
        }
    )


async def _expand(
    work: Work, session: AsyncSession, mailing: Mailing, audience: Audience, plans: Plans
) -> Converged:
    """Insert one message per matching client without one, in client-id batches,
    committing each (with its `messages.created` event) and waking the loop to fire
    what it made; stops when the mailing changes meanwhile.

    The first batch is small and each next one twice as wide, up to
    `expansion_batch_size` client ids: the first messages are due within moments of
    the start, the rest in few statements. A batch whose client range holds none of
    the mailing's messages yet (a first activation) is a plain `INSERT ... SELECT`:
    no other writer adds this mailing's messages (its advisory lock is held), and
    `ON CONFLICT` would cost a pre-check and a WAL record more per row. Any other
    (a resumed or edited activation) skips the clients that have one.

    At most `expansion_max_rate` messages are made per second (0: no limit): an
    audience of a million is spread over seconds the dispatchers need anyway (they
    deliver a few thousand a second), instead of taking the CPU of PostgreSQL and the
    machine from the first messages' delivery."""
    done = Converged()
    low, high = (await session.execute(select(func.min(Client.id), func.max(Client.id)))).one()
    if low is None:
        return done
    rate = work.settings.expansion_max_rate
    started = time.monotonic()
    step = min(work.settings.expansion_first_batch_size, work.settings.expansion_batch_size)
    first = low
    while first <= high:
        last = first + step - 1
        step = min(step * 2, work.settings.expansion_batch_size)
        if not await hold_version(session, mailing):
            done.superseded = True
            break
        counts = await _expand_batch(session, mailing, audience, plans, (first, last))
        first = last + 1
        if counts:
            # The reporter's counters learn of bulk-created rows from this one event,
            # committed with the rows.
            await add_events(
                session,
                work.topics.message_status,
                [
                    MessagesCreated(
                        payload=MessagesCreatedData(mailing_id=mailing.id, counts=counts)
                    )
                ],
            )
        await session.commit()
        if counts:
            done.added += sum(counts.values())
            work.on_commit()
            work.wake()  # fire what is due now, while the rest is expanded
        if rate and first <= high:
            await asyncio.sleep(max(0.0, done.added / rate - (time.monotonic() - started)))
    return done


async def _expand_batch(
    session: AsyncSession,
    mailing: Mailing,
    audience: Audience,
    plans: Plans,
    clients: tuple[int, int],
) -> dict[str, int]:
    """Insert the messages of one client-id range; their count by initial status."""
    match = audience.condition(clients)
    plan = await plans.plan(session, match)
    if plan is None:
        return {}
    has_some = await session.scalar(
        select(
            exists().where(Message.mailing_id == mailing.id, Message.client_id.between(*clients))
        )
    )
    inserted: Any = insert(Message).from_select(
        ["mailing_id", "client_id", "status", "due_at", "mailing_version", "last_error"],
        select(
            literal(mailing.id),
            Client.id,
            case(
                (plan.c.due.is_(None), MessageStatus.EXPIRED.value),
                else_=MessageStatus.SCHEDULED.value,
            ),
            plan.c.due,
            literal(mailing.version, Integer),
            case((plan.c.due.is_(None), NO_TIME), else_=null()),
        )
        .join(plan, plan.c.zone == Client.timezone)
        .where(match),
    )
    if has_some:
        inserted = inserted.on_conflict_do_nothing(index_elements=["mailing_id", "client_id"])
    made = inserted.returning(Message.status).cte("inserted")
    return {
        status: count
        for status, count in await session.execute(
            select(made.c.status, func.count()).group_by(made.c.status)
        )
    }
