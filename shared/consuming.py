"""Kafka handlers that fail: retry the same records, back off, say so.

Every subscriber of the project runs with `AckPolicy.NACK_ON_ERROR` and its handler
wrapped by `ConsumerHealth.guard`:

- success: FastStream commits the consumer's positions (`consumer.commit()`), so a
  record is committed only after the handler returned, i.e. after its effect committed
  in PostgreSQL;
- failure: the wrapper records it, waits (exponential backoff from
  `CONSUMER_RETRY_MIN_S`, doubling up to `CONSUMER_RETRY_MAX_S`), seeks every partition
  of the record (or batch) still assigned to the consumer back to its earliest record,
  and raises `NackMessage`: nothing is committed and the next poll hands out the same
  records. (Handlers take the `KafkaMessage`; without it FastStream's own nack seeks.)
  `NackMessage` is a FastStream "handled" exception: no ERROR line and no traceback per
  attempt; the wrapper logs one warning when a consumer starts failing and one info
  when it recovers, with the number of failed attempts.

The backoff waits inside the handler, so the consumer does not poll meanwhile; its
heartbeats go on (aiokafka sends them from a task of their own), and the wait is
capped well below `max_poll_interval_ms` (300 s by default, 600 s for the dispatcher
and the reporter), so the consumer keeps its group membership. A failing consumer is
also exempt from the stall watchdog (`shared.consumer_lag`): it is waiting on purpose.

While a consumer fails (until it succeeds, or a rebalance gives every failing partition
to another consumer, which retries them there), `/ready` answers 503 with a check
`consumer:<group>` naming the error, `notifications_consumer_failing_info{service,topic}`
is 1, and `notifications_consumer_handler_failures_total{service,topic}` counts the
attempts.

Records that can never be handled (unreadable JSON, an unknown event) are the handler's
business: it logs and skips them, since retrying them would block the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec

from aiokafka import TopicPartition
from faststream.exceptions import NackMessage
from faststream.kafka.message import KafkaMessage  # the class (faststream.kafka's is an alias)
from faststream.message import AckStatus

from shared.logging import get_logger
from shared.metrics import CONSUMER_FAILING, CONSUMER_HANDLER_FAILURES

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = get_logger(__name__)
P = ParamSpec("P")


def backoff_s(failures: int, minimum: float, maximum: float) -> float:
    """The wait after the `failures`-th failure in a row: doubling from `minimum`."""
    return min(maximum, minimum * 2.0 ** min(max(failures - 1, 0), 32))


def _kafka_message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> KafkaMessage | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, KafkaMessage):
            return value
    return None


def _partitions(message: KafkaMessage) -> dict[TopicPartition, int]:
    """Each partition of the record (or batch), with its earliest offset."""
    records = message.raw_message
    if not isinstance(records, tuple):
        records = (records,)
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        if tp not in earliest or record.offset < earliest[tp]:
            earliest[tp] = record.offset
    return earliest


def rewind(message: KafkaMessage) -> bool:
    """Seek each partition of the record (or batch) that is still assigned to this
    consumer back to its earliest record; partitions a rebalance took away are left to
    their new owner, which starts from the committed offset. False if it could not."""
    earliest = _partitions(message)
    consumer = message.consumer
    try:
        assigned = set(consumer.assignment())  # type: ignore[attr-defined]
        for tp, offset in earliest.items():
            if tp in assigned:
                consumer.seek(tp, offset)
    except Exception as exc:  # a consumer being stopped: nothing to rewind
        log.debug("consumer_rewind_failed", error=repr(exc))
        return False
    return True


@dataclass
class Failure:
    topic: str
    error: str
    attempts: int
    since: float
    # The failing records' consumer and partitions, when the handler gave its message.
    consumer: Any = None
    partitions: frozenset[TopicPartition] = frozenset()

    def handed_over(self) -> bool:
        """Whether a rebalance gave every failing partition to another consumer: the
        records are retried there, and this consumer has nothing left failing."""
        if self.consumer is None or not self.partitions:
            return False
        try:
            return not (self.partitions & set(self.consumer.assignment()))
        except Exception:
            return False


@dataclass
class ConsumerHealth:
    """The process's failing consumers, by group id; read by `/ready`."""

    service: str
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0
    failing: dict[str, Failure] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def checks(self) -> dict[str, str]:
        """`/ready` checks of the failing consumers: `consumer:<group>` -> reason."""
        self._forget_handed_over()
        return {
            f"consumer:{group}": (
                f"failing on {failure.topic} ({failure.attempts} attempts): {failure.error}"
            )[:300]
            for group, failure in self.failing.items()
        }

    def failing_groups(self) -> set[str]:
        self._forget_handed_over()
        return set(self.failing)

    def _forget_handed_over(self) -> None:
        for group, failure in list(self.failing.items()):
            if failure.handed_over():
                self._succeeded(group, failure.topic, handed_over=True)

    def stop(self) -> None:
        """Shutdown: end backoff waits now (the records stay uncommitted)."""
        self.stopping.set()

    def guard(
        self, group: str, topic: str
    ) -> Callable[[Callable[P, Awaitable[None]]], Callable[P, Awaitable[None]]]:
        """Wrap a FastStream handler: on failure back off, then nack (see module doc)."""

        CONSUMER_FAILING.labels(self.service, topic).set(0)

        def decorate(handler: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
            @functools.wraps(handler)  # FastStream reads the signature through __wrapped__
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
                try:
                    await handler(*args, **kwargs)
                except (asyncio.CancelledError, NackMessage):
                    raise
                except Exception as exc:
                    message = _kafka_message(args, kwargs)
                    await self._failed(group, topic, exc, message)
                    if message is not None and rewind(message):
                        # Done here, partition by partition: FastStream's own nack
                        # stops at the first partition a rebalance took away.
                        message.committed = AckStatus.NACKED
                    raise NackMessage() from exc
                self._succeeded(group, topic)

            return guarded

        return decorate

    async def _failed(
        self, group: str, topic: str, exc: Exception, message: KafkaMessage | None
    ) -> None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{type(exc).__name__}: {reason}"[:300] if reason else type(exc).__name__
        failure = self.failing.get(group)
        if failure is None:
            failure = self.failing[group] = Failure(topic, error, 0, time.monotonic())
            log.warning(
                "consumer_failing",
                group=group,
                topic=topic,
                error=error,
                action="retrying the same records with backoff; nothing is committed",
            )
        failure.attempts += 1
        failure.error = error
        if message is not None:
            failure.consumer = message.consumer
            failure.partitions = frozenset(_partitions(message))
        CONSUMER_HANDLER_FAILURES.labels(self.service, topic).inc()
        CONSUMER_FAILING.labels(self.service, topic).set(1)
        wait = backoff_s(failure.attempts, self.retry_min_s, self.retry_max_s)
        log.debug("consumer_retry_wait", group=group, topic=topic, wait_s=wait)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.stopping.wait()

    def _succeeded(self, group: str, topic: str, *, handed_over: bool = False) -> None:
        failure = self.failing.pop(group, None)
        if failure is None:
            return
        CONSUMER_FAILING.labels(self.service, topic).set(0)
        log.info(
            "consumer_recovered",
            group=group,
            topic=topic,
            failed_attempts=failure.attempts,
            failing_s=round(time.monotonic() - failure.since, 1),
            **({"handed_over": True} if handed_over else {}),
        )
