"""Consumer lag and the stall watchdog.

Unit level: the watchdog's rules with a fake clock, the monitor with fake consumers and
offsets. On the real Kafka broker: the lag gauge follows a dispatcher's partitions, a
partition held by a retry tier is not stalled, and a scheduler whose handler is stuck
exits with status 70 after logging what stalled.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import psycopg
from aiokafka import AIOKafkaProducer, TopicPartition
from asgi_lifespan import LifespanManager
from prometheus_client import REGISTRY

from services.dispatcher.main import create_app as dispatcher_app
from services.scheduler.service import _MAILING_LOCK
from shared.consumer_lag import (
    EXIT_CONSUMER_STALLED,
    LagMonitor,
    PartitionSample,
    Stall,
    StallWatchdog,
)
from shared.events import MailingData, MailingUpdated, SendData, SendMessage
from shared.kafka import ensure_topics
from tests.support.infra import REPO, make_settings
from tests.support.pipeline import ensure_template, libpq
from tests.support.polling import eventually
from tools.infra import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.infra import Infra

STALL_S = 300.0


def sample(
    committed: int, end: int, *, paused: bool = False, partition: int = 0, group: str = "g"
) -> PartitionSample:
    return PartitionSample(group, "t", partition, committed, end, paused)


# --- the watchdog's rules -------------------------------------------------------------


def test_lag_without_progress_for_the_limit_is_a_stall() -> None:
    dog = StallWatchdog(STALL_S)
    assert dog.observe(0, [sample(10, 15)]) == []
    assert dog.observe(STALL_S - 1, [sample(10, 15)]) == []
    stalls = dog.observe(STALL_S, [sample(10, 20)])
    assert stalls == [Stall("g", "t", 0, committed=10, lag=10, stalled_s=STALL_S)]


def test_a_moving_committed_offset_restarts_the_clock() -> None:
    dog = StallWatchdog(STALL_S)
    dog.observe(0, [sample(10, 50)])
    dog.observe(200, [sample(11, 50)])  # one record processed
    assert dog.observe(STALL_S + 100, [sample(11, 50)]) == []
    assert dog.observe(200 + STALL_S, [sample(11, 50)])[0].stalled_s == STALL_S


def test_a_paused_partition_is_waiting_on_purpose_not_stalled() -> None:
    """A retry tier holds its partition until `not_before`; the breaker holds them all."""
    dog = StallWatchdog(STALL_S)
    for minute in range(0, 60):
        assert dog.observe(minute * 60.0, [sample(10, 15, paused=True)]) == []
    # Resumed and still not moving: the clock starts when it is first seen resumed.
    resumed = 60 * 60.0
    assert dog.observe(resumed, [sample(10, 15)]) == []
    assert dog.observe(resumed + STALL_S - 1, [sample(10, 15)]) == []
    assert dog.observe(resumed + STALL_S, [sample(10, 15)]) != []


def test_no_lag_is_never_a_stall() -> None:
    dog = StallWatchdog(STALL_S)
    for minute in range(0, 60):
        assert dog.observe(minute * 60.0, [sample(15, 15)]) == []


def test_lag_that_appears_late_gets_the_full_limit() -> None:
    dog = StallWatchdog(STALL_S)
    dog.observe(0, [sample(15, 15)])
    dog.observe(1000, [sample(15, 16)])  # a record arrives after a quiet period
    assert dog.observe(1000 + STALL_S - 1, [sample(15, 16)]) == []
    assert dog.observe(1000 + STALL_S, [sample(15, 16)]) != []


def test_zero_disables_the_watchdog() -> None:
    dog = StallWatchdog(0)
    for hour in range(0, 48):
        assert dog.observe(hour * 3600.0, [sample(10, 15)]) == []


def test_each_partition_has_its_own_clock_and_revoked_ones_are_forgotten() -> None:
    dog = StallWatchdog(STALL_S)
    dog.observe(0, [sample(10, 15, partition=0), sample(3, 9, partition=1)])
    dog.observe(100, [sample(11, 15, partition=0), sample(3, 9, partition=1)])
    stalls = dog.observe(STALL_S, [sample(11, 15, partition=0), sample(3, 9, partition=1)])
    assert [(s.partition, s.lag) for s in stalls] == [(1, 6)]
    # Partition 1 goes to another instance, then comes back: a fresh start.
    dog.observe(STALL_S + 10, [sample(11, 15, partition=0)])
    assert dog.observe(STALL_S + 20, [sample(3, 9, partition=1)]) == []


def test_a_group_whose_offsets_could_not_be_read_keeps_its_clock() -> None:
    dog = StallWatchdog(STALL_S)
    dog.observe(0, [sample(10, 15)])
    dog.observe(100, [], unknown_groups={"g"})
    assert dog.observe(STALL_S, [sample(10, 15)]) != []


# --- the monitor, with fake consumers and offsets -------------------------------------


class FakeConsumer:
    def __init__(self, *assigned: TopicPartition) -> None:
        self.assigned = set(assigned)
        self.held: set[TopicPartition] = set()

    def assignment(self) -> Collection[TopicPartition]:
        return frozenset(self.assigned)

    def paused(self) -> Collection[TopicPartition]:
        return set(self.held)


class FakeOffsets:
    def __init__(self) -> None:
        self.ends: dict[TopicPartition, int] = {}
        self.starts: dict[TopicPartition, int] = {}
        self.commits: dict[tuple[str, TopicPartition], int] = {}
        self.failing = False

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if self.failing:
            raise ConnectionError("broker unreachable")
        return {tp: self.ends.get(tp, 0) for tp in partitions}

    async def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {tp: self.starts.get(tp, 0) for tp in partitions}

    async def committed(
        self, group: str, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        return {tp: self.commits.get((group, tp)) for tp in partitions}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lag_value(service: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "notifications_consumer_lag_messages",
        {"service": service, "topic": topic, "partition": str(partition)},
    )


def monitor_for(
    service: str,
    consumers: list[tuple[str, FakeConsumer]],
    offsets: FakeOffsets,
    clock: Clock,
    stalled: list[list[Stall]],
) -> LagMonitor:
    return LagMonitor(
        service,
        lambda: consumers,
        offsets,
        StallWatchdog(STALL_S),
        stalled.append,
        clock=clock,
    )


async def test_the_gauge_shows_each_assigned_partition_and_forgets_revoked_ones() -> None:
    service = f"svc-{uuid.uuid4().hex[:6]}"
    send, retry = TopicPartition("send", 0), TopicPartition("send.retry.1", 2)
    consumer = FakeConsumer(send, retry)
    offsets = FakeOffsets()
    offsets.ends = {send: 120, retry: 7}
    offsets.commits = {("g-send", send): 100}  # the retry tier never committed yet
    offsets.starts = {retry: 2}  # retention removed offsets 0 and 1
    clock = Clock()
    stalled: list[list[Stall]] = []
    monitor = monitor_for(service, [("g-send", consumer)], offsets, clock, stalled)

    assert await monitor.refresh() == []
    assert lag_value(service, "send", 0) == 20
    assert lag_value(service, "send.retry.1", 2) == 5

    consumer.assigned = {send}  # a rebalance took the retry partition away
    offsets.commits[("g-send", send)] = 120
    await monitor.refresh()
    assert lag_value(service, "send", 0) == 0
    assert lag_value(service, "send.retry.1", 2) is None


async def test_run_calls_on_stall_once_with_the_stalled_partition_only() -> None:
    send, retry = TopicPartition("send", 0), TopicPartition("send.retry.1", 0)
    main, tier = FakeConsumer(send), FakeConsumer(retry)
    tier.held = {retry}  # waiting for not_before: lag, no progress, paused
    offsets = FakeOffsets()
    offsets.ends = {send: 50, retry: 9}
    offsets.commits = {("g-send", send): 40, ("g-retry", retry): 4}
    clock = Clock()
    stalled: list[list[Stall]] = []
    monitor = monitor_for(
        f"svc-{uuid.uuid4().hex[:6]}",
        [("g-send", main), ("g-retry", tier)],
        offsets,
        clock,
        stalled,
    )
    real_refresh = monitor.refresh
    rounds = 0

    async def refresh_and_tick() -> list[Stall]:
        nonlocal rounds
        rounds += 1
        offsets.failing = rounds in (3, 4)  # a Kafka hiccup in between: no decision
        try:
            return await real_refresh()
        finally:
            clock.now += 60

    monitor.refresh = refresh_and_tick  # type: ignore[method-assign]
    await asyncio.wait_for(monitor.run(interval_s=0), timeout=10)
    assert stalled == [[Stall("g-send", "send", 0, committed=40, lag=10, stalled_s=STALL_S)]]
    # Rounds at 0, 60, ... s; those at 120 and 180 s could not read the offsets.
    assert rounds == 6


async def test_a_consumer_not_started_yet_is_simply_not_measured() -> None:
    offsets = FakeOffsets()
    offsets.failing = True  # would raise if anything were asked
    monitor = monitor_for(f"svc-{uuid.uuid4().hex[:6]}", [], offsets, Clock(), [])
    assert await monitor.refresh() == []


# --- on the real broker ----------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return None


async def test_a_held_retry_partition_shows_its_lag_and_is_not_stalled(infra: Infra) -> None:
    settings = make_settings(
        infra, consumer_lag_interval_s=0.2, consumer_stall_s=1.0, retry_delays_s="1"
    )
    await ensure_topics(settings)
    tier = f"{settings.kafka_topic_prefix}message.send.retry.1"
    command = SendMessage(
        payload=SendData(
            message_id=987654,
            mailing_id=1,
            client_id=1,
            tier=1,
            not_before=datetime.now(UTC) + timedelta(hours=1),
        )
    )
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            tier, json.dumps(command.to_record()).encode(), key=command.key().encode()
        )
    finally:
        await producer.stop()

    exits: list[int] = []
    app = dispatcher_app(settings)
    app.state.request_exit = exits.append
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://svc"
        ) as client,
    ):

        async def scrape() -> str:
            return (await client.get("/metrics")).text

        def lag_of(text: str) -> float | None:
            return metric(
                text,
                "notifications_consumer_lag_messages",
                service="dispatcher",
                topic=tier,
                partition=str(sent.partition),
            )

        def measured(text: str) -> list[str]:
            return [
                line
                for line in text.splitlines()
                if line.startswith("notifications_consumer_lag_messages{")
                and f'topic="{settings.kafka_topic_prefix}' in line
            ]

        # Every partition of both dispatcher consumers (message.send, one retry tier) is
        # measured; only the held one has lag.
        text = await eventually(
            scrape, lambda t: len(measured(t)) == 2 * 3 and lag_of(t) == 1, timeout=60, what="lag"
        )
        assert sum(float(line.rpartition(" ")[2]) for line in measured(text)) == 1
        # Held for an hour: lag, no progress, five times the stall limit; no exit.
        loop = asyncio.get_running_loop()
        watched_until = loop.time() + 5 * settings.consumer_stall_s
        await eventually(
            scrape,
            lambda t: lag_of(t) == 1 and loop.time() >= watched_until,
            timeout=30,
            what="the held partition watched for five stall limits",
        )
        assert exits == []


async def test_a_stuck_handler_stops_the_process_with_status_70(
    infra: Infra, tmp_path: Path
) -> None:
    """The scheduler's mailing handler waits on the mailing's advisory lock, which the
    test holds: the record is never processed, so the process logs and exits."""
    database = f"stall_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(ensure_template, infra.database_url)
    with psycopg.connect(libpq(infra.database_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}" TEMPLATE notifications_template')
    prefix = f"stall{uuid.uuid4().hex[:8]}."
    log_file = tmp_path / "scheduler.log"
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": libpq(infra.database_url, database),
        "KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_PARTITIONS": "1",
        "SCHEDULER_PORT": str(port),
        "LOG_FILE": str(log_file),
        "CONSUMER_LAG_INTERVAL_S": "0.5",
        "CONSUMER_STALL_S": "3",
        "SHUTDOWN_GRACE_S": "2",
    }
    mailing_id = 424242
    lock = psycopg.connect(libpq(infra.database_url, database))
    process = subprocess.Popen(  # noqa: ASYNC220 (a child process for the test)
        [sys.executable, "-m", "services.scheduler"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "scheduler.stderr").open("wb"),
    )
    try:
        lock.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_MAILING_LOCK, mailing_id))

        async def ready() -> int:
            async with httpx.AsyncClient(timeout=5) as client:
                return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code

        await eventually(ready, lambda code: code == 200, timeout=60, what="scheduler ready")
        now = datetime.now(UTC)
        event = MailingUpdated(
            payload=MailingData(
                id=mailing_id,
                version=2,
                start_at=now,
                stop_at=now + timedelta(hours=1),
                text="stuck",
            )
        )
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                f"{prefix}mailing.events",
                json.dumps(event.to_record()).encode(),
                key=event.key().encode(),
            )
        finally:
            await producer.stop()
        code = await asyncio.wait_for(asyncio.to_thread(process.wait), timeout=90)
    finally:
        lock.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        with psycopg.connect(libpq(infra.database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert code == EXIT_CONSUMER_STALLED
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    stalled = [e for e in events if e["event"] == "consumer_stalled"]
    assert len(stalled) == 1
    assert stalled[0]["level"] == "error"
    assert stalled[0]["topic"] == f"{prefix}mailing.events"
    assert stalled[0]["group"] == f"{prefix}scheduler-mailings"
    assert stalled[0]["partition"] == 0
    assert stalled[0]["committed_offset"] == 0
    assert stalled[0]["lag"] == 1
    assert stalled[0]["stalled_s"] >= 3
    # It went down the graceful way: the service logged its own stop afterwards.
    names = [e["event"] for e in events]
    assert "service_stopped" in names[names.index("consumer_stalled") :]
