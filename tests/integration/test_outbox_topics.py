"""A deleted topic does not block the outbox relay for the other topics (real broker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from sqlalchemy import func, select

from shared.events import ClientCreated, ClientData, MailingDeleted, MailingRef
from shared.kafka import create_broker, ensure_topics, topics_from
from shared.models import Outbox
from shared.outbox import OutboxRelay, add_events
from tests.support.kafka_helpers import read_topic
from tests.support.polling import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings


@contextlib.asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _delete_topic(settings: Settings, topic: str) -> None:
    async with _admin(settings) as admin:
        await admin.delete_topics([topic])

        async def listed() -> list[str]:
            return list(await admin.list_topics())

        await eventually(listed, lambda names: topic not in names, what=f"{topic} gone")


async def _unpublished(sessions: async_sessionmaker[AsyncSession], topic: str) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Outbox)
            .where(Outbox.topic == topic, Outbox.published_at.is_(None))
        )
    return int(count or 0)


@contextlib.asynccontextmanager
async def _relay_running(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    recreate: Callable[[], Awaitable[Sequence[str]]] | None,
) -> AsyncIterator[OutboxRelay]:
    broker = create_broker(settings, client_id="relay")
    await broker.start()
    started = asyncio.Event()
    started.set()
    relay = OutboxRelay(
        sessions,
        broker,
        topics=topics_from(settings).all(),
        service="test",
        idle_interval_s=0.1,
        recreate_topics=recreate,
    )
    task = asyncio.create_task(relay.run(started))
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broker.stop()


def _clients(first: int, count: int) -> list[ClientCreated]:
    return [
        ClientCreated(payload=ClientData(id=n, phone=f"7{n:010d}", operator_code=n % 1000))
        for n in range(first, first + count)
    ]


def _mailings(first: int, count: int) -> list[MailingDeleted]:
    return [
        MailingDeleted(payload=MailingRef(id=n, version=1)) for n in range(first, first + count)
    ]


async def test_other_topics_go_out_and_the_deleted_one_once_it_exists_again(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    topics = topics_from(settings)
    await ensure_topics(settings)
    async with _relay_running(settings, sessions, recreate=None):
        # The relay has published to both topics (its producer knows them)...
        async with sessions() as session, session.begin():
            await add_events(session, topics.mailing_events, _mailings(1, 1))  # type: ignore[arg-type]
            await add_events(session, topics.client_events, _clients(1, 1))  # type: ignore[arg-type]
        await read_topic(settings.kafka_bootstrap, topics.mailing_events, expect=1)
        await read_topic(settings.kafka_bootstrap, topics.client_events, expect=1)

        # ...then one is deleted, and its events come first in the outbox.
        await _delete_topic(settings, topics.mailing_events)
        async with sessions() as session, session.begin():
            await add_events(session, topics.mailing_events, _mailings(2, 30))  # type: ignore[arg-type]
            await add_events(session, topics.client_events, _clients(2, 30))  # type: ignore[arg-type]

        await eventually(
            lambda: _unpublished(sessions, topics.client_events),
            lambda n: n == 0,
            timeout=90,
            what="the other topic's events published",
        )
        assert await _unpublished(sessions, topics.mailing_events) == 30
        clients = await read_topic(settings.kafka_bootstrap, topics.client_events, expect=31)
        assert sorted(value["payload"]["id"] for _, value in clients) == list(range(1, 32))

        # Once the topic exists again, what waited goes out, in order.
        async with _admin(settings) as admin:
            await admin.create_topics(
                [NewTopic(topics.mailing_events, num_partitions=1, replication_factor=1)]
            )
        await eventually(
            lambda: _unpublished(sessions, topics.mailing_events),
            lambda n: n == 0,
            timeout=120,
            what="the deleted topic's events published",
        )
    mailings = await read_topic(settings.kafka_bootstrap, topics.mailing_events, expect=30)
    assert [value["payload"]["id"] for _, value in mailings] == list(range(2, 32))


async def test_the_relay_creates_a_deleted_topic_again(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    topics = topics_from(settings)
    await ensure_topics(settings)
    async with _relay_running(settings, sessions, recreate=lambda: ensure_topics(settings)):
        async with sessions() as session, session.begin():
            await add_events(session, topics.mailing_events, _mailings(1, 1))  # type: ignore[arg-type]
        await read_topic(settings.kafka_bootstrap, topics.mailing_events, expect=1)
        await _delete_topic(settings, topics.mailing_events)
        async with sessions() as session, session.begin():
            await add_events(session, topics.mailing_events, _mailings(2, 5))  # type: ignore[arg-type]
        await eventually(
            lambda: _unpublished(sessions, topics.mailing_events),
            lambda n: n == 0,
            timeout=120,
            what="the deleted topic's events published",
        )
    mailings = await read_topic(settings.kafka_bootstrap, topics.mailing_events, expect=5)
    assert sorted(value["payload"]["id"] for _, value in mailings) == list(range(2, 7))
    async with _admin(settings) as admin:
        described = await admin.describe_topics([topics.mailing_events])
    assert len(described[0]["partitions"]) == settings.kafka_partitions


async def test_a_deleted_topic_that_cannot_be_created_again_holds_back_no_other_topic(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Each publish to a topic that does not exist waits for Kafka's request timeout
    while the batch's rows of every topic wait with it. So once a topic is found
    missing, the relay publishes to it again only after creating it again succeeded:
    while that fails (a broker that refuses to create topics), the topic's events wait
    in the outbox, no further publish to it is attempted, and the others go out."""
    topics = topics_from(settings)
    await ensure_topics(settings)

    async def refuse() -> Sequence[str]:
        raise KafkaError("CreateTopics refused")

    async with _relay_running(settings, sessions, recreate=refuse) as relay:
        attempts: Counter[str] = Counter()
        publish = relay.broker.publish

        def failures() -> int:
            hold = relay._held.get(topics.mailing_events)
            return hold.failures if hold is not None else 0

        async def counting(message: Any, topic: str = "", *args: Any, **kwargs: Any) -> Any:
            attempts[topic] += 1
            if topic == topics.mailing_events and failures():
                attempts["while held"] += 1
            return await publish(message, topic, *args, **kwargs)

        relay.broker.publish = counting  # type: ignore[method-assign]
        async with sessions() as session, session.begin():
            await add_events(session, topics.mailing_events, _mailings(1, 1))  # type: ignore[arg-type]
        await read_topic(settings.kafka_bootstrap, topics.mailing_events, expect=1)
        await _delete_topic(settings, topics.mailing_events)
        async with sessions() as session, session.begin():
            await add_events(session, topics.mailing_events, _mailings(2, 3))  # type: ignore[arg-type]

        # The relay finds the topic missing, then tries again and again, with a growing
        # pause, to create it; the other topic's events go out meanwhile.
        for round_ in range(4):
            async with sessions() as session, session.begin():
                await add_events(
                    session,
                    topics.client_events,
                    _clients(10 * round_ + 1, 10),  # type: ignore[arg-type]
                )
            await eventually(
                lambda: _unpublished(sessions, topics.client_events),
                lambda n: n == 0,
                timeout=90,
                what="the other topic's events published",
            )
        await eventually(
            lambda: asyncio.sleep(0, failures()),
            lambda n: n >= 4,
            timeout=180,
            what="several tries of the missing topic",
        )
        unpublished = await _unpublished(sessions, topics.mailing_events)
    # The first event, the tries until the topic was held back (a producer that still
    # had its partitions may fail with a timeout at first, taken for Kafka being away),
    # then no publish to it while it is held.
    assert attempts[topics.mailing_events] >= 2, attempts
    assert attempts["while held"] == 0, attempts
    assert unpublished == 3
    clients = await read_topic(settings.kafka_bootstrap, topics.client_events, expect=40)
    assert sorted(value["payload"]["id"] for _, value in clients) == list(range(1, 41))
