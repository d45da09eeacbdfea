"""Client directory: create, read, replace, patch, delete; every write with its event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, exists, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from services.api.errors import Conflict, NotFound
from services.api.schemas import ClientIn, ClientOut, ClientPatch, TagOut
from shared.events import ClientCreated, ClientData, ClientDeleted, ClientRef, ClientUpdated
from shared.logging import bind_entities, get_logger
from shared.models import PENDING_STATUSES, Client, ClientTag, Message, MessageStatus, Tag
from shared.outbox import add_event
from shared.statuses import transition_where

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.topics import Topics

log = get_logger(__name__)


def _out(client: Client, tags: list[str]) -> ClientOut:
    return ClientOut(
        id=client.id,
        telephone=client.phone,
        mobile_code=client.operator_code,
        tag=[TagOut(name=name) for name in sorted(tags)],
        timezone=client.timezone,
    )


def _data(client: Client, tags: list[str]) -> ClientData:
    return ClientData(
        id=client.id,
        phone=client.phone,
        operator_code=client.operator_code,
        tags=sorted(tags),
        timezone=client.timezone,
    )


async def _tag_names(session: AsyncSession, client_ids: list[int]) -> dict[int, list[str]]:
    rows = await session.execute(
        select(ClientTag.client_id, Tag.name)
        .join(Tag, Tag.id == ClientTag.tag_id)
        .where(ClientTag.client_id.in_(client_ids))
        .order_by(Tag.name)
    )
    names: dict[int, list[str]] = {ident: [] for ident in client_ids}
    for client_id, name in rows:
        names[client_id].append(name)
    return names


async def _set_tags(session: AsyncSession, client_id: int, names: list[str]) -> None:
    """Replace the client's tags; each name is stored once in `tag`."""
    await session.execute(delete(ClientTag).where(ClientTag.client_id == client_id))
    if not names:
        return
    await session.execute(
        pg_insert(Tag).values([{"name": name} for name in names]).on_conflict_do_nothing()
    )
    await session.execute(
        insert(ClientTag).from_select(
            ["client_id", "tag_id"],
            select(literal(client_id, Client.id.type), Tag.id).where(Tag.name.in_(names)),
        )
    )


async def _live(session: AsyncSession, client_id: int, *, lock: bool = False) -> Client:
    query = select(Client).where(Client.id == client_id, Client.deleted_at.is_(None))
    if lock:
        query = query.with_for_update()
    client = await session.scalar(query)
    if client is None:
        raise NotFound("client", client_id)
    return client


async def _flush_unique(session: AsyncSession, phone: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        if "uq_client_phone_live" in str(exc.orig):
            raise Conflict("telephone", f"telephone {phone} belongs to another client") from None
        raise


async def create_client(session: AsyncSession, topics: Topics, body: ClientIn) -> ClientOut:
    client = Client(phone=body.telephone, timezone=body.timezone)
    session.add(client)
    await _flush_unique(session, body.telephone)
    await session.refresh(client, ["operator_code"])
    await _set_tags(session, client.id, body.tag)
    bind_entities(client_id=client.id)
    add_event(session, topics.client_events, ClientCreated(payload=_data(client, body.tag)))
    log.info("client_created", operator_code=client.operator_code, tags=body.tag)
    return _out(client, body.tag)


async def get_client(session: AsyncSession, client_id: int) -> ClientOut:
    client = await _live(session, client_id)
    return _out(client, (await _tag_names(session, [client.id]))[client.id])


@dataclass(frozen=True)
class Search:
    """Client search filters, combined with AND; None: not filtered."""

    telephone: str | None = None  # a prefix of digits
    tag: str | None = None
    mobile_code: int | None = None
    timezone: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = [Client.deleted_at.is_(None)]
        if self.telephone is not None:
            found.append(Client.phone.startswith(self.telephone, autoescape=True))
        if self.mobile_code is not None:
            found.append(Client.operator_code == self.mobile_code)
        if self.timezone is not None:
            found.append(Client.timezone == self.timezone)
        if self.tag is not None:
            found.append(
                exists()
                .where(ClientTag.client_id == Client.id, ClientTag.tag_id == Tag.id)
                .where(Tag.name == self.tag.strip())
            )
        return found


async def list_clients(
    session: AsyncSession, limit: int, offset: int, search: Search | None = None
) -> tuple[int, list[ClientOut]]:
    where = (search or Search()).conditions()
    count = await session.scalar(select(func.count()).select_from(Client).where(*where)) or 0
    clients = list(
        await session.scalars(
            select(Client).where(*where).order_by(Client.id).limit(limit).offset(offset)
        )
    )
    names = await _tag_names(session, [client.id for client in clients])
    return count, [_out(client, names[client.id]) for client in clients]


async def update_client(
    session: AsyncSession, topics: Topics, client_id: int, body: ClientIn | ClientPatch
) -> ClientOut:
    """PUT (a whole ClientIn) or PATCH (the fields given in a ClientPatch)."""
    client = await _live(session, client_id, lock=True)
    bind_entities(client_id=client_id)
    given = body.model_fields_set if isinstance(body, ClientPatch) else set(ClientIn.model_fields)
    if "telephone" in given and body.telephone is not None:
        client.phone = body.telephone
    if "timezone" in given and body.timezone is not None:
        client.timezone = body.timezone
    client.updated_at = func.now()
    await _flush_unique(session, client.phone)
    await session.refresh(client, ["operator_code", "phone", "timezone"])
    if "tag" in given and body.tag is not None:
        await _set_tags(session, client.id, body.tag)
    tags = (await _tag_names(session, [client.id]))[client.id]
    add_event(session, topics.client_events, ClientUpdated(payload=_data(client, tags)))
    log.info("client_updated", fields=sorted(given))
    return _out(client, tags)


async def delete_client(session: AsyncSession, topics: Topics, client_id: int) -> None:
    """Mark the client deleted, cancel its pending messages; sent history stays."""
    await _live(session, client_id, lock=True)
    bind_entities(client_id=client_id)
    await session.execute(
        update(Client).where(Client.id == client_id).values(deleted_at=func.now())
    )
    await session.execute(delete(ClientTag).where(ClientTag.client_id == client_id))
    cancelled = await transition_where(
        session,
        topics,
        (Message.client_id == client_id) & Message.status.in_(PENDING_STATUSES),
        MessageStatus.CANCELLED,
        error="client deleted",
    )
    add_event(session, topics.client_events, ClientDeleted(payload=ClientRef(id=client_id)))
    log.info("client_deleted", cancelled_messages=cancelled)
