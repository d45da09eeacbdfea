"""The scheduler's work, all of it on PostgreSQL (the timer store).

- activate: a mailing whose start has come gets its audience expanded into messages
  with set-based `INSERT ... SELECT ... ON CONFLICT DO NOTHING` in client-id batches;
- fire: due messages are claimed with `FOR UPDATE SKIP LOCKED` and moved to `queued`;
  after that commits, their `SendMessage` commands are published (a command must never
  reach a dispatcher before the row it names is `queued`). If publishing fails, the
  batch goes back to `scheduled` (compare-and-set) and is fired again; a crash between
  the commit and the publish is covered by re-publishing long-`queued` messages;
- expire: pending messages of mailings past their stop time;
- recover: messages stuck in `sending` past their lease go back to `retrying` and are
  fired again with the same message id (the gateway de-duplicates by it);
- edit: a new mailing version re-plans pending messages, cancels clients that no longer
  match, adds new ones and gives failed, expired and cancelled ones a new chance.

Several scheduler processes may run: row claims skip locked rows, and work on one
mailing (activation, edit) holds that mailing's advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Integer,
    and_,
    bindparam,
    case,
    func,
    literal,
    null,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, insert

from services.scheduler.planning import due_by_zone
from shared.audience import audience_condition
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
from shared.statuses import stage_status_events, transition_where

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from faststream.kafka import KafkaBroker
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
NO_TIME = "no allowed local time before stop"


def _now() -> datetime:
    return datetime.now(UTC)


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
        """Expand one mailing's audience into messages; 1 if this call activated it."""
        async with self._mailing_lock(mailing_id, wait=False) as locked:
            if not locked:
                return 0  # another scheduler is on it
            async with self.sessions() as session:
                mailing = await session.get(Mailing, mailing_id)
                if mailing is None or mailing.state != MailingState.SCHEDULED:
                    return 0
                bind_entities(mailing_id=mailing_id)
                started = asyncio.get_running_loop().time()
                created = await self._expand(session, mailing, now=_now())
                await session.execute(
                    update(Mailing)
                    .where(Mailing.id == mailing_id, Mailing.version == mailing.version)
                    .values(
                        state=MailingState.RUNNING,
                        activated_at=func.now(),
                        updated_at=func.now(),
                    )
                )
                await session.commit()
            log.info(
                "mailing_activated",
                messages=created,
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

    async def _expand(self, session: AsyncSession, mailing: Mailing, *, now: datetime) -> int:
        """Insert one message per matching client, in client-id batches, committing each."""
        condition = audience_condition(mailing.filter_tags, mailing.filter_codes)
        zones = list(await session.scalars(select(Client.timezone).where(condition).distinct()))
        if not zones:
            return 0
        names, dues = due_by_zone(mailing, zones, now)
        bounds = (
            await session.execute(select(func.min(Client.id), func.max(Client.id)).where(condition))
        ).one()
        low, high = bounds
        if low is None:
            return 0
        plan = (
            select(
                func.unnest(bindparam("zones", names, type_=ARRAY(Client.timezone.type))).label(
                    "zone"
                ),
                func.unnest(bindparam("dues", dues, type_=ARRAY(TIMESTAMP(timezone=True)))).label(
                    "due"
                ),
            )
        ).subquery("plan")
        created = 0
        step = self.settings.expansion_batch_size
        for first in range(low, high + 1, step):
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
                    .where(condition, Client.id >= first, Client.id < first + step),
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
            created += sum(counts.values())
        return created

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
                [(m, g, c, a, MessageStatus.SCHEDULED.value) for m, g, c, a in rows],
                MessageStatus.QUEUED,
                None,
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
        futures = []
        topic = self.topics.message_send
        for message_id, mailing_id, client_id, attempts in rows:
            command = SendMessage(
                payload=SendData(
                    message_id=message_id,
                    mailing_id=mailing_id,
                    client_id=client_id,
                    attempt=attempts,
                )
            )
            futures.append(
                await self.broker.publish(
                    command.to_record(), topic, key=command.key().encode(), no_confirm=True
                )
            )
        await asyncio.gather(*futures)
        # One line per message (the hot path): its ids, explicitly, no context churn.
        for message_id, mailing_id, client_id, attempts in rows:
            log.info(
                "send_command_published",
                message_id=message_id,
                mailing_id=mailing_id,
                client_id=client_id,
                attempt=attempts,
            )

    # --- expiry, lease recovery, finishing ---------------------------------------------

    async def expire_past_stop(self) -> int:
        """Pending messages (not in flight) of mailings past their stop time expire."""
        async with self.sessions() as session, session.begin():
            stopped = select(Mailing.id).where(Mailing.stop_at <= func.now())
            count = await transition_where(
                session,
                self.topics,
                and_(
                    Message.mailing_id.in_(stopped),
                    Message.status.in_(
                        [MessageStatus.SCHEDULED, MessageStatus.QUEUED, MessageStatus.RETRYING]
                    ),
                ),
                MessageStatus.EXPIRED,
                error="stop time reached",
            )
            await session.execute(
                update(Mailing)
                .where(Mailing.stop_at <= func.now(), Mailing.state != MailingState.FINISHED)
                .values(state=MailingState.FINISHED, updated_at=func.now())
            )
        if count:
            log.info("messages_expired", count=count)
            self._on_commit()
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
        # The dispatcher's outcome writes recognise this exact text (its lease_unknown).
        lease_unknown = "unknown outcome: lease expired"
        dedup = self.settings.provider_deduplicates
        error = "lease expired: dispatcher stopped mid-request" if dedup else lease_unknown
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
                [(m, g, c, a, MessageStatus.SENDING.value) for m, g, c, a in rows],
                status,
                "lease expired" if dedup else lease_unknown,
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
                                last_error=lease_unknown,
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
        replayed or reordered event does the same thing."""
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
            match = audience_condition(mailing.filter_tags, mailing.filter_codes)
            matching = select(Client.id).where(match)
            cancelled = await transition_where(
                session,
                self.topics,
                and_(
                    Message.mailing_id == mailing_id,
                    Message.status.in_(_WAITING),
                    Message.client_id.not_in(matching),
                ),
                MessageStatus.CANCELLED,
                error="no longer matches the mailing",
            )
            # Pending, retryable and newly matching clients: (re)plan from scratch.
            zones = list(await session.scalars(select(Client.timezone).where(match).distinct()))
            names, dues = due_by_zone(mailing, zones, now)
            replanned = await self._replan(session, mailing, names, dues)
            await session.commit()
            created = await self._expand(session, mailing, now=now)
            await session.commit()
            log.info(
                "mailing_replanned",
                version=mailing.version,
                cancelled=cancelled,
                replanned=replanned,
                added=created,
            )
            clear_context()
        self._on_commit()
        self.wake()

    async def _replan(
        self, session: AsyncSession, mailing: Mailing, names: list[str], dues: list[Any]
    ) -> int:
        """Waiting and retryable messages of still-matching clients: new due time."""
        if not names:
            return 0
        plan = dict(zip(names, dues, strict=True))
        rows = (
            await session.execute(
                select(
                    Message.id, Message.client_id, Message.attempts, Message.status, Client.timezone
                )
                .join(Client, Client.id == Message.client_id)
                .where(
                    Message.mailing_id == mailing.id,
                    Message.status.in_([*_WAITING, *_RETRYABLE]),
                    audience_condition(mailing.filter_tags, mailing.filter_codes),
                )
                .order_by(Message.id)
                .with_for_update(of=Message)
            )
        ).all()
        if not rows:
            return 0
        ids = [row.id for row in rows]
        new_dues = [plan.get(row.timezone) for row in rows]
        await session.execute(
            text(
                """
                UPDATE message SET
                    status = CASE WHEN c.due IS NULL THEN 'expired' ELSE 'scheduled' END,
                    due_at = c.due,
                    mailing_version = :version,
                    last_error = CASE WHEN c.due IS NULL THEN :no_time END,
                    updated_at = now()
                FROM unnest(CAST(:ids AS bigint[]), CAST(:dues AS timestamptz[])) AS c(id, due)
                WHERE message.id = c.id
                """
            ),
            {"ids": ids, "dues": new_dues, "version": mailing.version, "no_time": NO_TIME},
        )
        for target in (MessageStatus.SCHEDULED, MessageStatus.EXPIRED):
            changed = [
                (row.id, mailing.id, row.client_id, row.attempts, row.status)
                for row, due in zip(rows, new_dues, strict=True)
                if (due is not None) == (target == MessageStatus.SCHEDULED) and row.status != target
            ]
            await stage_status_events(
                session,
                self.topics,
                changed,
                target,
                None if target == MessageStatus.SCHEDULED else NO_TIME,
            )
        return len(rows)

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
                        (message_id, mailing.id, client_id, attempts, MessageStatus.SCHEDULED.value)
                    )
            await stage_status_events(session, self.topics, expired, MessageStatus.EXPIRED, NO_TIME)

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
