"""Consumer lag of every Kafka consumer of a service, and the stall watchdog.

Every `CONSUMER_LAG_INTERVAL_S` the monitor takes, for each consumer of the process
(FastStream subscribers with a group), the partitions assigned to it right now and
sets `notifications_consumer_lag_messages{service,topic,partition}` to the partition's
end offset minus the group's committed offset (the log start when nothing is committed
yet). Each process reports only its own partitions, so two dispatchers never count the
same one twice: sum over instances for a group's lag.

The offsets are read with clients of the monitor's own (an admin client for committed
offsets, a group-less consumer for end offsets), never through the consumers being
watched: a wedged consumer must not blind the thing that watches it.

The watchdog: a partition that has lag, is not paused and whose committed offset has
not moved for `CONSUMER_STALL_S` is stalled (a known aiokafka failure mode: the consumer
keeps its assignment and heartbeats but stops handing out records). The process logs
`consumer_stalled` with the details and exits with `EXIT_CONSUMER_STALLED`, so its
supervisor restarts it. A paused partition is waiting on purpose (the dispatcher's
retry tiers hold a partition until `not_before`, the circuit breaker holds every
partition), and so is every partition of a consumer whose handler is failing and
backing off (`shared.consuming`); a partition without lag has nothing to do: all of
these restart the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import connection_options
from shared.logging import get_logger
from shared.metrics import CONSUMER_LAG
from shared.periodic import repeat

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

    from faststream.kafka import KafkaBroker

    from shared.service import Runtime
    from shared.settings import Settings

log = get_logger(__name__)

#: Exit status of a process stopped by the watchdog (EX_SOFTWARE).
EXIT_CONSUMER_STALLED = 70


class WatchedConsumer(Protocol):
    """What the monitor reads from a consumer: local state only, no network call."""

    def assignment(self) -> Collection[TopicPartition]: ...

    def paused(self) -> Collection[TopicPartition]: ...


class OffsetSource(Protocol):
    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset to be written in each partition."""
        ...

    async def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The first offset still in each partition."""
        ...

    async def committed(
        self, group: str, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offset per partition; None where nothing is committed."""
        ...


@dataclass(frozen=True, slots=True)
class PartitionSample:
    group: str
    topic: str
    partition: int
    committed: int  # the next offset the group will process
    end: int
    paused: bool

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass(frozen=True, slots=True)
class Stall:
    group: str
    topic: str
    partition: int
    committed: int
    lag: int
    stalled_s: float


@dataclass(frozen=True, slots=True)
class _Progress:
    committed: int
    since: float
    waiting: bool  # lag and not paused when last seen


class StallWatchdog:
    """Decides, from successive samples, which partitions are stalled.

    Pure: time comes in with each observation. A partition is a candidate while it has
    lag and is not paused; its clock starts at the first observation of a candidate
    streak and restarts whenever its committed offset moves. A newly assigned partition
    starts fresh.
    """

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._progress: dict[tuple[str, str, int], _Progress] = {}

    def observe(
        self,
        now: float,
        samples: Iterable[PartitionSample],
        unknown_groups: Collection[str] = (),
    ) -> list[Stall]:
        """Record one round of samples; return the partitions stalled as of `now`.

        Partitions of `unknown_groups` (their offsets could not be read this round) keep
        their clock; other partitions not sampled (revoked) are forgotten.
        """
        progress = {key: state for key, state in self._progress.items() if key[0] in unknown_groups}
        stalls: list[Stall] = []
        for sample in samples:
            key = (sample.group, sample.topic, sample.partition)
            waiting = sample.lag > 0 and not sample.paused
            state = self._progress.get(key)
            if (
                state is None
                or not waiting
                or not state.waiting
                or state.committed != sample.committed
            ):
                state = _Progress(sample.committed, now, waiting)
            progress[key] = state
            waited = now - state.since
            if self.stall_s > 0 and waiting and waited >= self.stall_s:
                stalls.append(
                    Stall(
                        group=sample.group,
                        topic=sample.topic,
                        partition=sample.partition,
                        committed=sample.committed,
                        lag=sample.lag,
                        stalled_s=round(waited, 1),
                    )
                )
        self._progress = progress
        return stalls


