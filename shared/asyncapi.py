"""AsyncAPI documents: what each service consumes from Kafka and what it publishes.

FastStream generates the document from the service's broker: its subscribers (the
topics it really consumes) and its publishers. Publishing in this project goes through
the outbox relay with a raw `broker.publish`, so each service declares documentation
publishers for what it publishes (`Published`); nothing is sent through them.

A subscriber's message schema comes from its handler's signature. Handlers validate
records themselves (a batch must not fail as a whole for one unreadable record), so
they take the record unvalidated and name its schema with the `*Record` types below:
validation is skipped, the document shows the event model.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, assert_never

from faststream.specification import AsyncAPI
from pydantic import SkipValidation

from shared.events import ClientEvent, MailingEvent, SendMessage, StatusEvent

if TYPE_CHECKING:
    from collections.abc import Iterable

    from faststream.kafka import KafkaBroker
    from faststream.specification import Specification

    from shared.topics import Topics

    # The record as decoded from JSON, not validated: the handler validates it.
    MailingEventRecord = Any
    ClientEventRecord = Any
    SendCommandRecord = Any
    StatusEventRecord = Any
else:
    MailingEventRecord = SkipValidation[MailingEvent]
    ClientEventRecord = SkipValidation[ClientEvent]
    SendCommandRecord = SkipValidation[SendMessage]
    StatusEventRecord = SkipValidation[StatusEvent]


class Published(enum.Enum):
    """What a service may publish (through its outbox relay or directly)."""

    MAILING_EVENTS = "mailing events"
    CLIENT_EVENTS = "client events"
    SEND_COMMANDS = "send commands"
    RETRY_COMMANDS = "retry commands"
    DEAD_LETTERS = "dead letters"
    STATUS_EVENTS = "status events"


def published_channels(kind: Published, topics: Topics) -> list[tuple[str, Any, str]]:
    """(topic, message schema, description) of each channel a kind of publishing uses."""
    if kind is Published.MAILING_EVENTS:
        return [
            (
                topics.mailing_events,
                MailingEvent,
                "Every mailing write (created, updated, deleted), keyed by mailing id.",
            )
        ]
    if kind is Published.CLIENT_EVENTS:
        return [
            (
                topics.client_events,
                ClientEvent,
                "Every client write (created, updated, deleted), keyed by client id; a bulk "
                "import's `clients.imported`, one per 5,000 changed clients.",
            )
        ]
    if kind is Published.SEND_COMMANDS:
        return [
            (
                topics.message_send,
                SendMessage,
                "A due message to send, keyed by message id; published once the message "
                "is committed as `queued`.",
            )
        ]
    if kind is Published.RETRY_COMMANDS:
        return [
            (
                topics.message_send_retry(tier),
                SendMessage,
                f"Retry tier {tier}: a transient failure, to send again not before "
                "`payload.not_before`.",
            )
            for tier in range(1, topics.retry_tiers + 1)
        ]
    if kind is Published.DEAD_LETTERS:
        return [
            (
                topics.message_send_dlq,
                SendMessage,
                "Messages that failed for good (`failed`), with `payload.last_error`; "
                "replayable with `make replay-dlq`.",
            )
        ]
    if kind is Published.STATUS_EVENTS:
        return [
            (
                topics.message_status,
                StatusEvent,
                "One event per mailing per commit naming the messages moved to one status, "
                "each with its previous status and attempt (`messages.transitioned`; the "
                "one-message `message.status_changed` of earlier releases is still read); one per "
                "bulk creation step of a mailing's messages, with counts by initial status "
                "(`messages.created`); one per bulk status-change step (expiry at stop time, "
                "the re-plan of an edit), with counts per previous -> new status "
                "(`messages.status_changed`). Keyed by mailing id.",
            )
        ]
    assert_never(kind)


def declare_publishers(broker: KafkaBroker, topics: Topics, kinds: Iterable[Published]) -> None:
    """Register documentation publishers on `broker` for everything in `kinds`."""
    for kind in kinds:
        for topic, schema, description in published_channels(kind, topics):
            broker.publisher(
                topic, title=f"{topic}:publish", schema=schema, description=description
            )


def specification(broker: KafkaBroker, *, title: str, description: str) -> Specification:
    return AsyncAPI(
        broker, title=title, version="1.0.0", description=description
    ).to_specification()
