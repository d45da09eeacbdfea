"""Kafka entry points of the scheduler: parse, bind ids, call one function.

Events are hints: every handler reads the current rows, so a redelivered, duplicated
or reordered event does the same thing as the first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faststream import AckPolicy

from shared.asyncapi import ClientEventRecord, MailingEventRecord
from shared.events import (
    ClientUpdated,
    MailingCreated,
    MailingDeleted,
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


def subscribe(runtime: Runtime, scheduler: Scheduler) -> None:
    broker, topics = runtime.broker, runtime.topics

    @broker.subscriber(
        topics.mailing_events,
        group_id=topics.group(f"{GROUP}-mailings"),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        title="scheduler: mailing events",
        description="Activates started mailings at once; re-plans edited ones.",
    )
    async def on_mailing_event(body: MailingEventRecord) -> None:
        clear_context()
        event = mailing_event_adapter.validate_python(body)
        bind_entities(mailing_id=event.payload.id)
        if isinstance(event, MailingCreated):
            scheduler.wake()  # the poller activates it when its start has come
        elif isinstance(event, MailingUpdated):
            await scheduler.apply_edit(event.payload.id)
        elif isinstance(event, MailingDeleted):
            log.info("mailing_deleted_seen")  # its rows are gone with it
        EVENTS_CONSUMED.labels("scheduler", topics.mailing_events, "ok").inc()
        clear_context()

    @broker.subscriber(
        topics.client_events,
        group_id=topics.group(f"{GROUP}-clients"),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        title="scheduler: client events",
        description="Re-plans a client's scheduled messages when its time zone changes.",
    )
    async def on_client_event(body: ClientEventRecord) -> None:
        clear_context()
        event = client_event_adapter.validate_python(body)
        bind_entities(client_id=event.payload.id)
        if isinstance(event, ClientUpdated):
            await scheduler.replan_client(event.payload.id)
        EVENTS_CONSUMED.labels("scheduler", topics.client_events, "ok").inc()
        clear_context()
