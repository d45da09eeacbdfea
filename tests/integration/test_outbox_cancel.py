"""The relay stops when cancelled, even when the cancel lands just as it wakes up."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from shared.outbox import OutboxRelay

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@pytest.mark.parametrize("iterations", [0, 1, 2, 3])
async def test_a_cancel_at_the_moment_kafka_is_reached_stops_the_relay(
    sessions: async_sessionmaker[AsyncSession], iterations: int
) -> None:
    """asyncio.wait_for (Python 3.11) can swallow a cancel that arrives while the
    awaited event fires: the relay then ran on after shutdown and the process hung."""
    # No broker: with nothing in the outbox for these topics, the relay never publishes.
    relay = OutboxRelay(
        sessions,
        broker=None,  # type: ignore[arg-type]
        topics=["none.message.status"],
        service="test",
    )
    started = asyncio.Event()
    task = asyncio.create_task(relay.run(started))
    await asyncio.sleep(0.1)  # waiting for Kafka
    started.set()
    for _ in range(iterations):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done, "the relay ignored the cancel"
    assert task.cancelled()
