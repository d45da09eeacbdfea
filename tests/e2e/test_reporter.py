"""The reporter's per-mailing counters: each status event applied once, so at rest they
equal a fresh COUNT ... GROUP BY over the messages, whatever Kafka redelivers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text

from services.reporter.counters import Counters
from shared.events import (
    MessagesCreated,
    MessagesCreatedData,
    MessageStatusChanged,
    MessagesTransitioned,
    MessagesTransitionedData,
    MessageTransition,
    StatusData,
    StatusEvent,
)
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from tests.support.infra import Infra


async def _mailing_row(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session, session.begin():
        return int(
            await session.scalar(
                text(
                    "INSERT INTO mailing (start_at, stop_at, text) "
                    "VALUES (now(), now() + interval '1 hour', 'counted') RETURNING id"
                )
            )
        )


async def _counters(sessions: async_sessionmaker[AsyncSession], mailing_id: int) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(
            text("SELECT status, count FROM mailing_status_count WHERE mailing_id = :m"),
            {"m": mailing_id},
        )
        return {status: count for status, count in rows if count}


def _change(mailing_id: int, message_id: int, previous: str | None, to: str) -> StatusEvent:
    return MessageStatusChanged(
        payload=StatusData(
            message_id=message_id,
            mailing_id=mailing_id,
            client_id=message_id,
            status=to,
            previous_status=previous,
        )
    )


async def test_each_event_counts_once_however_often_it_arrives(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    mailing_id = await _mailing_row(sessions)
    counters = Counters(sessions)
    created = MessagesCreated(
        payload=MessagesCreatedData(mailing_id=mailing_id, counts={"scheduled": 3, "expired": 1})
    )
    story = [
        created,
        *(_change(mailing_id, m, "scheduled", "queued") for m in (1, 2, 3)),
        # A commit's worth at once, as the services write them now.
        MessagesTransitioned(
            payload=MessagesTransitionedData(
                mailing_id=mailing_id,
                status="sending",
                messages=[
                    MessageTransition(message_id=m, client_id=m, previous_status="queued")
                    for m in (1, 2)
                ],
            )
        ),
        _change(mailing_id, 1, "sending", "sent"),
        _change(mailing_id, 2, "sending", "retrying"),
    ]
    # A duplicate inside the batch, then the whole batch redelivered.
    first = await counters.apply([*story, story[3]])
    assert len(first.applied) == len(story)
    assert first.duplicates == 1
    again = await counters.apply(story)
    assert again.applied == []
    assert again.duplicates == len(story)
    assert await _counters(sessions, mailing_id) == {
        "expired": 1,
        "queued": 1,
        "sent": 1,
        "retrying": 1,
    }


async def test_events_of_a_deleted_mailing_change_nothing(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    mailing_id = await _mailing_row(sessions)
    async with sessions() as session, session.begin():
        await session.execute(text("DELETE FROM mailing WHERE id = :m"), {"m": mailing_id})
    counters = Counters(sessions)
    result = await counters.apply([_change(mailing_id, 1, "queued", "cancelled")])
    assert len(result.applied) == 1  # consumed, not retried forever
    assert await _counters(sessions, mailing_id) == {}


async def _status_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes]] = []
    try:
        while batch := await consumer.getmany(timeout_ms=1500):
            for partition_records in batch.values():
                records.extend((r.key, r.value) for r in partition_records)
    finally:
        await consumer.stop()
    return records


async def _reporter_metric(pipe: Pipeline, outcome: str) -> float:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{pipe.ports['reporter']}/metrics")).text
    prefix = "notifications_events_consumed_total{"
    total = 0.0
    for line in body.splitlines():
        if line.startswith(prefix) and f'outcome="{outcome}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_counters_equal_a_fresh_count_after_a_faulty_run_with_redeliveries(
    infra: Infra, tmp_path: Path
) -> None:
    """Gateway faults (retries), the reporter killed -9 mid-run (Kafka redelivers its
    uncommitted batch), and every status event published a second time: the counters
    still equal COUNT(*) GROUP BY status exactly."""
    faults = {"error_5xx": 0.25, "malformed": 0.05, "seed": 11}
    pipe = Pipeline(infra, tmp_path, faults=faults)
    await pipe.start()
    try:
        tag = f"r{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(400, tag)
        now = datetime.now(UTC)
        mailing = await pipe.mailing(
            date_time_start=(now - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S"),
            date_time_stop=(now + timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S"),
            text="Counted once",
            tag=[tag],
        )
        mailing_id = mailing["id"]
        await eventually(
            lambda: pipe.statuses(mailing_id),
            lambda counts: counts.get("sent", 0) >= 50,
            timeout=60,
            what="some messages sent",
        )
        pipe.kill("reporter")
        # Status events pile up while the reporter is down: more messages go out.
        sent_at_kill = (await pipe.statuses(mailing_id)).get("sent", 0)
        await eventually(
            lambda: pipe.statuses(mailing_id),
            lambda counts: (
                counts.get("sent", 0) > sent_at_kill
                or not {"scheduled", "queued", "sending", "retrying"} & set(counts)
            ),
            timeout=60,
            what="messages sent while the reporter is down",
        )
        pipe.launch("reporter")
        await pipe.wait_ready("reporter")
        counts = await pipe.settled(mailing_id, timeout=150)

        # Every status event once more, as a misbehaving producer or a replay would.
        topic = f"{pipe.name}.message.status"
        records = await _status_records(infra.kafka_bootstrap, topic)
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
        await producer.start()
        try:
            for key, value in records:
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()
        await eventually(
            lambda: _reporter_metric(pipe, "duplicate"),
            lambda seen: seen >= len(records),
            timeout=60,
            what="the republished events seen as duplicates",
        )
        counters = await pipe.counters(mailing_id)
        fresh = await pipe.statuses(mailing_id)
        body = (await pipe.api.get(f"/api/v1/notifications/{mailing_id}/")).json()
        summary = await pipe.control.summary()
    finally:
        await pipe.stop()
    assert counts == {"sent": 400}
    assert counters == fresh == {"sent": 400}
    assert body["messages_by_status"] == {"sent": 400}
    buckets = {"Created, waiting": 0, "Sent": 400, "Unable to deliver": 0}
    assert body["number_of_messages"] == buckets
    assert summary["by_answer"].get("5xx", 0) > 20  # the run really was faulty
    # Every message's changes (queued, sending, sent, and retries) were among them,
    # a commit's worth per record.
    named = [json.loads(value)["payload"].get("messages", []) for _, value in records]
    assert sum(len(messages) for messages in named) >= 400 * 3
    assert len(records) < 400
