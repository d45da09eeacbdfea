"""Reading what really reached a Kafka topic, with the plain aiokafka consumer."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0
) -> list[tuple[str, dict[str, Any]]]:
    """All records of `topic` from the beginning as (key, value): wait until `expect`
    have arrived, then read on to the end offsets the topic had at that moment, so that
    every extra (duplicate) record written before the expected ones were in shows too.

    A duplicate written later still escapes: to rule one out, wait first for an event
    that follows it (a later record of the same producer), not for a length of time."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[tuple[str, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + timeout
        ends: dict[TopicPartition, int] | None = None
        while time.monotonic() < deadline:
            if ends is None and len(records) >= expect:
                partitions = consumer.partitions_for_topic(topic) or set()
                ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
            if ends is not None and all(
                await asyncio.gather(*(_reached(consumer, tp, end) for tp, end in ends.items()))
            ):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for partition_records in batch.values():
                for record in partition_records:
                    records.append((record.key.decode(), json.loads(record.value)))
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records


async def _reached(consumer: AIOKafkaConsumer, partition: TopicPartition, end: int) -> bool:
    if end == 0:
        return True
    return int(await consumer.position(partition)) >= end
