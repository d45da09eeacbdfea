"""Kafka entry points of the dispatcher: `message.send` and its retry tiers.

Each topic has a FastStream batch subscriber. Commands are handled in batches; the
offsets are committed only after the batch's outcomes are committed in PostgreSQL. A
batch that fails (PostgreSQL down during the claim or the record) commits nothing: its
partitions are sought back and the same commands are retried with backoff
(`shared.consuming`).

Waiting never happens inside a handler: a retry command whose `not_before` is still
ahead, and every command while the circuit breaker is open, is left in Kafka. The
handler seeks its partition back to that record and pauses the partition until the
time comes; the consumer keeps polling (and heart-beating) meanwhile.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from pydantic import ValidationError

from shared.asyncapi import SendCommandRecord
from shared.events import SendData, SendMessage
from shared.logging import clear_context, get_logger
from shared.metrics import EVENTS_CONSUMED

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiokafka import AIOKafkaConsumer, ConsumerRecord

    from services.dispatcher.breaker import CircuitBreaker
    from services.dispatcher.delivery import Delivery
    from shared.service import Runtime

log = get_logger(__name__)


class Pauser:
    """Pause a partition and resume it later, from the consumer's own loop."""

    def __init__(self) -> None:
        self.timers: dict[TopicPartition, asyncio.TimerHandle] = {}

    def hold(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, s: float) -> None:
        consumer.seek(tp, offset)
        consumer.pause(tp)
        if (timer := self.timers.pop(tp, None)) is not None:
            timer.cancel()
        self.timers[tp] = asyncio.get_running_loop().call_later(
            max(s, 0.05), self._resume, consumer, tp
        )

    def _resume(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        self.timers.pop(tp, None)
        try:
            if tp in consumer.assignment():
                consumer.resume(tp)
        except Exception as exc:  # a rebalance took it away meanwhile: nothing to resume
            log.debug("resume_skipped", partition=str(tp), error=repr(exc))


def split_ready(
    records: tuple[ConsumerRecord[Any, Any], ...],
    now: datetime,
    breaker_wait_s: float,
) -> tuple[list[SendData], dict[TopicPartition, tuple[int, float]]]:
    """Commands to deliver now, and per partition (offset, seconds) to hold from."""
    ready: list[SendData] = []
    hold: dict[TopicPartition, tuple[int, float]] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        if tp in hold:
            continue  # everything after a held record waits with it
        try:
            command = SendMessage.model_validate_json(record.value).payload
        except ValidationError as exc:
            log.error(
                "send_command_unreadable",
                partition=str(tp),
                offset=record.offset,
                error=str(exc)[:300],
            )
            continue
        wait = breaker_wait_s
        if command.not_before is not None:
            wait = max(wait, (command.not_before - now).total_seconds())
        if wait > 0:
            hold[tp] = (record.offset, wait)
        else:
            ready.append(command)
    return ready, hold


def subscribe(runtime: Runtime, delivery: Delivery, breaker: CircuitBreaker) -> None:
    broker, topics, settings = runtime.broker, runtime.topics, runtime.settings
    pauser = Pauser()
    tiers = [(topics.message_send, topics.group("dispatcher"))] + [
        (topics.message_send_retry(tier), topics.group(f"dispatcher-retry-{tier}"))
        for tier in range(1, topics.retry_tiers + 1)
    ]

    def make_handler(topic: str, group: str) -> Callable[..., Awaitable[None]]:
        # `bodies` is the batch; documented as what each record is (one command).
        @runtime.consumers.guard(group, topic)
        async def handle(bodies: SendCommandRecord, message: KafkaMessage) -> None:
            clear_context()
            records = message.raw_message
            if not isinstance(records, tuple):
                records = (records,)
            ready, hold = split_ready(records, datetime.now(UTC), breaker.wait_s())
            consumer: AIOKafkaConsumer = message.consumer
            for tp, (offset, seconds) in hold.items():
                pauser.hold(consumer, tp, offset, seconds)
            await delivery.process(ready)
            EVENTS_CONSUMED.labels("dispatcher", topic, "ok").inc(len(ready))
            clear_context()

        return handle

    for topic, group in tiers:
        broker.subscriber(
            topic,
            batch=True,
            max_records=settings.dispatcher_batch_size,
            batch_timeout_ms=50,
            group_id=group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            max_poll_interval_ms=600_000,
            title=f"dispatcher: {topic}",
            description="Send commands: claim, call the gateway, record the outcome.",
        )(make_handler(topic, group))
