"""The scheduler's work, all of it on PostgreSQL (the timer store).

- activate: a mailing whose start has come gets its audience expanded into messages
  with set-based `INSERT ... SELECT ... ON CONFLICT DO NOTHING` in client-id batches;
- fire: due messages are claimed with `FOR UPDATE SKIP LOCKED` and moved to `queued`;
  after that commits, their `SendMessage` commands are published (a command must never
  reach a dispatcher before the row it names is `queued`). If publishing fails, the
  batch goes back to `scheduled` (compare-and-set) and is fired again; a crash between
  the commit and the publish is covered by re-publishing long-`queued` messages;
- expire: pending messages of mailings past their stop time, by message-id ranges, one
  transaction and one aggregated status event per range;
- recover: messages stuck in `sending` past their lease go back to `retrying` and are
  fired again with the same message id (the gateway de-duplicates by it);
- edit: a new mailing version re-plans pending messages, cancels clients that no longer
  match, adds new ones and gives failed, expired and cancelled ones a new chance, by
  message-id ranges as expiry does; activation does the same when the mailing is edited
  while its audience is being expanded (`_converge`: the row is the truth).

Several scheduler processes may run: row claims skip locked rows, and work on one
mailing (activation, edit) holds that mailing's advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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

from services.scheduler.commands import publish_send_commands
from services.scheduler.planning import due_by_zone
from shared.audience import NO_LONGER_MATCHES, Audience, resolve_audience
from shared.events import MessagesCreated, MessagesCreatedData, SendData, SendMessage
from shared.logging import bind_entities, clear_context, get_logger
from shared.metrics import MESSAGES_FIRED, SCHEDULER_BACKLOG
from shared.models import (
    Client,
    Mailing,
    MailingState,
    Message,
    MessageStatus,
)
from shared.outbox import add_events
from shared.statuses import (
    LEASE_UNKNOWN,
    STOP_REACHED,
    Changes,
    Moved,
    StatusChange,
    changes_of,
    move_batch,
    plan_each_batch,
    stage_changes,
    stage_status_events,
    total,
    transition_where,
)
from shared.windows import NO_ALLOWED_TIME_BEFORE_STOP as NO_TIME

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from faststream.kafka import KafkaBroker
    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings
    from shared.topics import Topics

log = get_logger(__name__)

# Advisory-lock namespace for per-mailing work (activation, edits).
_MAILING_LOCK = 0x6D61696C  # "mail"
# Pending but not in flight: an edit may re-plan these.
_WAITING = (MessageStatus.SCHEDULED, MessageStatus.QUEUED, MessageStatus.RETRYING)
# Did not receive the mailing: an edit gives these a new chance.
_RETRYABLE = (MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.CANCELLED)


def _now() -> datetime:
    return datetime.now(UTC)


def _plan(names: list[str], dues: list[datetime | None]) -> Any:
    """(zone, due) rows for SQL to join onto clients by time zone."""
    return select(
        func.unnest(bindparam("zones", names, type_=ARRAY(Client.timezone.type))).label("zone"),
        func.unnest(bindparam("dues", dues, type_=ARRAY(TIMESTAMP(timezone=True)))).label("due"),
    ).subquery("plan")


@dataclass
class _Converged:
    """What bringing a mailing's messages to its row did (`Scheduler._converge`)."""

    cancelled: int = 0
    replanned: int = 0
    added: int = 0
    superseded: bool = False  # the mailing changed meanwhile; stopped early

    def __iadd__(self, other: _Converged) -> _Converged:
        self.cancelled += other.cancelled
        self.replanned += other.replanned
        self.added += other.added
        self.superseded = other.superseded
        return self


