"""The Scheduler built on the real PostgreSQL, each responsibility driven directly: no
Kafka (a stand-in broker records the send commands), no other service.

Activation expands the audience; firing queues due messages and publishes their
commands only after the claim commits, and puts them back when publishing fails; lease
recovery fires stuck messages again; expiry ends a mailing at its stop time; an edit
cancels clients that no longer match and adds new ones; a client's new time zone
re-plans its messages.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from sqlalchemy import select, text, update

from services.scheduler.leases import LEASE_EXPIRED
from services.scheduler.service import Scheduler
from shared.audience import NO_LONGER_MATCHES
from shared.kafka import topics_from
from shared.models import Client, ClientTag, Mailing, MailingState, Message, MessageStatus, Tag
from shared.statuses import STOP_REACHED
from shared.windows import NO_ALLOWED_TIME_BEFORE_STOP

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings

S = MessageStatus


class Broker:
    """Records what would be published; fails every publish while `down`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.down = False

    async def publish(
        self, record: dict[str, Any], topic: str, *, key: bytes, no_confirm: bool
    ) -> asyncio.Future[None]:
        if self.down:
            raise ConnectionError("kafka unreachable")
        self.sent.append((topic, record))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def message_ids(self) -> set[int]:
        return {record["payload"]["message_id"] for _, record in self.sent}


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def scheduler(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, broker: Broker
) -> Scheduler:
    return Scheduler(sessions, cast("Any", broker), topics_from(settings), settings)


async def add_clients(
    sessions: async_sessionmaker[AsyncSession], tag: str, count: int, zone: str = "UTC"
) -> list[int]:
    base = random.randrange(10**9, 10**10 - count)
    async with sessions() as session, session.begin():
        label = Tag(name=tag)
        clients = [Client(phone=f"7{base + i:010d}", timezone=zone) for i in range(count)]
        session.add_all([label, *clients])
        await session.flush()
        session.add_all([ClientTag(client_id=c.id, tag_id=label.id) for c in clients])
        return sorted(c.id for c in clients)


async def add_mailing(sessions: async_sessionmaker[AsyncSession], tag: str, **values: Any) -> int:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "start_at": now - timedelta(minutes=1),
        "stop_at": now + timedelta(hours=1),
        "text": "hello",
        "filter_tags": [tag],
        **values,
    }
    async with sessions() as session, session.begin():
        mailing = Mailing(**fields)
        session.add(mailing)
        await session.flush()
        return mailing.id


async def messages(sessions: async_sessionmaker[AsyncSession], mailing_id: int) -> list[Message]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(Message).where(Message.mailing_id == mailing_id).order_by(Message.client_id)
            )
        )


async def mailing_state(sessions: async_sessionmaker[AsyncSession], mailing_id: int) -> str:
    async with sessions() as session:
        state = await session.scalar(select(Mailing.state).where(Mailing.id == mailing_id))
        return str(state)


async def fire_all(scheduler: Scheduler) -> None:
    while await scheduler.fire_due():
        pass


def tag() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


async def test_activation_then_firing_queues_each_message_once_with_its_command(
    scheduler: Scheduler, broker: Broker, sessions: async_sessionmaker[AsyncSession]
) -> None:
    name = tag()
    clients = await add_clients(sessions, name, 5)
    mailing_id = await add_mailing(sessions, name)
    assert await scheduler.activate(mailing_id) == 1
    assert await scheduler.activate(mailing_id) == 0  # already running
    assert await mailing_state(sessions, mailing_id) == MailingState.RUNNING
    made = await messages(sessions, mailing_id)
    assert [m.client_id for m in made] == clients
    assert {m.status for m in made} == {S.SCHEDULED}
    assert await scheduler.backlog() >= len(clients)

    await fire_all(scheduler)
    fired = await messages(sessions, mailing_id)
    assert {m.status for m in fired} == {S.QUEUED}
    ours = {m.id for m in fired}
    assert ours <= broker.message_ids()
    topics = {topic for topic, record in broker.sent if record["payload"]["message_id"] in ours}
    assert topics == {scheduler.topics.message_send}


