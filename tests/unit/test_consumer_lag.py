"""Consumer lag and the stall watchdog: the watchdog's rules with a fake clock, the
monitor with fake consumers and offsets.

On the real Kafka broker: tests/integration/test_consumer_lag.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection, Sequence

from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from shared.consumer_lag import (
    LagMonitor,
    PartitionSample,
    Stall,
    StallWatchdog,
)

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
