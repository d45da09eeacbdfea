"""A Kafka handler that fails commits nothing: its records are retried until their
effect is committed, the service stays up and says so in `/ready` and its metrics.

The faults are real: a lock the test holds makes a service's statement wait, and
`pg_terminate_backend` kills the waiting connection mid-statement (what a PostgreSQL
restart does to every connection). The safety nets that would hide a lost record (the
scheduler's re-drive, the reporter's reconciliation) are off here: the records
themselves must be retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from shared.consuming import ConsumerHealth, Failure, backoff_s
from shared.kafka import create_broker
from tests.support.pipeline import Pipeline, fmt, libpq, log_lines, metric
from tests.support.polling import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from shared.settings import Settings
    from tests.support.infra import Infra

NO_SAFETY_NETS = {"REDRIVE_INTERVAL_S": "0", "REPORTER_RECONCILE_INTERVAL_S": "0"}


def handler_failures(pipe: Pipeline, service: str) -> list[dict[str, Any]]:
    """Lines saying a Kafka handler of `service` failed: ours, or FastStream's own."""
    return [
        line
        for line in log_lines(pipe, service)
        if line.get("event") == "consumer_failing"
        or (line.get("level") == "error" and str(line.get("logger", "")).startswith("faststream"))
    ]


class HeldLock:
    """A lock held by the test's own transaction, and the killing of the connections of
    one service that wait on it."""

    def __init__(self, pipe: Pipeline, statement: str) -> None:
        self.pipe = pipe
        self.statement = statement
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> HeldLock:
        self.conn = await psycopg.AsyncConnection.connect(libpq(self.pipe.database_url))
        await self.conn.execute(self.statement)  # in a transaction, held until exit
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    async def release(self) -> None:
        if self.conn is not None:
            await self.conn.rollback()
            await self.conn.close()
            self.conn = None

    async def kill_waiters(self, service: str) -> int:
        async with await psycopg.AsyncConnection.connect(
            libpq(self.pipe.database_url), autocommit=True
        ) as conn:
            cursor = await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s "
                "AND wait_event_type = 'Lock'",
                (service,),
            )
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

    async def fail_handler(self, service: str) -> None:
        """Kill `service`'s waiting connections until a handler failure is logged."""

        async def kill() -> int:
            await self.kill_waiters(service)
            return len(handler_failures(self.pipe, service))

        await eventually(
            kill, lambda n: n > 0, timeout=120, interval=0.3, what=f"a {service} handler failure"
        )