async def test_a_batch_whose_commands_cannot_be_published_goes_back_to_scheduled(
    scheduler: Scheduler, broker: Broker, sessions: async_sessionmaker[AsyncSession]
) -> None:
    name = tag()
    await add_clients(sessions, name, 3)
    mailing_id = await add_mailing(sessions, name)
    await scheduler.activate(mailing_id)
    broker.down = True
    with pytest.raises(ConnectionError):
        await fire_all(scheduler)
    back = await messages(sessions, mailing_id)
    assert {(m.status, m.last_error) for m in back} == {
        (S.SCHEDULED, "send command not published; will retry")
    }
    broker.down = False
    await fire_all(scheduler)
    assert {m.status for m in await messages(sessions, mailing_id)} == {S.QUEUED}


async def test_a_message_past_its_sending_lease_is_fired_again(
    scheduler: Scheduler, sessions: async_sessionmaker[AsyncSession]
) -> None:
    name = tag()
    await add_clients(sessions, name, 2)
    mailing_id = await add_mailing(sessions, name)
    await scheduler.activate(mailing_id)
    async with sessions() as session, session.begin():
        await session.execute(
            update(Message)
            .where(Message.mailing_id == mailing_id)
            .values(status=S.SENDING, attempts=1, lease_until=text("now() - interval '1 second'"))
        )
    while await scheduler.recover_stuck():
        pass
    recovered = await messages(sessions, mailing_id)
    assert {(m.status, m.last_error, m.attempts) for m in recovered} == {
        (S.SCHEDULED, LEASE_EXPIRED, 1)
    }
    # Due again after half a lease, not at once.
    assert all(m.due_at is not None and m.due_at > datetime.now(UTC) for m in recovered)


async def test_at_its_stop_time_a_mailing_expires_what_waits_and_finishes(
    scheduler: Scheduler, sessions: async_sessionmaker[AsyncSession]
) -> None:
    name = tag()
    await add_clients(sessions, name, 4)
    mailing_id = await add_mailing(sessions, name)
    await scheduler.activate(mailing_id)
    async with sessions() as session, session.begin():
        await session.execute(
            update(Mailing)
            .where(Mailing.id == mailing_id)
            .values(stop_at=text("now() - interval '1 second'"))
        )
    assert await scheduler.expire_past_stop() >= 4
    assert {(m.status, m.last_error) for m in await messages(sessions, mailing_id)} == {
        (S.EXPIRED, STOP_REACHED)
    }
    assert await mailing_state(sessions, mailing_id) == MailingState.FINISHED


async def test_an_edit_cancels_clients_no_longer_matching_and_adds_new_ones(
    scheduler: Scheduler, sessions: async_sessionmaker[AsyncSession]
) -> None:
    old, new = tag(), tag()
    leaving = await add_clients(sessions, old, 3)
    joining = await add_clients(sessions, new, 2)
    mailing_id = await add_mailing(sessions, old)
    await scheduler.activate(mailing_id)
    async with sessions() as session, session.begin():
        await session.execute(
            update(Mailing)
            .where(Mailing.id == mailing_id)
            .values(filter_tags=[new], version=Mailing.version + 1)
        )
    await scheduler.apply_edit(mailing_id)
    by_client = {m.client_id: m for m in await messages(sessions, mailing_id)}
    assert {(by_client[c].status, by_client[c].last_error) for c in leaving} == {
        (S.CANCELLED, NO_LONGER_MATCHES)
    }
    assert {(by_client[c].status, by_client[c].mailing_version) for c in joining} == {
        (S.SCHEDULED, 2)
    }


async def test_a_client_moved_to_a_zone_without_time_before_the_stop_expires(
    scheduler: Scheduler, sessions: async_sessionmaker[AsyncSession]
) -> None:
    name = tag()
    [client] = await add_clients(sessions, name, 1)
    now = datetime.now(UTC)
    # A one-hour window open now in UTC, shut for the next hour twelve zones away.
    opens = (now - timedelta(minutes=5)).time().replace(second=0, microsecond=0)
    closes = (now + timedelta(hours=1)).time().replace(second=0, microsecond=0)
    mailing_id = await add_mailing(
        sessions, name, stop_at=now + timedelta(minutes=50), window_start=opens, window_end=closes
    )
    await scheduler.activate(mailing_id)
    [message] = await messages(sessions, mailing_id)
    assert message.status == S.SCHEDULED
    async with sessions() as session, session.begin():
        await session.execute(
            update(Client).where(Client.id == client).values(timezone="Pacific/Kiritimati")
        )
    await scheduler.replan_client(client)
    [message] = await messages(sessions, mailing_id)
    assert (message.status, message.last_error) == (S.EXPIRED, NO_ALLOWED_TIME_BEFORE_STOP)
