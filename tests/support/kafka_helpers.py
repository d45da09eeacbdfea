"""Reading what really reached a Kafka topic, with the plain aiokafka consumer."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0, settle: float = 1.0
) -> list[tuple[str, dict[str, Any]]]:
    """All records of `topic` from the beginning as (key, value): wait until `expect`
    have arrived, then `settle` seconds more so that extra (duplicate) ones show too."""
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
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if settle_until is None and len(records) >= expect:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for partition_records in batch.values():
                for record in partition_records:
                    records.append((record.key.decode(), json.loads(record.value)))
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records