async def ready(pipe: Pipeline, service: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{pipe.ports[service]}/ready")
        return response.status_code, response.json()


def assert_said_so(pipe: Pipeline, service: str, seen: tuple[int, dict[str, Any]]) -> None:
    """While failing, /ready was 503 naming the consumer; then one warning, one info."""
    code, body = seen
    assert code == 503, body
    failing = [name for name in body["failing"] if name.startswith("consumer:")]
    assert failing, body
    assert "failing on" in body["checks"][failing[0]]
    lines = log_lines(pipe, service)
    assert [line["event"] for line in lines if line.get("event") == "consumer_failing"] == [
        "consumer_failing"
    ]
    recovered = [line for line in lines if line.get("event") == "consumer_recovered"]
    assert len(recovered) == 1, recovered
    assert recovered[0]["failed_attempts"] >= 1, recovered
    # One warning for the episode, not an ERROR line per attempt.
    assert not [
        line for line in lines if line.get("level") == "error" and "faststream" in line["logger"]
    ]


# --- the mechanism, on the real broker --------------------------------------------------


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


class _Assigned:
    def __init__(self, *partitions: TopicPartition) -> None:
        self.partitions = set(partitions)

    def assignment(self) -> set[TopicPartition]:
        return self.partitions


def test_a_failure_whose_partitions_went_to_another_consumer_is_forgotten() -> None:
    health = ConsumerHealth("test")
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = _Assigned(a, b)
    health.failing["g"] = Failure("t", "E: boom", 3, 0.0, consumer, frozenset({a}))
    assert set(health.checks()) == {"consumer:g"}
    consumer.partitions = {b}  # a rebalance gave partition 0 to another consumer
    assert health.checks() == {}
    assert health.failing_groups() == set()


# --- each service, end to end -------------------------------------------------------------


async def test_a_reporter_batch_that_fails_is_applied_once_afterwards(
    infra: Infra, tmp_path: Path
) -> None:
    pipe = Pipeline(infra, tmp_path, env=dict(NO_SAFETY_NETS))
    await pipe.start()
    try:
        tag = f"c{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(150, tag)
        async with HeldLock(pipe, "LOCK TABLE mailing_status_count IN EXCLUSIVE MODE") as lock:
            now = datetime.now(UTC)
            mailing = await pipe.mailing(
                date_time_start=fmt(now - timedelta(minutes=1)),
                date_time_stop=fmt(now + timedelta(minutes=10)),
                text="Counted after a failure",
                tag=[tag],
            )
            await lock.fail_handler("reporter")
            while_failing = await ready(pipe, "reporter")
            failing_gauge = await metric(pipe, "reporter", "notifications_consumer_failing_info")
        counts = await pipe.settled(mailing["id"], timeout=150)  # counters == COUNT(*)
        failures = await metric(pipe, "reporter", "notifications_consumer_handler_failures_total")
        after = await ready(pipe, "reporter")
    finally:
        await pipe.stop()
    assert counts == {"sent": 150}
    assert_said_so(pipe, "reporter", while_failing)
    assert failing_gauge == 1
    assert failures >= 1
    assert after[0] == 200, after


async def test_a_dispatcher_batch_whose_claim_fails_loses_no_command(
    infra: Infra, tmp_path: Path
) -> None:
    pipe = Pipeline(
        infra, tmp_path, env=dict(NO_SAFETY_NETS), services=("api", "scheduler", "reporter")
    )
    await pipe.start()
    try:
        tag = f"d{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(120, tag)
        now = datetime.now(UTC)
        mailing = await pipe.mailing(
            date_time_start=fmt(now - timedelta(minutes=1)),
            date_time_stop=fmt(now + timedelta(minutes=10)),
            text="Claimed after a failure",
            tag=[tag],
        )
        await eventually(
            lambda: pipe.statuses(mailing["id"]),
            lambda counts: counts == {"queued": 120},
            timeout=60,
            what="every command published",
        )
        async with HeldLock(pipe, "LOCK TABLE message IN EXCLUSIVE MODE") as lock:
            pipe.launch("dispatcher")
            await pipe.wait_ready("dispatcher")
            await lock.fail_handler("dispatcher")
            while_failing = await ready(pipe, "dispatcher")
        counts = await pipe.settled(mailing["id"], timeout=150)
        summary = await pipe.control.summary()
        accepted = [msg_id for msg_id, _ in await pipe.control.accepted()]
    finally:
        await pipe.stop()
    assert counts == {"sent": 120}
    assert summary["unique_accepted"] == 120
    assert [m for m, n in Counter(accepted).items() if n > 1] == []
    assert_said_so(pipe, "dispatcher", while_failing)


async def test_a_scheduler_edit_whose_handler_fails_is_applied_afterwards(
    infra: Infra, tmp_path: Path
) -> None:
    pipe = Pipeline(infra, tmp_path, env=dict(NO_SAFETY_NETS))
    await pipe.start()
    try:
        tag = f"e{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(60, tag)
        now = datetime.now(UTC)
        body = {
            "date_time_start": fmt(now - timedelta(minutes=1)),
            "date_time_stop": fmt(now + timedelta(hours=20)),
            "text": "Edited after a failure",
            "tag": [tag],
        }
        # A window that opens in two hours: the messages wait, `scheduled`.
        window = {
            "time_interval_start": (now + timedelta(hours=2)).strftime("%H:%M"),
            "time_interval_end": (now + timedelta(hours=3)).strftime("%H:%M"),
        }
        mailing = await pipe.mailing(**body, **window)
        mailing_id = mailing["id"]
        await eventually(
            lambda: pipe.statuses(mailing_id),
            lambda counts: counts == {"scheduled": 60},
            timeout=60,
            what="the messages planned for the window",
        )
        # The edit's handler waits for this mailing's advisory lock, which we hold.
        statement = f"SELECT pg_advisory_xact_lock({0x6D61696C}, {mailing_id})"
        async with HeldLock(pipe, statement) as lock:
            response = await pipe.api.put(f"/api/v1/notifications/{mailing_id}/", json=body)
            assert response.status_code == 200, response.text
            await lock.fail_handler("scheduler")
            while_failing = await ready(pipe, "scheduler")
        counts = await pipe.settled(mailing_id, timeout=150)  # no window now: all go out
    finally:
        await pipe.stop()
    assert counts == {"sent": 60}
    assert_said_so(pipe, "scheduler", while_failing)