class LagMonitor:
    """Samples the consumers' partitions, sets the lag gauge, runs the watchdog."""

    def __init__(
        self,
        service: str,
        consumers: Callable[[], Iterable[tuple[str, WatchedConsumer]]],
        offsets: OffsetSource,
        watchdog: StallWatchdog,
        on_stall: Callable[[list[Stall]], None],
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.consumers = consumers
        self.offsets = offsets
        self.watchdog = watchdog
        self.on_stall = on_stall
        self.timeout_s = timeout_s
        self.clock = clock
        self._labels: set[tuple[str, str]] = set()

    async def sample(self) -> tuple[list[PartitionSample], set[str]]:
        """One reading of every assigned partition, and the groups that could not be read."""
        assigned: dict[str, tuple[set[TopicPartition], set[TopicPartition]]] = {}
        for group, consumer in self.consumers():
            partitions, paused = assigned.setdefault(group, (set(), set()))
            partitions.update(consumer.assignment())
            paused.update(consumer.paused())
        everything = sorted({tp for partitions, _ in assigned.values() for tp in partitions})
        if not everything:
            return [], set()
        async with asyncio.timeout(self.timeout_s):
            ends = await self.offsets.end_offsets(everything)
        samples: list[PartitionSample] = []
        unknown: set[str] = set()
        for group, (partitions, paused) in assigned.items():
            ordered = sorted(partitions)
            try:
                async with asyncio.timeout(self.timeout_s):
                    committed = await self.offsets.committed(group, ordered)
                    missing = [tp for tp in ordered if committed.get(tp) is None]
                    starts = await self.offsets.beginning_offsets(missing) if missing else {}
            except Exception as exc:
                log.warning("consumer_offsets_unreadable", group=group, error=repr(exc))
                unknown.add(group)
                continue
            for tp in ordered:
                if tp not in ends:
                    continue
                position = committed.get(tp)
                if position is None:
                    position = starts.get(tp, 0)
                samples.append(
                    PartitionSample(group, tp.topic, tp.partition, position, ends[tp], tp in paused)
                )
        return samples, unknown

    def publish(self, samples: Iterable[PartitionSample], unknown_groups: Collection[str]) -> None:
        """Set the gauge per partition; drop the series of partitions no longer ours."""
        fresh: set[tuple[str, str]] = set()
        for sample in samples:
            labels = (sample.topic, str(sample.partition))
            CONSUMER_LAG.labels(self.service, *labels).set(sample.lag)
            fresh.add(labels)
        if not unknown_groups:
            for topic, partition in self._labels - fresh:
                with contextlib.suppress(KeyError):
                    CONSUMER_LAG.remove(self.service, topic, partition)
            self._labels = fresh
        else:
            self._labels |= fresh

    async def refresh(self) -> list[Stall]:
        """Sample, publish, and return the stalled partitions (already logged)."""
        samples, unknown = await self.sample()
        self.publish(samples, unknown)
        stalls = self.watchdog.observe(self.clock(), samples, unknown)
        for stall in stalls:
            log.error(
                "consumer_stalled",
                group=stall.group,
                topic=stall.topic,
                partition=stall.partition,
                committed_offset=stall.committed,
                lag=stall.lag,
                stalled_s=stall.stalled_s,
                stall_limit_s=self.watchdog.stall_s,
                action="exiting so the supervisor restarts the process",
            )
        return stalls

    async def run(self, interval_s: float) -> None:
        """Refresh every `interval_s` until cancelled or a stall is found."""

        async def step() -> bool:
            stalls = await self.refresh()
            if stalls:
                self.on_stall(stalls)
            return bool(stalls)

        await repeat(
            step,
            interval_s,
            name="consumer_lag",
            failed="consumer_lag_unavailable",
            recovered="consumer_lag_available",
        )


def consumed_up_to(
    ends: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int | None],
    beginnings: Mapping[TopicPartition, int],
) -> bool:
    """Whether a group has committed every partition up to `ends` (offsets read earlier).

    A partition's log start counts as committed: records below it no longer exist, so
    none of them can still be waiting.
    """
    for tp, end in ends.items():
        if max(committed.get(tp) or 0, beginnings.get(tp, 0)) < end:
            return False
    return True


