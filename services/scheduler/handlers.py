"""Kafka entry points of the scheduler: parse, bind ids, call one function.

Events are hints: every handler reads the current rows, so a redelivered, duplicated
or reordered event does the same thing as the first. A handler that fails (PostgreSQL
down) commits nothing and is retried with backoff (`shared.consuming`); an unreadable
event is logged and skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from pydantic import ValidationError

from shared.asyncapi import ClientEventRecord, MailingEventRecord
from shared.events import (
    ClientsImported,
    ClientUpdated,
    MailingCreated,
    MailingDeleted,
    MailingStateChanged,
    MailingUpdated,
    client_event_adapter,
    mailing_event_adapter,
)
from shared.logging import bind_entities, clear_context, get_logger
from shared.metrics import EVENTS_CONSUMED

if TYPE_CHECKING:
    from services.scheduler.service import Scheduler
    from shared.service import Runtime

log = get_logger(__name__)
GROUP = "scheduler"


def _unreadable(topic: str, exc: ValidationError) -> None:
    log.error("event_unreadable", topic=topic, error=str(exc)[:300])
    EVENTS_CONSUMED.labels("scheduler", topic, "unreadable").inc()


def subscribe(runtime: Runtime, scheduler: Scheduler) -> None:
    broker, topics, health = runtime.broker, runtime.topics, runtime.consumers
    mailings_group = topics.group(f"{GROUP}-mailings")
    clients_group = topics.group(f"{GROUP}-clients")

    @broker.subscriber(
        topics.mailing_events,
        group_id=mailings_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="scheduler: mailing events",
        description="Activates started mailings at once; re-plans edited ones; cancels the "
        "pending messages of cancelled ones.",
    )
    @health.guard(mailings_group, topics.mailing_events)
    async def on_mailing_event(body: MailingEventRecord, message: KafkaMessage) -> None:
        clear_context()
        try:
            event = mailing_event_adapter.validate_python(body)
        except ValidationError as exc:
            _unreadable(topics.mailing_events, exc)
            return
        bind_entities(mailing_id=event.payload.id)
        if isinstance(event, MailingCreated):
            scheduler.wake()  # the poller activates it when its start has come
        elif isinstance(event, MailingUpdated):
            await scheduler.apply_edit(event.payload.id)
        elif isinstance(event, MailingStateChanged):
            # The row is the truth: a cancel (now or earlier) cancels what still waits;
            # a resume wakes the loop to fire what fell due meanwhile.
            await scheduler.cancel_pending(event.payload.id)
            scheduler.wake()
        elif isinstance(event, MailingDeleted):
            log.info("mailing_deleted_seen")  # its rows are gone with it
        EVENTS_CONSUMED.labels("scheduler", topics.mailing_events, "ok").inc()
        clear_context()

    @broker.subscriber(
        topics.client_events,
        group_id=clients_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="scheduler: client events",
        description="Re-plans a client's scheduled messages when its time zone changes "
        "(one client's update, or a bulk import's).",
    )
    @health.guard(clients_group, topics.client_events)
    async def on_client_event(body: ClientEventRecord, message: KafkaMessage) -> None:
        clear_context()
        try:
            event = client_event_adapter.validate_python(body)
        except ValidationError as exc:
            _unreadable(topics.client_events, exc)
            return
        if isinstance(event, ClientsImported):
            # The same re-plan as a `client.updated`, for each client whose zone changed.
            for client_id in event.payload.timezone_changed:
                bind_entities(client_id=client_id)
                await scheduler.replan_client(client_id)
            log.info(
                "clients_imported_seen",
                created=len(event.payload.created),
                updated=len(event.payload.updated),
                replanned=len(event.payload.timezone_changed),
            )
        else:
            bind_entities(client_id=event.payload.id)
            if isinstance(event, ClientUpdated):
                await scheduler.replan_client(event.payload.id)
        EVENTS_CONSUMED.labels("scheduler", topics.client_events, "ok").inc()
        clear_context()
