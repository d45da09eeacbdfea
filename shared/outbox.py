"""The transactional outbox: an event is committed with the write that caused it, and a
relay publishes committed events to Kafka.

So an event is never lost while Kafka is down (it waits in the table) and never
published for a rolled-back write. The relay claims rows with `FOR UPDATE SKIP LOCKED`
under a transaction-level advisory lock: several processes may run a relay, one
publishes at a time, so no row goes out twice in a normal run and events of one key
keep their order. A crash between the Kafka ack and the commit republishes that batch
once (at-least-once); consumers are idempotent by `event_id`.

Each published event is logged (`event_published`) with its topic, type, event id and
the ids of its mailing, message and client. Status events are logged at DEBUG only: on
the hot path there are several per commit, and the reporter logs each one it applies
(`messages_transitioned`) with the same ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiokafka.errors import UnknownTopicOrPartitionError
from sqlalchemy import Text, cast, func, insert, select, text, update

from shared.db import engine_of, prune_in_batches
from shared.logging import ENTITY_KEYS, Outage, get_logger
from shared.metrics import OUTBOX_BACKLOG, OUTBOX_PUBLISHED
from shared.models import Outbox
from shared.topics import MESSAGE_STATUS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from faststream.kafka import KafkaBroker
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.events import Envelope

log = get_logger(__name__)

_JSON = {"content-type": "application/json"}
# Any fixed 64-bit number: the advisory lock that makes one relay publish at a time.
_RELAY_LOCK = 0x6E6F7469666F7574  # "notifout"
# Another: the one process at a time that deletes published rows.
_PURGE_LOCK = 0x6F7574707572676  # "outpurg"
# One batch of published rows past their keep time, oldest first (the index's order).
# The batch's ids as an array (an InitPlan on `ix_outbox_published_at`), deleted through
# the primary key: with `id IN (subquery)` the planner may hash-join a scan of the
# whole table against the batch once the table is large.
PURGE_STATEMENT = """
    DELETE FROM outbox WHERE id = ANY(ARRAY(
        SELECT id FROM outbox
        WHERE published_at < now() - make_interval(secs => :keep_s)
        ORDER BY published_at
        LIMIT :batch
    ))
"""
_PURGE = text(PURGE_STATEMENT)
# The entity a `<entity>.<verb>` event's `payload.id` names.
_ID_OF_ENTITY = {"mailing": "mailing_id", "client": "client_id"}


def event_log_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """Type, event id and entity ids of an envelope, for its log line."""
    kind = record.get("type")
    payload = record.get("payload")
    fields: dict[str, Any] = {"type": kind, "event_id": record.get("event_id")}
    if not isinstance(payload, dict):
        return fields
    for key in ENTITY_KEYS:
        if key in payload:
            fields[key] = payload[key]
    entity = kind.partition(".")[0] if isinstance(kind, str) else ""
    entity_key = _ID_OF_ENTITY.get(entity)
    if entity_key is not None and "id" in payload:
        fields[entity_key] = payload["id"]
    return fields


def add_event(session: AsyncSession, topic: str, event: Envelope[Any]) -> None:
    """Stage `event` for `topic` in the caller's transaction."""
    session.add(Outbox(topic=topic, key=event.key(), payload=event.to_record()))


async def add_events(session: AsyncSession, topic: str, events: list[Envelope[Any]]) -> None:
    """Stage many events with one INSERT."""
    if events:
        await session.execute(
            insert(Outbox),
            [{"topic": topic, "key": e.key(), "payload": e.to_record()} for e in events],
        )


@dataclass(slots=True)
class _Hold:
    until: float
    delay: float
    failures: int
    # The topic did not exist at the last try: it is created again before the next.
    missing: bool = False
    # Failed attempts to create it again (a warning for the first only).
    recreate_failures: int = 0


_HOLD_MIN_S = 1.0
_HOLD_MAX_S = 30.0


def _missing(error: BaseException) -> bool:
    """The publish failed because the topic does not exist (deleted since the start)."""
    return isinstance(error, UnknownTopicOrPartitionError)


