"""A Kafka outage costs a few log lines, not thousands.

A real dispatcher process (consumers on every send tier, the outbox relay, the lag
watcher) runs on its own Kafka broker; the broker is stopped for about 15 s while the
outbox has events to publish, then started again on the same port with the same data.
The WARNING/ERROR lines the process wrote from the stop until it is ready again are
counted: a state change per component (lost, back with counts), not one per failed
attempt.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx

from shared.events import ClientCreated, ClientData
from shared.outbox import add_events
from shared.topics import Topics
from tests.support.infra import REPO
from tests.support.polling import eventually
from tools.infra import KafkaServer, free_port

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from tests.support.infra import Infra

OUTAGE_S = 15.0
# Each component says once that it lost the broker and once that it is back, and may
# remind once a minute: a handful of lines, far below this.
MOST_LINES = 50


def _lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def _events(path: Path, after: int = 0) -> Counter[str]:
    return Counter(str(line.get("event")) for line in _lines(path)[after:])


async def _ready(port: int) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code


async def test_a_kafka_outage_costs_a_few_log_lines(
    infra: Infra, tmp_path: Path, sessions: async_sessionmaker[AsyncSession]
) -> None:
    kafka = KafkaServer(tmp_path / "kafka")
    await asyncio.to_thread(kafka.start)
    port = free_port()
    log_file = tmp_path / "dispatcher.log"
    prefix = f"t{uuid.uuid4().hex[:10]}."
    env = {
        **os.environ,
        "DATABASE_URL": infra.database_url,
        "KAFKA_BOOTSTRAP": kafka.bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_PARTITIONS": "3",
        "DISPATCHER_PORT": str(port),
        "LOG_FILE": str(log_file),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "READY_TIMEOUT_S": "2",
        "CONSUMER_LAG_INTERVAL_S": "1",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 (a child process for the test, not I/O)
        [sys.executable, "-m", "services.dispatcher"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    topics = Topics(prefix=prefix, retry_tiers=4)
    try:
        await eventually(lambda: _ready(port), lambda code: code == 200, timeout=90, what="ready")
        # The client's start-up complaints (no group coordinator yet) have settled.
        await eventually(
            lambda: asyncio.sleep(0, _events(log_file)),
            lambda seen: seen["kafka_connection_lost"] == seen["kafka_connection_restored"],
            timeout=60,
            what="a settled Kafka client",
        )
        before = len(_lines(log_file))

        await asyncio.to_thread(kafka.stop)
        # Events to publish while the broker is away: the relay keeps trying.
        async with sessions() as session, session.begin():
            await add_events(
                session,
                topics.client_events,
                [
                    ClientCreated(payload=ClientData(id=n, phone=f"7{n:010d}", operator_code=1))
                    for n in range(5)
                ],
            )
        await asyncio.sleep(OUTAGE_S)  # the outage itself, not a wait for an effect
        await asyncio.to_thread(kafka.start)

        await eventually(
            lambda: _ready(port), lambda code: code == 200, timeout=120, what="ready again"
        )
        await eventually(
            lambda: asyncio.sleep(0, _events(log_file, after=before)["kafka_connection_restored"]),
            lambda count: count > 0,
            timeout=120,
            what="the recovery line",
        )
        assert process.poll() is None
    finally:
        if process.poll() is None:
            process.terminate()
            await asyncio.to_thread(process.wait, 60)
        await asyncio.to_thread(kafka.stop)

    during = _lines(log_file)[before:]
    loud = [line for line in during if line.get("level") in {"warning", "error", "critical"}]
    by_event = Counter(f"{line.get('level')} {line.get('event')}"[:100] for line in loud)
    print(f"outage of {OUTAGE_S:.0f} s: {len(loud)} WARNING/ERROR lines", dict(by_event))
    restored = [line for line in during if line.get("event") == "kafka_connection_restored"]
    assert len(loud) < MOST_LINES, by_event.most_common(10)
    assert by_event["warning kafka_connection_lost"] == 1
    assert len(restored) == 1
    assert restored[0]["down_s"] > 0
    assert restored[0]["suppressed"] > 0
