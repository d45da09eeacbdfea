"""A Kafka outage costs a few log lines, not thousands.

Every service runs as its own process (the api, the scheduler, the dispatcher with
consumers on every send tier, the reporter; each with its outbox relay and lag watcher)
on a Kafka broker of their own; the broker is stopped for about 15 s while the outbox
has events to publish, then started again on the same port with the same data. The
WARNING/ERROR lines each process wrote from the stop until it is ready again are
counted: a state change per component (lost, back with counts), not one per failed
attempt.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

from shared.events import ClientCreated, ClientData
from shared.outbox import add_events
from shared.topics import Topics
from tests.support.polling import eventually
from tests.support.service_processes import (
    SERVICES,
    launch,
    ready_status,
    service_env,
    service_ports,
)
from tools.infra import KafkaServer

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


async def test_a_kafka_outage_costs_a_few_log_lines(
    infra: Infra, tmp_path: Path, sessions: async_sessionmaker[AsyncSession]
) -> None:
    kafka = KafkaServer(tmp_path / "kafka")
    await asyncio.to_thread(kafka.start)
    prefix = f"t{uuid.uuid4().hex[:10]}."
    ports = service_ports()
    logs = {service: tmp_path / f"{service}.log" for service in SERVICES}
    env = service_env(
        infra.database_url,
        kafka.bootstrap,
        ports,
        KAFKA_TOPIC_PREFIX=prefix,
        KAFKA_PARTITIONS="3",
        LOG_LEVEL="INFO",
        READY_TIMEOUT_S="2",
        CONSUMER_LAG_INTERVAL_S="1",
        DEV_MODE="true",
        API_TOKENS="outage-token",
    )
    processes = launch(env, logs)
    topics = Topics(prefix=prefix, retry_tiers=4)

    async def all_ready() -> list[int]:
        return [await ready_status(port) for port in ports.values()]

    def settled() -> bool:
        # The clients' start-up complaints (no group coordinator yet) have settled.
        seen = [_events(path) for path in logs.values()]
        return all(s["kafka_connection_lost"] == s["kafka_connection_restored"] for s in seen)

    try:
        await eventually(all_ready, lambda codes: codes == [200] * 4, timeout=120, what="ready")
        await eventually(
            lambda: asyncio.sleep(0, settled()), bool, timeout=60, what="settled Kafka clients"
        )
        before = {service: len(_lines(path)) for service, path in logs.items()}

        await asyncio.to_thread(kafka.stop)
        # Events to publish while the broker is away: the relays keep trying.
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
            all_ready, lambda codes: codes == [200] * 4, timeout=120, what="ready again"
        )
        dispatcher_log = logs["dispatcher"]
        await eventually(
            lambda: asyncio.sleep(
                0, _events(dispatcher_log, after=before["dispatcher"])["kafka_connection_restored"]
            ),
            lambda count: count > 0,
            timeout=120,
            what="the dispatcher's recovery line",
        )
        await eventually(
            lambda: asyncio.sleep(0, settled()), bool, timeout=120, what="every recovery line"
        )
        exited = {service: p.poll() for service, p in processes.items() if p.poll() is not None}
        assert not exited, exited
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            await asyncio.to_thread(process.wait, 60)
        await asyncio.to_thread(kafka.stop)

    for service, path in logs.items():
        during = _lines(path)[before[service] :]
        loud = [line for line in during if line.get("level") in {"warning", "error", "critical"}]
        by_event = Counter(f"{line.get('level')} {line.get('event')}"[:100] for line in loud)
        print(
            f"{service}: outage of {OUTAGE_S:.0f} s: {len(loud)} WARNING/ERROR lines",
            dict(by_event),
        )
        assert len(loud) < MOST_LINES, (service, by_event.most_common(10))
        lost = by_event["warning kafka_connection_lost"]
        restored = [line for line in during if line.get("event") == "kafka_connection_restored"]
        assert len(restored) == lost, (service, by_event)
    # The dispatcher's consumers lose the broker: one line when it goes, one when back.
    during = _lines(dispatcher_log)[before["dispatcher"] :]
    restored = [line for line in during if line.get("event") == "kafka_connection_restored"]
    assert [line["event"] for line in during if line.get("event") == "kafka_connection_lost"] == [
        "kafka_connection_lost"
    ]
    assert len(restored) == 1
    assert restored[0]["down_s"] > 0
    assert restored[0]["suppressed"] > 0
