"""Event and command schemas carried over Kafka.

Every record is an envelope (`event_id`, `type`, `occurred_at`, `schema_version`,
`payload`). Events are named in the past tense, commands in the imperative. A consumer
parses a topic's records with that topic's union (discriminated by `type`) and ignores
fields it does not know, so producers can add fields without breaking older consumers;
a breaking change bumps `schema_version`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

P = TypeVar("P", bound=BaseModel)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    schema_version: int = 1
    payload: P

    def key(self) -> str:
        """The Kafka key: the id of the entity whose events must stay in order."""
        raise NotImplementedError

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- mailings ------------------------------------------------------------------------


class MailingData(Payload):
    id: int
    version: int
    start_at: AwareDatetime
    stop_at: AwareDatetime
    text: str
    filter_tags: list[str] = []
    filter_codes: list[int] = []
    window_start: time | None = None
    window_end: time | None = None


class MailingRef(Payload):
    id: int
    version: int


class MailingStateData(Payload):
    id: int
    version: int
    state: str
    previous_state: str


class _MailingEvent(Envelope[P]):
    def key(self) -> str:
        return str(self.payload.id)  # type: ignore[attr-defined]


class MailingCreated(_MailingEvent[MailingData]):
    type: Literal["mailing.created"] = "mailing.created"


class MailingUpdated(_MailingEvent[MailingData]):
    type: Literal["mailing.updated"] = "mailing.updated"


class MailingDeleted(_MailingEvent[MailingRef]):
    type: Literal["mailing.deleted"] = "mailing.deleted"


class MailingStateChanged(_MailingEvent[MailingStateData]):
    """An operator paused, resumed or cancelled the mailing (its content is unchanged)."""

    type: Literal["mailing.state_changed"] = "mailing.state_changed"


MailingEvent = Annotated[
    MailingCreated | MailingUpdated | MailingDeleted | MailingStateChanged,
    Field(discriminator="type"),
]

# --- clients -------------------------------------------------------------------------


class ClientData(Payload):
    id: int
    phone: str
    operator_code: int
    tags: list[str] = []
    timezone: str = "UTC"


class ClientRef(Payload):
    id: int


class _ClientEvent(Envelope[P]):
    def key(self) -> str:
        return str(self.payload.id)  # type: ignore[attr-defined]


class ClientCreated(_ClientEvent[ClientData]):
    type: Literal["client.created"] = "client.created"


class ClientUpdated(_ClientEvent[ClientData]):
    type: Literal["client.updated"] = "client.updated"


class ClientDeleted(_ClientEvent[ClientRef]):
    type: Literal["client.deleted"] = "client.deleted"


CLIENTS_IMPORTED = "clients.imported"


class ClientsImportedData(Payload):
    # Ids of the clients one bulk-import step created and updated (time zone or tags),
    # and those of the updated ones whose time zone changed (their scheduled messages
    # are re-planned, as after a `client.updated`).
    created: list[int] = []
    updated: list[int] = []
    timezone_changed: list[int] = []


class ClientsImported(Envelope[ClientsImportedData]):
    """Clients written in bulk (`POST /api/v1/clients/import/`): one event per step of
    at most 5,000 changed clients, not one per client. Keyed by the step's lowest id.
    Written by SQL in the import's transaction (`services/api/imports.py`)."""

    type: Literal["clients.imported"] = "clients.imported"

    def key(self) -> str:
        ids = self.payload.created + self.payload.updated
        return str(min(ids)) if ids else "0"


ClientEvent = Annotated[
    ClientCreated | ClientUpdated | ClientDeleted | ClientsImported, Field(discriminator="type")
]

# --- delivery ------------------------------------------------------------------------


class SendData(Payload):
    message_id: int
    mailing_id: int
    client_id: int
    # The attempt this command is for; the dispatcher's claim fences on it.
    attempt: int = 0
    # Retry tiers: do not send before this instant.
    not_before: AwareDatetime | None = None
    tier: int = 0
    last_error: str | None = None
    # Transient failures so far (the dispatcher's attempts cap); held attempts (an open
    # breaker, a gateway configuration fault, a lease nearly spent) are not counted.
    failures: int = 0


class SendMessage(Envelope[SendData]):
    type: Literal["message.send"] = "message.send"

    def key(self) -> str:
        return str(self.payload.message_id)


class StatusData(Payload):
    message_id: int
    mailing_id: int
    client_id: int
    status: str
    previous_status: str | None = None
    attempt: int = 0
    error: str | None = None
    at: AwareDatetime = Field(default_factory=utcnow)


class MessageStatusChanged(Envelope[StatusData]):
    type: Literal["message.status_changed"] = "message.status_changed"

    def key(self) -> str:
        return str(self.payload.mailing_id)


class MessageTransition(Payload):
    """One message of a `messages.transitioned` event."""

    message_id: int
    client_id: int
    previous_status: str | None = None
    attempt: int = 0


class MessagesTransitionedData(Payload):
    mailing_id: int
    # Every message below moved from its `previous_status` to this one.
    status: str
    error: str | None = None
    at: AwareDatetime = Field(default_factory=utcnow)
    messages: list[MessageTransition]


class MessagesTransitioned(Envelope[MessagesTransitionedData]):
    """Status changes of named messages of one mailing, made in one transaction to one
    status: one record per commit (a dispatcher's group of outcomes, a claim, a firing
    step), each message still named with its previous status and attempt. It says what
    `message.status_changed` says, for many messages at once: a record, an outbox row
    and a consumer's decode per group, not per message."""

    type: Literal["messages.transitioned"] = "messages.transitioned"

    def key(self) -> str:
        return str(self.payload.mailing_id)


class MessagesCreatedData(Payload):
    mailing_id: int
    # Rows inserted by one audience-expansion step, by initial status
    # (`scheduled`, or `expired` when no allowed time is left before stop).
    counts: dict[str, int]


class MessagesCreated(Envelope[MessagesCreatedData]):
    """Messages created in bulk: one event per expansion step, not one per message
    (a million-client audience would otherwise mean a million events)."""

    type: Literal["messages.created"] = "messages.created"

    def key(self) -> str:
        return str(self.payload.mailing_id)


class StatusCount(Payload):
    previous_status: str
    status: str
    count: int
    error: str | None = None


class MessagesStatusChangedData(Payload):
    mailing_id: int
    # Messages moved by one bounded step, by (previous status -> new status).
    changes: list[StatusCount]
    at: AwareDatetime = Field(default_factory=utcnow)


class MessagesStatusChanged(Envelope[MessagesStatusChangedData]):
    """Status changes in bulk (expiry at stop time, the re-plan of an edit): one event
    per step of at most `SCHEDULER_BULK_BATCH_SIZE` messages, with counts, not one per
    message. Each message of the step changed exactly once, in the step's transaction."""

    type: Literal["messages.status_changed"] = "messages.status_changed"

    def key(self) -> str:
        return str(self.payload.mailing_id)


# What `message.status` carries: status changes of named messages (one by one, from
# earlier releases, or a commit's worth at once), bulk creations and bulk status changes.
StatusEvent = Annotated[
    MessageStatusChanged | MessagesTransitioned | MessagesCreated | MessagesStatusChanged,
    Field(discriminator="type"),
]

mailing_event_adapter: TypeAdapter[MailingEvent] = TypeAdapter(MailingEvent)
client_event_adapter: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)
status_event_adapter: TypeAdapter[StatusEvent] = TypeAdapter(StatusEvent)