class Scheduler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: KafkaBroker,
        topics: Topics,
        settings: Settings,
        *,
        on_commit: Any = None,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        self.topics = topics
        self.settings = settings
        self._on_commit = on_commit or (lambda: None)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    # --- activation ------------------------------------------------------------------

    async def activate_due_mailings(self) -> int:
        """Activate every scheduled mailing whose start has come; return how many."""
        async with self.sessions() as session:
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
            activated += await self.activate(mailing_id)
        return activated

    async def activate(self, mailing_id: int) -> int:
        """Expand one mailing's audience into messages; 1 if this call activated it.

        The mailing row is the truth: if it changes (an edit) while the audience is being
        expanded, the messages made so far are brought to the new version (clients that
        no longer match cancelled, the others re-planned) and the new audience expanded
        before the mailing becomes `running`, at its new version."""
        async with self._mailing_lock(mailing_id, wait=False) as locked:
            if not locked:
                return 0  # another scheduler is on it
            started = asyncio.get_running_loop().time()
            done = _Converged()
            async with self.sessions() as session:
                while True:
                    mailing = await session.get(Mailing, mailing_id, populate_existing=True)
                    if mailing is None or mailing.state != MailingState.SCHEDULED:
                        return 0
                    bind_entities(mailing_id=mailing_id)
                    done += await self._converge(session, mailing, now=_now())
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
            self.wake()
            return 1

    @asynccontextmanager
    async def _mailing_lock(self, mailing_id: int, *, wait: bool) -> AsyncIterator[bool]:
        """Hold this mailing's advisory lock while the block runs (its own transaction on
        its own connection, so the work's commits do not release it)."""
        key = mailing_id & 0x7FFFFFFF
        async with self.sessions() as lock_session, lock_session.begin():
            if wait:
                await lock_session.execute(select(func.pg_advisory_xact_lock(_MAILING_LOCK, key)))
                yield True
            else:
                yield bool(
                    await lock_session.scalar(
                        select(func.pg_try_advisory_xact_lock(_MAILING_LOCK, key))
                    )
                )

    async def _converge(
        self, session: AsyncSession, mailing: Mailing, *, now: datetime
    ) -> _Converged:
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
        done = _Converged()
        audience = await resolve_audience(session, mailing.filter_tags, mailing.filter_codes)
        match = audience.condition()
        zones = list(await session.scalars(select(Client.timezone).where(match).distinct()))
        plan = _plan(*due_by_zone(mailing, zones, now)) if zones else None
        low, high, _ = (
            await session.execute(
                # With the count, from the (mailing, status) index: not a walk of the
                # primary key from its start until this mailing's first message.
                select(func.min(Message.id), func.max(Message.id), func.count()).where(
                    Message.mailing_id == mailing.id,
                    Message.status.in_([*_WAITING, *_RETRYABLE]),
                )
            )
        ).one()
        await session.commit()
        step = self.settings.scheduler_bulk_batch_size
        for first in range(low, high + 1, step) if low is not None else ():
            if not await self._current(session, mailing):
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
                    Message.status.in_(_WAITING),
                    ~exists(select(Client.id).where(Client.id == Message.client_id, of_range)),
                ),
                MessageStatus.CANCELLED,
                error=NO_LONGER_MATCHES,
                mailing_version=mailing.version,
            )
            done.cancelled += total(changes)
            if plan is not None:
                replanned = await self._replan(session, mailing, of_range, plan, in_range)
                done.replanned += total(replanned)
                changes.update(replanned)
            staged = await stage_changes(session, self.topics, changes)
            await session.commit()
            if staged:
                self._on_commit()
        if plan is not None:
            added = await self._expand(session, mailing, audience, plan)
            done.added += added.added
            done.superseded = added.superseded
        return done

    async def _current(self, session: AsyncSession, mailing: Mailing) -> bool:
        """Whether the mailing row still has the version being worked on."""
        version = await session.scalar(select(Mailing.version).where(Mailing.id == mailing.id))
        return version == mailing.version

    async def _replan(
        self,
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
                Message.status.in_([*_WAITING, *_RETRYABLE]),
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
        self, session: AsyncSession, mailing: Mailing, audience: Audience, plan: Any
    ) -> _Converged:
        """Insert one message per matching client without one, in client-id batches,
        committing each (with its `messages.created` event); stops when the mailing
        changes meanwhile."""
        done = _Converged()
        bounds = (
            await session.execute(
                select(func.min(Client.id), func.max(Client.id)).where(audience.condition())
            )
        ).one()
        low, high = bounds
        if low is None:
            return done
        step = self.settings.expansion_batch_size
        for first in range(low, high + 1, step):
            if not await self._current(session, mailing):
                done.superseded = True
                break
            inserted = (
                insert(Message)
                .from_select(
                    [
                        "mailing_id",
                        "client_id",
                        "status",
                        "due_at",
                        "mailing_version",
                        "last_error",
                    ],
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
                    .where(audience.condition((first, first + step - 1))),
                )
                .on_conflict_do_nothing(index_elements=["mailing_id", "client_id"])
                .returning(Message.status)
                .cte("inserted")
            )
            counts = {
                status: count
                for status, count in await session.execute(
                    select(inserted.c.status, func.count()).group_by(inserted.c.status)
                )
            }
            if counts:
                # The reporter's counters learn of bulk-created rows from this one event,
                # committed with the rows.
                await add_events(
                    session,
                    self.topics.message_status,
                    [
                        MessagesCreated(
                            payload=MessagesCreatedData(mailing_id=mailing.id, counts=counts)
                        )
                    ],
                )
            await session.commit()
            done.added += sum(counts.values())
        return done

    # --- firing due messages -----------------------------------------------------------

    async def fire_due(self) -> int:
        """Claim due messages, publish their send commands, then commit the claim."""
        async with self.sessions() as session, session.begin():
            due = (
                select(Message.id)
                .where(Message.status == MessageStatus.SCHEDULED, Message.due_at <= func.now())
                .order_by(Message.due_at)
                .limit(self.settings.scheduler_batch_size)
                .with_for_update(skip_locked=True)
                .cte("due")
            )
            rows = (
                await session.execute(
                    update(Message)
                    .where(Message.id == due.c.id)
                    .values(status=MessageStatus.QUEUED, updated_at=func.now())
                    .returning(Message.id, Message.mailing_id, Message.client_id, Message.attempts)
                )
            ).all()
            if not rows:
                return 0
            await stage_status_events(
                session,
                self.topics,
                changes_of(rows, previous=MessageStatus.SCHEDULED),
                MessageStatus.QUEUED,
            )
        self._on_commit()
        try:
            await self._publish_sends(rows)
        except Exception as exc:
            log.warning("send_commands_not_published", count=len(rows), error=repr(exc))
            await self._unqueue([row[0] for row in rows])
            raise
        MESSAGES_FIRED.inc(len(rows))
        return len(rows)

    async def _unqueue(self, ids: list[int]) -> None:
        """Put messages whose commands could not be published back to `scheduled`."""
        async with self.sessions() as session, session.begin():
            await transition_where(
                session,
                self.topics,
                and_(Message.id.in_(ids), Message.status == MessageStatus.QUEUED),
                MessageStatus.SCHEDULED,
                error="send command not published; will retry",
            )

    async def _publish_sends(self, rows: Sequence[Any]) -> None:
        await publish_send_commands(
            self.broker, self.topics.message_send, rows, event="send_command_published"
        )

    # --- expiry, lease recovery, finishing ---------------------------------------------

    async def expire_past_stop(self) -> int:
        """Pending messages (not in flight) of mailings past their stop time expire.

        A bounded step at a time: one message-id range (`scheduler_bulk_batch_size`) of
        one mailing per transaction, with one aggregated status event; messages locked
        by someone else are left for the next pass. Restartable as it goes: an expired
        message is no longer pending."""
        step = self.settings.scheduler_bulk_batch_size
        count = 0
        async with self.sessions() as session:
            stopped = list(
                await session.scalars(
                    select(Mailing.id)
                    .where(
                        Mailing.stop_at <= func.now(),
                        exists().where(
                            Message.mailing_id == Mailing.id, Message.status.in_(_WAITING)
                        ),
                    )
                    .order_by(Mailing.id)
                )
            )
            for mailing_id in stopped:
                low, high, _ = (
                    await session.execute(
                        select(func.min(Message.id), func.max(Message.id), func.count()).where(
                            Message.mailing_id == mailing_id, Message.status.in_(_WAITING)
                        )
                    )
                ).one()
                await session.commit()
                for first in range(low, high + 1, step) if low is not None else ():
                    await plan_each_batch(session)
                    changes = await move_batch(
                        session,
                        and_(
                            Message.mailing_id == mailing_id,
                            Message.id >= first,
                            Message.id < first + step,
                        ),
                        and_(
                            Message.status.in_(_WAITING),
                            # Re-read each step: an edit may have moved the stop time.
                            Message.mailing_id.in_(
                                select(Mailing.id).where(
                                    Mailing.id == mailing_id, Mailing.stop_at <= func.now()
                                )
                            ),
                        ),
                        MessageStatus.EXPIRED,
                        error=STOP_REACHED,
                        skip_locked=True,
                    )
                    await stage_changes(session, self.topics, changes)
                    await session.commit()
                    if changes:
                        count += total(changes)
                        self._on_commit()
            await session.execute(
                update(Mailing)
                .where(Mailing.stop_at <= func.now(), Mailing.state != MailingState.FINISHED)
                .values(state=MailingState.FINISHED, updated_at=func.now())
            )
            await session.commit()
        if count:
            log.info("messages_expired", count=count, mailings=len(stopped))
        return count

    async def _claim(self, session: AsyncSession, condition: Any, **values: Any) -> Sequence[Any]:
        """Lock up to a batch of messages matching `condition` (skipping locked ones),
        set `values`, and return (id, mailing_id, client_id, attempts) of each."""
        return (
            await session.execute(
                update(Message)
                .where(
                    Message.id.in_(
                        select(Message.id)
                        .where(condition)
                        .limit(self.settings.scheduler_batch_size)
                        .with_for_update(skip_locked=True)
                    )
                )
                .values(updated_at=func.now(), **values)
                .returning(Message.id, Message.mailing_id, Message.client_id, Message.attempts)
            )
        ).all()

    async def recover_stuck(self) -> int:
        """Messages in `sending` past their lease: the dispatcher died mid-request (or
        cannot reach PostgreSQL to record the outcome).

        The request may have reached the gateway. With a gateway that de-duplicates by
        message id the message is fired again (`scheduled`, due in half a lease); with
        `PROVIDER_DEDUPLICATES=false` a re-send could deliver it twice, so it becomes
        `failed` ("unknown outcome: lease expired") with a DLQ record for an operator,
        as the dispatcher does with an ambiguous answer. Either way `attempts` is kept:
        an outcome of that attempt that arrives late is still written (the dispatcher
        fences on it) and corrects this guess."""
        dedup = self.settings.provider_deduplicates
        error = "lease expired: dispatcher stopped mid-request" if dedup else LEASE_UNKNOWN
        status = MessageStatus.SCHEDULED if dedup else MessageStatus.FAILED
        # Fired again after a further half lease: a dispatcher that is slow rather than
        # dead still writes its outcome meanwhile (its writes fence on `attempts`, which
        # a new claim would bump).
        grace = timedelta(seconds=self.settings.sending_lease_s / 2)
        async with self.sessions() as session, session.begin():
            extra: dict[str, Any] = {"due_at": func.now() + grace} if dedup else {}
            rows = await self._claim(
                session,
                and_(Message.status == MessageStatus.SENDING, Message.lease_until < func.now()),
                status=status,
                lease_until=None,
                last_error=error,
                **extra,
            )
            await stage_status_events(
                session,
                self.topics,
                changes_of(rows, previous=MessageStatus.SENDING),
                status,
                error="lease expired" if dedup else LEASE_UNKNOWN,
            )
            if not dedup and rows:
                await add_events(
                    session,
                    self.topics.message_send_dlq,
                    [
                        SendMessage(
                            payload=SendData(
                                message_id=m,
                                mailing_id=g,
                                client_id=c,
                                attempt=a,
                                last_error=LEASE_UNKNOWN,
                            )
                        )
                        for m, g, c, a in rows
                    ],
                )
        if rows:
            log.warning("messages_recovered", count=len(rows), status=status.value)
            self._on_commit()
        return len(rows)

    async def requeue_stale(self) -> int:
        """Safety net: a message `queued` for long has its command published again.

        Commands are published right after the claim commits; this covers a crash in
        between. A duplicate command is harmless (the dispatcher's claim is a
        compare-and-set)."""
        stale = func.now() - timedelta(seconds=self.settings.requeue_after_s)
        async with self.sessions() as session, session.begin():
            rows = await self._claim(
                session, and_(Message.status == MessageStatus.QUEUED, Message.updated_at < stale)
            )
        if rows:
            await self._publish_sends(rows)
            log.warning("queued_messages_republished", count=len(rows))
        return len(rows)

    async def backlog(self) -> int:
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.status == MessageStatus.SCHEDULED, Message.due_at <= func.now())
            )
        return int(count or 0)

    # --- edits -----------------------------------------------------------------------

    async def apply_edit(self, mailing_id: int) -> None:
        """Re-plan a running mailing after an update, from the row (the truth), so a
        replayed or reordered event does the same thing (`_converge`)."""
        # Waits while another scheduler activates or edits this mailing.
        async with (
            self._mailing_lock(mailing_id, wait=True),
            self.sessions() as session,
        ):
            mailing = await session.get(Mailing, mailing_id)
            if mailing is None or mailing.state == MailingState.SCHEDULED:
                return  # deleted, or not active yet: activation uses the new version
            bind_entities(mailing_id=mailing_id)
            now = _now()
            if mailing.state == MailingState.FINISHED and now < mailing.stop_at:
                mailing.state = MailingState.RUNNING
                await session.commit()
            done = await self._converge(session, mailing, now=now)
            log.info(
                "mailing_replanned",
                version=mailing.version,
                cancelled=done.cancelled,
                replanned=done.replanned,
                added=done.added,
                superseded=done.superseded,
            )
            clear_context()
        self._on_commit()
        self.wake()

    async def replan_client(self, client_id: int) -> None:
        """A client's time zone changed: re-plan its scheduled messages."""
        async with self.sessions() as session, session.begin():
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
            now = _now()
            expired = []
            for message_id, mailing, zone_name in rows:
                _, [due] = due_by_zone(mailing, [zone_name], now)
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
                session, self.topics, expired, MessageStatus.EXPIRED, error=NO_TIME
            )

    # --- the loop ----------------------------------------------------------------------

    async def run(self, started: asyncio.Event) -> None:
        await started.wait()
        interval = self.settings.scheduler_poll_interval_s
        loop = asyncio.get_running_loop()
        next_slow = next_gauge = 0.0
        while True:
            try:
                await self.activate_due_mailings()
                fired = await self.fire_due()
                if loop.time() >= next_slow:
                    next_slow = loop.time() + max(1.0, interval * 5)
                    await self.expire_past_stop()
                    await self.recover_stuck()
                    await self.requeue_stale()
                if loop.time() >= next_gauge:  # a count: cheap to skip, costly at 10^6 rows
                    next_gauge = loop.time() + 15.0
                    SCHEDULER_BACKLOG.set(await self.backlog())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduler_tick_failed", error=repr(exc))
                fired = 0
                await asyncio.sleep(1.0)
            if fired >= self.settings.scheduler_batch_size:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
