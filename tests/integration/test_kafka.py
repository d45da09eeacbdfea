"""Events through the real broker with the project's own factory, topics and schemas."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from shared.events import (
    MailingCreated,
    MailingData,
    MailingDeleted,
    MailingRef,
    mailing_event_adapter,
)
from shared.kafka import create_broker, ensure_topics, topics_from

if TYPE_CHECKING:
    from shared.settings import Settings


async def test_topics_are_created_with_the_configured_partitions(settings: Settings) -> None:
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(topics_from(settings).all())
    assert await ensure_topics(settings) == []  # idempotent

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics_from(settings).all())
    finally:
        await admin.close()
    partitions = {topic["topic"]: len(topic["partitions"]) for topic in described}
    assert set(partitions.values()) == {settings.kafka_partitions}
    assert len(partitions) == 4 + len(settings.retry_delays_s) + 1


async def test_mailing_events_round_trip_keyed_and_in_order(settings: Settings) -> None:
    await ensure_topics(settings)
    topics = topics_from(settings)
    broker = create_broker(settings, client_id="test")
    received: asyncio.Queue[tuple[bytes | None, Any]] = asyncio.Queue()

    @broker.subscriber(
        topics.mailing_events,
        group_id="test-roundtrip",
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
    )
    async def on_event(body: dict[str, Any], message: KafkaMessage) -> None:
        record = message.raw_message
        assert not isinstance(record, tuple)
        await received.put((record.key, mailing_event_adapter.validate_python(body)))

    created = MailingCreated(
        payload=MailingData(
            id=42,
            version=1,
            start_at=datetime(2031, 1, 2, 9, 0, tzinfo=UTC),
            stop_at=datetime(2031, 1, 3, 9, 0, tzinfo=UTC),
            text="Hello",
            filter_tags=["vip"],
            filter_codes=[911],
            window_start=time(9, 0),
            window_end=time(21, 0),
        )
    )
    deleted = MailingDeleted(payload=MailingRef(id=42, version=1))
    async with broker:
        await broker.start()
        for event in (created, deleted):
            await broker.publish(event.to_record(), topics.mailing_events, key=event.key().encode())
        first = await asyncio.wait_for(received.get(), 30)
        second = await asyncio.wait_for(received.get(), 30)

    assert first == (b"42", created)
    assert second == (b"42", deleted)
    assert isinstance(second[1], MailingDeleted)