class KafkaOffsets:
    """OffsetSource on clients of its own: an admin client and a group-less consumer."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        common: dict[str, Any] = {
            **connection_options(settings),
            "client_id": f"{settings.kafka_client_id}-{client_id}-lag",
            "request_timeout_ms": int(settings.kafka_request_timeout_s * 1000),
        }
        self._admin = AIOKafkaAdminClient(**common)
        self._probe = AIOKafkaConsumer(**common, enable_auto_commit=False)

    async def start(self) -> None:
        await self._admin.start()
        await self._probe.start()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._probe.stop()
        with contextlib.suppress(Exception):
            await self._admin.close()

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(await self._probe.end_offsets(list(partitions)))

    async def partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        """Every partition of `topics` (those that exist), from the cluster's metadata."""
        described = await self._admin.describe_topics(list(topics))
        return sorted(
            TopicPartition(topic["topic"], partition["partition"])
            for topic in described
            if not topic.get("error_code")
            for partition in topic["partitions"]
        )

    async def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return dict(await self._probe.beginning_offsets(list(partitions)))

    async def committed(
        self, group: str, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        found = await self._admin.list_consumer_group_offsets(group, partitions=list(partitions))
        return {
            tp: (meta.offset if meta.offset >= 0 else None)
            for tp, meta in found.items()
            if tp in partitions
        }


def subscriber_consumers(broker: KafkaBroker) -> list[tuple[str, WatchedConsumer]]:
    """(group id, consumer) of every started FastStream subscriber that has a group."""
    found: list[tuple[str, WatchedConsumer]] = []
    for subscriber in broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        group = getattr(subscriber, "group_id", None)
        if consumer is not None and group:
            found.append((group, consumer))
    return found


class _BackingOff:
    """A consumer whose handler is failing and backing off (`shared.consuming`): it waits
    on purpose, like a paused one, so the watchdog must not take it for stalled."""

    def __init__(self, consumer: WatchedConsumer) -> None:
        self.consumer = consumer

    def assignment(self) -> Collection[TopicPartition]:
        return self.consumer.assignment()

    def paused(self) -> Collection[TopicPartition]:
        return self.consumer.assignment()


def exit_process(request_exit: Callable[[int], None] | None) -> Callable[[list[Stall]], None]:
    """What the watchdog does on a stall: stop the process with EXIT_CONSUMER_STALLED.

    `request_exit` is given by the runner (`shared.runner`): a graceful uvicorn
    shutdown, then that exit status. Without one (an app served some other way), the
    process sends itself SIGTERM: the server stops gracefully and the supervisor sees a
    process killed by a signal.
    """

    def stop(_: list[Stall]) -> None:
        if request_exit is not None:
            request_exit(EXIT_CONSUMER_STALLED)
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    return stop


async def watch_consumers(runtime: Runtime, request_exit: Callable[[int], None] | None) -> None:
    """The service's lag monitor and watchdog, for the life of the process."""
    settings = runtime.settings
    await runtime.broker_started.wait()
    delay = settings.consumer_lag_interval_s
    while True:  # the monitor's own clients, retried until Kafka lets them start
        offsets = KafkaOffsets(settings, runtime.service)
        try:
            await offsets.start()
            break
        except asyncio.CancelledError:
            await offsets.close()
            raise
        except Exception as exc:
            await offsets.close()
            log.warning("consumer_lag_start_failed", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)

    def consumers() -> list[tuple[str, WatchedConsumer]]:
        failing = runtime.consumers.failing_groups()
        return [
            (group, _BackingOff(consumer) if group in failing else consumer)
            for group, consumer in subscriber_consumers(runtime.broker)
        ]

    monitor = LagMonitor(
        runtime.service,
        consumers,
        offsets,
        StallWatchdog(settings.consumer_stall_s),
        exit_process(request_exit),
        timeout_s=settings.kafka_request_timeout_s,
    )
    try:
        await monitor.run(settings.consumer_lag_interval_s)
    finally:
        await offsets.close()