class OutboxRelay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: KafkaBroker,
        *,
        topics: Sequence[str],
        service: str,
        batch_size: int = 500,
        idle_interval_s: float = 0.5,
        keep_published: timedelta = timedelta(days=1),
        recreate_topics: Callable[[], Awaitable[Sequence[str]]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        # Only this deployment's topics: a row for another prefix (left by an old
        # configuration) must not block the rest.
        self.topics = list(topics)
        self.service = service
        self.batch_size = batch_size
        self.idle_interval_s = idle_interval_s
        self.keep_published = keep_published
        self.quiet_topics = frozenset(t for t in self.topics if t.endswith(MESSAGE_STATUS))
        self._wake = asyncio.Event()
        # Creates the deployment's missing topics (shared.kafka.ensure_topics), returning
        # those it created: called when a topic turns out not to exist.
        self.recreate_topics = recreate_topics
        # Topics whose last publish failed, held back until their time.
        self._held: dict[str, _Hold] = {}

    def wake(self) -> None:
        """Called after a commit that staged events: publish now rather than at the tick."""
        self._wake.set()

    async def publish_once(self) -> int:
        """Publish one batch; return how many rows went out (0 when idle or not leader).

        Each topic's rows are published on their own: a topic that cannot take them (it
        was deleted, say) keeps its rows and is held back for a while, and the other
        topics' rows go out and are marked. When every topic of the batch fails (Kafka
        is down) the error is raised, for `run` to back off."""
        async with self.sessions() as session, session.begin():
            leader = await session.scalar(select(func.pg_try_advisory_xact_lock(_RELAY_LOCK)))
            if not leader:
                return 0
            loop = asyncio.get_running_loop()
            await self._create_missing(loop.time())
            held = [t for t, hold in self._held.items() if hold.until > loop.time()]
            query = (
                # The payload as PostgreSQL's JSON text: published as it is, with no
                # decode and re-encode in Python.
                select(Outbox.id, Outbox.topic, Outbox.key, cast(Outbox.payload, Text))
                .where(Outbox.published_at.is_(None), Outbox.topic.in_(self.topics))
                .order_by(Outbox.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            )
            if held:
                query = query.where(Outbox.topic.not_in(held))
            rows = (await session.execute(query)).all()
            if not rows:
                return 0
            by_topic: dict[str, list[Any]] = {}
            for row in rows:
                by_topic.setdefault(row.topic, []).append(row)
            outcomes = await asyncio.gather(
                *(self._publish_topic(topic, group) for topic, group in by_topic.items()),
                return_exceptions=True,
            )
            failed: dict[str, BaseException] = {}
            for topic, outcome in zip(by_topic, outcomes, strict=True):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                if isinstance(outcome, BaseException):
                    failed[topic] = outcome
            published = [row for row in rows if row.topic not in failed]
            if published:
                await session.execute(
                    update(Outbox)
                    .where(Outbox.id.in_([row.id for row in published]))
                    .values(published_at=func.now())
                )
        everything_failed = len(failed) == len(by_topic)
        if everything_failed and not all(_missing(error) for error in failed.values()):
            # Kafka itself is out of reach, not one topic: `run` backs off.
            raise next(iter(failed.values()))
        # After the commit: nothing about the log lines can make a batch go out twice.
        for topic in by_topic:
            if topic not in failed:
                self._topic_ok(topic, len(by_topic[topic]))
        for topic, error in failed.items():
            await self._topic_failed(topic, error, len(by_topic[topic]))
        self._log_published(published)
        OUTBOX_PUBLISHED.labels(self.service).inc(len(published))
        return len(published)

    async def _publish_topic(self, topic: str, rows: Sequence[Any]) -> None:
        # Enqueue in id order (keeps per-key order: a key lives in one topic), then wait
        # for every ack.
        pending = [
            await self.broker.publish(
                payload.encode(), topic, key=key.encode(), headers=_JSON, no_confirm=True
            )
            for _, _, key, payload in rows
        ]
        await asyncio.gather(*pending)

    async def _topic_failed(self, topic: str, error: BaseException, rows: int) -> None:
        hold = self._hold(topic, error, rows)
        if self.recreate_topics is not None:
            # The services create their topics at start; one deleted since is created
            # again the same way, so its events (kept in the outbox) can go out. Asked
            # whatever the error: a producer that still had the topic's partitions
            # fails with a timeout of its retries, not "unknown topic".
            hold.missing = True
            try:
                created = await self.recreate_topics()
            except Exception as exc:
                self._recreate_failed([topic], exc)
            else:
                hold.missing = False
                if created:
                    hold.until = 0.0  # try again at once

    def _hold(self, topic: str, error: BaseException, rows: int) -> _Hold:
        """Hold the topic back, for a pause that doubles with each failure in a row."""
        hold = self._held.get(topic)
        if hold is None:
            hold = self._held[topic] = _Hold(until=0.0, delay=_HOLD_MIN_S, failures=0)
            log.warning("outbox_topic_failing", topic=topic, error=repr(error), rows=rows)
        else:
            hold.delay = min(hold.delay * 2, _HOLD_MAX_S)
        hold.failures += 1
        hold.until = asyncio.get_running_loop().time() + hold.delay
        return hold

    async def _create_missing(self, now: float) -> None:
        """Before a topic found missing is tried again, create it again. A publish to
        a topic that does not exist waits for Kafka's request timeout, and the batch's
        rows of every other topic wait with it: while creating it fails, the topic
        stays held back and no publish to it is attempted."""
        due = [t for t, hold in self._held.items() if hold.missing and hold.until <= now]
        if not due or self.recreate_topics is None:
            return
        try:
            await self.recreate_topics()
        except Exception as exc:
            for topic in due:
                self._hold(topic, exc, 0)
            self._recreate_failed(due, exc)
            return
        for topic in due:
            self._held[topic].missing = False

    def _recreate_failed(self, topics: list[str], error: BaseException) -> None:
        """One warning per topic while it stays held (a long Kafka outage makes every
        try fail), then DEBUG lines."""
        first = [t for t in topics if self._held[t].recreate_failures == 0]
        for topic in topics:
            self._held[topic].recreate_failures += 1
        if first:
            log.warning("outbox_topic_recreate_failed", topics=first, error=repr(error))
        if len(first) < len(topics):
            log.debug("outbox_topic_recreate_failed", topics=topics, error=repr(error))

    def _topic_ok(self, topic: str, rows: int) -> None:
        hold = self._held.pop(topic, None)
        if hold is not None:
            log.info("outbox_topic_recovered", topic=topic, failures=hold.failures, rows=rows)

    def _log_published(self, rows: Sequence[Any]) -> None:
        # Asked of the standard library's logger (what structlog writes through when
        # configured); a bare structlog logger has no such method.
        debug = logging.getLogger(__name__).isEnabledFor(logging.DEBUG)
        for _, topic, _, payload in rows:
            # Status events are told apart by topic, so the quiet ones are never parsed.
            quiet = topic in self.quiet_topics
            if quiet and not debug:
                continue
            (log.debug if quiet else log.info)(
                "event_published", topic=topic, **event_log_fields(json.loads(payload))
            )

    async def backlog(self) -> int:
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Outbox)
                .where(Outbox.published_at.is_(None), Outbox.topic.in_(self.topics))
            )
        return int(count or 0)

    async def purge_published(self) -> int | None:
        """Delete rows published longer ago than `keep_published`, in batches, by an
        index range scan (ix_outbox_published_at); None when another process is at it."""
        deleted = await prune_in_batches(
            engine_of(self.sessions),
            lock=_PURGE_LOCK,
            statement=_PURGE,
            params={"keep_s": self.keep_published.total_seconds()},
        )
        if deleted:
            log.info("outbox_pruned", count=deleted)
        return deleted

    async def run(self, started: asyncio.Event) -> None:
        """Publish until cancelled; back off while Kafka or PostgreSQL is unreachable."""
        # Waits use asyncio.timeout, never asyncio.wait_for: on Python 3.11 wait_for can
        # swallow a cancel that lands as the awaited event fires, and the relay then
        # ran on after shutdown (tests/integration/test_outbox_cancel.py).
        while not started.is_set():  # Kafka not reached yet: the backlog still shows
            with contextlib.suppress(Exception):
                OUTBOX_BACKLOG.labels(self.service).set(await self.backlog())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15.0):
                    await started.wait()
        delay = self.idle_interval_s
        # One line when publishing starts failing (Kafka or PostgreSQL away), a reminder
        # a minute, one when it works again: not a line per retry.
        outage = Outage(
            "outbox_publish_failed", "outbox_publish_still_failing", "outbox_publish_restored"
        )
        loop = asyncio.get_running_loop()
        next_purge = loop.time() + 60
        next_count = 0.0
        while True:
            try:
                published = await self.publish_once()
                outage.recovered(service=self.service)
                delay = self.idle_interval_s
                if published < self.batch_size:
                    OUTBOX_BACKLOG.labels(self.service).set(0)
                elif loop.time() >= next_count:  # draining a burst: a count now and then
                    next_count = loop.time() + 15.0
                    OUTBOX_BACKLOG.labels(self.service).set(await self.backlog())
                if loop.time() >= next_purge:
                    next_purge = loop.time() + 60
                    await self.purge_published()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                published = 0
                outage.failed(exc, retry_in_s=delay)
                with contextlib.suppress(Exception):
                    OUTBOX_BACKLOG.labels(self.service).set(await self.backlog())
                delay = min(max(delay * 2, 1.0), 10.0)
            if published >= self.batch_size:
                continue  # more rows waiting: go on at once
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
