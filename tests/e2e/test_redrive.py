"""Messages `queued` or `retrying` with no command left in Kafka are re-driven soon; a
healthy backlog waiting in Kafka is never re-published."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from tests.support.kafka_helpers import read_topic
from tests.support.pipeline import Pipeline, fmt, log_lines
from tests.support.polling import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.infra import Infra


async def truncate(bootstrap: str, topic: str) -> int:
    """Delete every record of `topic` (what retention does to old commands)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    try:
        (described,) = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        ends = await probe.end_offsets(partitions)
        await admin.delete_records({tp: RecordsToDelete(end) for tp, end in ends.items()})
        assert await probe.beginning_offsets(partitions) == ends
    finally:
        await probe.stop()
        await admin.close()
    return sum(ends.values())


def redriven(pipe: Pipeline, status: str) -> int:
    return sum(
        line["count"]
        for line in log_lines(pipe, "scheduler")
        if line.get("event") == "messages_redriven" and line.get("status") == status
    )


def body(tag: str) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "date_time_start": fmt(now - timedelta(minutes=1)),
        "date_time_stop": fmt(now + timedelta(minutes=15)),
        "text": "Re-driven",
        "tag": [tag],
    }


async def test_queued_and_retrying_messages_with_no_command_are_redriven(
    infra: Infra, tmp_path: Path
) -> None:
    # The retry delay leaves room to delete the retry commands before they come due
    # (with 6 s, a busy machine sometimes deleted them after the dispatcher had them).
    env = {"REDRIVE_INTERVAL_S": "1", "REDRIVE_GRACE_S": "2", "RETRY_DELAYS_S": "15"}
    pipe = Pipeline(infra, tmp_path, env=env, services=("api", "scheduler", "reporter"))
    await pipe.start()
    try:
        # queued: every command published while no dispatcher runs, then deleted.
        queued_tag = f"q{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(40, queued_tag)
        first = await pipe.mailing(**body(queued_tag))
        await eventually(
            lambda: pipe.statuses(first["id"]),
            lambda counts: counts == {"queued": 40},
            timeout=60,
            what="40 commands published",
        )
        deleted = await truncate(infra.kafka_bootstrap, f"{pipe.name}.message.send")
        pipe.launch("dispatcher")
        await pipe.wait_ready("dispatcher")
        first_counts = await pipe.settled(first["id"], timeout=120)
        queued_redriven = redriven(pipe, "queued")

        # retrying: the gateway fails, retry commands wait in their tier and are deleted.
        await pipe.control.set_faults(error_5xx=1.0)
        retry_tag = f"r{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(30, retry_tag)
        second = await pipe.mailing(**body(retry_tag))
        await eventually(
            lambda: pipe.statuses(second["id"]),
            lambda counts: counts == {"retrying": 30},
            timeout=90,
            interval=0.1,
            what="30 messages waiting in the retry tier",
        )
        await truncate(infra.kafka_bootstrap, f"{pipe.name}.message.send.retry.1")
        await pipe.control.set_faults(error_5xx=0.0)
        second_counts = await pipe.settled(second["id"], timeout=120)
        retrying_redriven = redriven(pipe, "retrying")
        summary = await pipe.control.summary()
        accepted = [msg_id for msg_id, _ in await pipe.control.accepted()]
    finally:
        await pipe.stop()
    assert deleted == 40
    assert first_counts == {"sent": 40}
    assert queued_redriven == 40
    assert second_counts == {"sent": 30}
    assert 0 < retrying_redriven <= 30  # the ones whose command was deleted
    assert summary["unique_accepted"] == 70
    assert [m for m, n in Counter(accepted).items() if n > 1] == []


async def test_a_healthy_backlog_is_not_republished(infra: Infra, tmp_path: Path) -> None:
    env = {
        "REDRIVE_INTERVAL_S": "0.5",
        "REDRIVE_GRACE_S": "1",
        # 300 messages at 20/s: a backlog of 15 s, so messages wait `queued` well past
        # the grace and the 5 s the probe below asks for, even on a slow machine.
        "PROVIDER_RATE_LIMIT": "20",
        "DISPATCHER_BATCH_SIZE": "20",
    }
    pipe = Pipeline(infra, tmp_path, env=env)
    await pipe.start()
    try:
        tag = f"b{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(300, tag)
        mailing = await pipe.mailing(**body(tag))
        # The backlog is real: messages stay `queued` far longer than the grace.
        await eventually(
            lambda: _old_queued(pipe, mailing["id"]),
            lambda count: count >= 50,
            timeout=60,
            interval=0.3,
            what="queued messages older than several re-drive passes",
        )
        counts = await pipe.settled(mailing["id"], timeout=150)
        await pipe.outbox_drained(f"{pipe.name}.message.send")
        commands = await read_topic(infra.kafka_bootstrap, f"{pipe.name}.message.send", expect=300)
    finally:
        await pipe.stop()
    assert counts == {"sent": 300}
    assert redriven(pipe, "queued") == 0
    assert len(commands) == 300  # one command per message, none re-published


async def _old_queued(pipe: Pipeline, mailing_id: int) -> int:
    rows = pipe.query(
        "SELECT count(*) FROM message WHERE mailing_id = %s AND status = 'queued' "
        "AND updated_at < now() - interval '5 seconds'",
        mailing_id,
    )
    return int(rows[0][0])
