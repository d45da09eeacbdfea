"""The data model: the record of every client, mailing and message.

Constraint names follow one naming convention so migrations stay reviewable.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    Time,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy import (
    text as sql,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

if TYPE_CHECKING:
    from collections.abc import Iterable

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> Any:
    return func.now()


class MessageStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


PENDING_STATUSES = (
    MessageStatus.SCHEDULED,
    MessageStatus.QUEUED,
    MessageStatus.SENDING,
    MessageStatus.RETRYING,
)

# Claimable by a dispatcher: a send command for each is in Kafka (`message.send` for
# `queued`, a retry tier for `retrying`).
WAITING_FOR_DISPATCH = (MessageStatus.QUEUED, MessageStatus.RETRYING)


class MailingState(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    FINISHED = "finished"
    # An operator's: `paused` sends nothing until resumed; `cancelled` never sends again.
    PAUSED = "paused"
    CANCELLED = "cancelled"


# Not sending: the scheduler fires none of their messages, the dispatcher claims none.
HALTED_STATES = (MailingState.PAUSED, MailingState.CANCELLED)


def sql_literal(member: enum.StrEnum) -> str:
    """A status or state as an SQL literal, for SQL text: names come from their enum."""
    return f"'{member.value}'"


def sql_in(column: str, members: Iterable[enum.StrEnum]) -> str:
    """`column IN ('a','b')` for SQL text, the names taken from their enum."""
    return f"{column} IN ({','.join(sql_literal(member) for member in members)})"


class Tag(Base):
    __tablename__ = "tag"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class ClientTag(Base):
    __tablename__ = "client_tag"

    client_id: Mapped[int] = mapped_column(
        ForeignKey("client.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(
        ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Client(Base):
    """A recipient. Deleting one keeps the row (`deleted_at`) so sent history stays."""

    __tablename__ = "client"
    __table_args__ = (
        CheckConstraint(r"phone ~ '^7[0-9]{10}$'", name="phone_format"),
        # A phone is unique among live clients; a deleted client's number can be reused.
        Index(
            "uq_client_phone_live",
            "phone",
            unique=True,
            postgresql_where=sql("deleted_at IS NULL"),
        ),
        Index(
            "ix_client_operator_code_live",
            "operator_code",
            postgresql_where=sql("deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    phone: Mapped[str] = mapped_column(String(11))
    # Digits 2-4 of the phone: derived by the database, never written by anyone.
    operator_code: Mapped[int] = mapped_column(
        SmallInteger, Computed("CAST(substr(phone, 2, 3) AS smallint)", persisted=True)
    )
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    tags: Mapped[list[Tag]] = relationship(secondary="client_tag", order_by=Tag.name)


class AudienceZoneCount(Base):
    """Live clients per (time zone, operator code, sorted tag ids), as signed deltas kept
    by triggers on client and client_tag (migration 0005): a key's count is the sum of
    its rows. Read by the audience preview instead of the clients themselves."""

    __tablename__ = "audience_zone_count"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    timezone: Mapped[str] = mapped_column(String(64))
    operator_code: Mapped[int] = mapped_column(SmallInteger)
    tag_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    clients: Mapped[int] = mapped_column(BigInteger)


class AudienceTagCount(Base):
    """`AudienceZoneCount` without the zone: a few rows per code, for counts per tag."""

    __tablename__ = "audience_tag_count"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    operator_code: Mapped[int] = mapped_column(SmallInteger)
    tag_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    clients: Mapped[int] = mapped_column(BigInteger)


class Mailing(Base):
    __tablename__ = "mailing"
    __table_args__ = (
        CheckConstraint("stop_at > start_at", name="stop_after_start"),
        CheckConstraint("(window_start IS NULL) = (window_end IS NULL)", name="window_both"),
        CheckConstraint(
            "window_start IS NULL OR window_start <> window_end", name="window_not_empty"
        ),
        CheckConstraint(sql_in("state", MailingState), name="state_known"),
        CheckConstraint("length(text) > 0", name="text_not_empty"),
        # The scheduler's activation poller: scheduled mailings by start time.
        Index(
            "ix_mailing_start_scheduled",
            "start_at",
            postgresql_where=sql(f"state = {sql_literal(MailingState.SCHEDULED)}"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stop_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    text: Mapped[str] = mapped_column(Text)
    filter_tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), server_default=sql("'{}'"))
    filter_codes: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger), server_default=sql("'{}'"))
    window_start: Mapped[time | None] = mapped_column(Time)
    window_end: Mapped[time | None] = mapped_column(Time)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    state: Mapped[str] = mapped_column(String(16), server_default=MailingState.SCHEDULED.value)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class Message(Base):
    """One message per (mailing, client); every status change is a compare-and-set."""

    __tablename__ = "message"
    __table_args__ = (
        # A client gets at most one message per mailing (delivery rule 5, docs/architecture.md).
        UniqueConstraint("mailing_id", "client_id"),
        CheckConstraint(sql_in("status", MessageStatus), name="status_known"),
        # Due-time poller: scheduled messages by due time.
        Index(
            "ix_message_due_scheduled",
            "due_at",
            postgresql_where=sql(f"status = {sql_literal(MessageStatus.SCHEDULED)}"),
        ),
        # Lease recovery: messages stuck in `sending`.
        Index(
            "ix_message_lease_sending",
            "lease_until",
            postgresql_where=sql(f"status = {sql_literal(MessageStatus.SENDING)}"),
        ),
        # Statistics and message lists of one mailing, by status.
        Index("ix_message_mailing_id_status", "mailing_id", "status"),
        # Client deletion cancels the client's pending messages.
        Index(
            "ix_message_client_pending",
            "client_id",
            postgresql_where=sql(sql_in("status", PENDING_STATUSES)),
        ),
        # The scheduler's re-drive: waiting messages by last change.
        Index(
            "ix_message_waiting_updated",
            "status",
            "updated_at",
            postgresql_where=sql(sql_in("status", WAITING_FOR_DISPATCH)),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # References kept per statement, not by foreign keys (checked per inserted row):
    # deleting a mailing deletes its messages, a client with messages cannot be deleted
    # (triggers, migration 0008); the scheduler inserts messages from existing clients
    # under a key-share lock on their mailing row.
    mailing_id: Mapped[int] = mapped_column(BigInteger)
    client_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), server_default=MessageStatus.SCHEDULED.value)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A `retrying` message: when its retry command becomes due (the re-drive reads it).
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    mailing_version: Mapped[int] = mapped_column(Integer, server_default="1")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


class Outbox(Base):
    """Events committed with the write that caused them; a relay publishes them to Kafka."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_unpublished", "id", postgresql_where=sql("published_at IS NULL")),
        # The purge of published rows: an index range scan, oldest first.
        Index(
            "ix_outbox_published_at",
            "published_at",
            postgresql_where=sql("published_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProcessedEvent(Base):
    """Idempotent consumers: the "already done" mark, written with the state change."""

    __tablename__ = "processed_event"
    __table_args__ = (
        # The prune of ids past the de-duplication window: an index range scan.
        Index("ix_processed_event_consumer_processed_at", "consumer", "processed_at"),
    )

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class MailingStatusCount(Base):
    """Per-mailing message counts by status, maintained by the reporter."""

    __tablename__ = "mailing_status_count"

    mailing_id: Mapped[int] = mapped_column(
        ForeignKey("mailing.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, server_default="0")


class DailyReport(Base):
    """One row per report day: the claim that makes the daily email go out once."""

    __tablename__ = "daily_report"

    report_date: Mapped[date] = mapped_column(Date, primary_key=True)
    claimed_by: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class ConsoleSession(Base):
    """A signed-in operator console. The browser holds only a random id; this row holds
    its SHA-256, who signed in, the CSRF token, and the credential the console uses on
    the operator's behalf (the identity provider's tokens, or a development token).
    Signing out deletes the row, which ends the session everywhere at once."""

    __tablename__ = "console_session"
    __table_args__ = (
        CheckConstraint("role IN ('viewer', 'operator', 'admin')", name="role_known"),
        Index("ix_console_session_expires_at", "expires_at"),
    )

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    actor: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    via: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(255), server_default="")
    csrf: Mapped[str] = mapped_column(String(64))
    credential: Mapped[str] = mapped_column(Text)
    credential_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refresh_token: Mapped[str | None] = mapped_column(Text)
    id_token: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A credential for an integration: named, with a role, revocable. The secret is
    kept only as its SHA-256 (see `shared.api_keys`)."""

    __tablename__ = "api_key"
    __table_args__ = (
        # A name is taken while its key is in use; a revoked key's name may be reused.
        Index(
            "uq_api_key_name_unrevoked",
            "name",
            unique=True,
            postgresql_where=sql("revoked_at IS NULL"),
        ),
        CheckConstraint("role IN ('viewer', 'operator', 'admin')", name="role_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    # The key's public part, sent in the clear inside the key: finds the row.
    lookup: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    created_by: Mapped[str] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class AuditLog(Base):
    """Who did what to which object, when and from where: written in the transaction of
    the write it describes."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_actor_id", "actor", "id"),
        Index("ix_audit_log_object_type_object_id_id", "object_type", "object_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    actor: Mapped[str] = mapped_column(String(200))
    via: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sql("'{}'::jsonb"))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
