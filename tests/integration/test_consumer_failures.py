"""A Kafka batch handler that fails commits nothing, on the real broker: the batch is
redelivered whole and committed only after success, and a rebalance while a batch fails
loses no record.

Each service end to end (real faults in PostgreSQL): tests/e2e/test_consumer_failures.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from shared.consuming import ConsumerHealth, backoff_s
from shared.kafka import create_broker
from tests.support.polling import eventually

if TYPE_CHECKING:
    from shared.settings import Settings


async def _committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


async def _topic(settings: Settings, partitions: int) -> str:
    from aiokafka.admin import NewTopic

    name = f"{settings.kafka_topic_prefix}guard.{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def _produce(settings: Settings, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, json.dumps({"n": i}).encode(), partition=i % 3)
        await producer.flush()
    finally:
        await producer.stop()


async def test_a_failing_batch_is_redelivered_whole_and_committed_only_after_success(
    settings: Settings,
) -> None:
    topic = await _topic(settings, 3)
    group = f"{topic}-group"
    health = ConsumerHealth("test", retry_min_s=0.05, retry_max_s=0.2)
    seen: list[list[int]] = []
    done: asyncio.Queue[list[int]] = asyncio.Queue()
    fail_times = 3
    broker = create_broker(settings, client_id="guard-test")

    @broker.subscriber(
        topic,
        batch=True,
        max_records=100,
        batch_timeout_ms=500,
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    @health.guard(group, topic)
    async def handle(bodies: list[Any], message: KafkaMessage) -> None:
        numbers = sorted(body["n"] for body in bodies)
        seen.append(numbers)
        if len(seen) <= fail_times:
            # Nothing of the batch may have been committed meanwhile.
            assert sum((await _committed(settings, group, topic)).values()) <= 0
            raise RuntimeError(f"attempt {len(seen)} fails")
        await done.put(numbers)

    await _produce(settings, topic, 30)
    async with broker:
        await broker.start()
        handled: list[int] = []
        while len(handled) < 30:
            handled += await asyncio.wait_for(done.get(), 60)
        failing_while = dict(health.failing)
        committed = await eventually(
            lambda: _committed(settings, group, topic),
            lambda offsets: sum(offsets.values()) == 30,
            what="offsets committed after the success",
        )
    assert sorted(handled) == list(range(30))  # every record handled once it succeeded
    # The failed attempts saw the same records again (a batch may be cut differently,
    # but nothing after the first failed batch was skipped).
    assert seen[0]
    assert all(set(seen[0]) <= set(attempt) for attempt in seen[1 : fail_times + 1])
    assert committed == {0: 10, 1: 10, 2: 10}
    assert failing_while == {}  # recovered
    assert backoff_s(1, 0.5, 30) == 0.5
    assert backoff_s(4, 0.5, 30) == 4
    assert backoff_s(99, 0.5, 30) == 30


async def test_a_rebalance_while_a_batch_fails_loses_no_record(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Consumer A fails and backs off; B joins the group and takes partitions meanwhile.
    A rewinds only what it still owns (FastStream's own nack stops at the first partition
    it no longer owns, with a CRITICAL line, leaving the rest un-rewound); B starts from
    the committed offsets; every record ends handled and committed."""
    topic = await _topic(settings, 3)
    group = f"{topic}-group"
    handled: list[int] = []
    healthy = asyncio.Event()
    first = create_broker(settings, client_id="guard-a")
    second = create_broker(settings, client_id="guard-b")
    health_a = ConsumerHealth("a", retry_min_s=1.0, retry_max_s=1.0)
    health_b = ConsumerHealth("b", retry_min_s=0.1, retry_max_s=0.1)

    def register(broker: KafkaBroker, health: ConsumerHealth, fails: bool) -> None:
        @broker.subscriber(
            topic,
            batch=True,
            max_records=100,
            batch_timeout_ms=200,
            group_id=group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
        )
        @health.guard(group, topic)
        async def handle(bodies: list[Any], message: KafkaMessage) -> None:
            if fails and not healthy.is_set():
                raise RuntimeError("A fails")
            handled.extend(body["n"] for body in bodies)

    register(first, health_a, fails=True)
    register(second, health_b, fails=False)
    await _produce(settings, topic, 30)
    async with first, second:
        await first.start()
        await eventually(
            lambda: asyncio.sleep(0, result=bool(health_a.failing)),
            lambda failing: failing,
            what="A failing",
        )
        await second.start()  # the group rebalances while A fails
        await eventually(
            lambda: asyncio.sleep(0, result=len(handled)),
            lambda count: count > 0,
            timeout=60,
            what="B handling the partitions it took",
        )
        healthy.set()
        await eventually(
            lambda: _committed(settings, group, topic),
            lambda offsets: sum(offsets.values()) == 30,
            timeout=60,
            what="every record committed",
        )
    assert sorted(set(handled)) == list(range(30))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]
