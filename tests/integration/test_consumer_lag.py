"""Consumer lag and the stall watchdog on the real Kafka broker: the lag gauge follows a
dispatcher's partitions, a partition held by a retry tier is not stalled, and a scheduler
whose handler is stuck exits with status 70 after logging what stalled.

The watchdog's rules and the monitor with fakes: tests/unit/test_consumer_lag.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import psycopg
from aiokafka import AIOKafkaProducer
from asgi_lifespan import LifespanManager

from services.dispatcher.main import create_app as dispatcher_app
from services.scheduler.convergence import MAILING_LOCK
from shared.consumer_lag import EXIT_CONSUMER_STALLED
from shared.events import MailingData, MailingUpdated, SendData, SendMessage
from shared.kafka import ensure_topics
from tests.support.databases import libpq
from tests.support.infra import REPO, make_settings
from tests.support.pipeline import ensure_template
from tests.support.polling import eventually
from tools.infra import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.infra import Infra


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
        lock.execute("SELECT pg_advisory_xact_lock(%s, %s)", (MAILING_LOCK, mailing_id))

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
