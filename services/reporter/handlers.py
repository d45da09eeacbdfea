"""Kafka entry point of the reporter: `message.status`, in batches.

A batch is parsed, applied to the counters in one transaction, then its offsets are
committed (at-least-once; the counters de-duplicate by event id). A batch that fails
(PostgreSQL down) commits nothing and is retried with backoff (`shared.consuming`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from pydantic import ValidationError

from services.reporter.counters import log_applied
from shared.asyncapi import StatusEventRecord
from shared.events import StatusEvent, status_event_adapter
from shared.logging import clear_context, get_logger
from shared.metrics import EVENTS_CONSUMED

if TYPE_CHECKING:
    from services.reporter.counters import Counters
    from shared.service import Runtime

log = get_logger(__name__)


def parse(records: tuple[Any, ...]) -> list[StatusEvent]:
    """The batch's events; an unreadable record is logged and left out (it cannot
    become readable by being retried)."""
    events: list[StatusEvent] = []
    for record in records:
        try:
            events.append(status_event_adapter.validate_json(record.value))
        except ValidationError as exc:
            log.error(
                "status_event_unreadable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(exc)[:300],
            )
    return events


def subscribe(runtime: Runtime, counters: Counters) -> None:
    broker, topics, settings = runtime.broker, runtime.topics, runtime.settings
    topic = topics.message_status
    group = topics.group("reporter")

    @broker.subscriber(
        topic,
        batch=True,
        max_records=settings.reporter_batch_size,
        batch_timeout_ms=200,
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_poll_interval_ms=600_000,
        title="reporter: message statuses",
        description="Per-mailing counts by status, applied once per event id.",
    )
    # `bodies` is the batch; documented as what each record is (one event).
    @runtime.consumers.guard(group, topic)
    async def on_status_events(bodies: StatusEventRecord, message: KafkaMessage) -> None:
        clear_context()
        records = message.raw_message
        if not isinstance(records, tuple):
            records = (records,)
        events = parse(records)
        result = await counters.apply(events)
        log_applied(result.applied)
        if result.duplicates:
            log.info("status_events_duplicate", count=result.duplicates)
        EVENTS_CONSUMED.labels("reporter", topic, "ok").inc(len(result.applied))
        EVENTS_CONSUMED.labels("reporter", topic, "duplicate").inc(result.duplicates)
