"""The dispatcher's delivery on a real PostgreSQL, with a gateway of the test's own.

Outcome writes fence on `attempts`, not on `sending`: an outcome of attempt N is the
truth while no later attempt has started, even after the scheduler's lease recovery
moved the message. And an error while delivering one message is its outcome alone."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from services.dispatcher.breaker import CircuitBreaker
from services.dispatcher.decisions import Decision
from services.dispatcher.delivery import Delivery
from services.dispatcher.gateway import Gateway, Outcome, Result
from services.dispatcher.ratelimit import RateLimiter
from services.scheduler.convergence import hold_version
from services.scheduler.service import Scheduler
from shared.db import create_engine, create_session_factory
from shared.events import SendData
from shared.kafka import topics_from
from shared.models import Mailing, MessageStatus, Outbox
from tests.support.infra import make_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings
    from tests.support.infra import Infra


class NoGateway:
    async def send(self, message_id: int, phone: str, text: str, deadline_s: float) -> Result:
        raise AssertionError("no request in these tests")

    async def close(self) -> None:
        return None


class BrokenForOne:
    """Accepts every message but one, for which the client itself blows up."""

    def __init__(self, broken: int) -> None:
        self.broken = broken
        self.sent: list[int] = []

    async def send(self, message_id: int, phone: str, text: str, deadline_s: float) -> Result:
        if message_id == self.broken:
            raise OverflowError("date value out of range")
        self.sent.append(message_id)
        return Result(Outcome.OK, 200)

    async def close(self) -> None:
        return None


class Parts:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        gateway: Gateway | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.topics = topics_from(settings)
        self.delivery = Delivery(
            sessions=sessions,
            topics=self.topics,
            settings=settings,
            gateway=gateway or NoGateway(),
            breaker=CircuitBreaker(5, 1, 1),
            limiter=RateLimiter(0),
        )
        self.scheduler = Scheduler(sessions, cast("Any", None), self.topics, settings)

    async def sql(self, statement: str, **params: Any) -> Any:
        async with self.sessions() as session, session.begin():
            return (await session.execute(text(statement), params)).first()

    async def queued_message(self) -> SendData:
        now = datetime.now(UTC)
        client = await self.sql(
            "INSERT INTO client (phone) VALUES (:phone) RETURNING id",
            phone=f"79{uuid.uuid4().int % 10**9:09d}",
        )
        mailing = await self.sql(
            "INSERT INTO mailing (start_at, stop_at, text, state) "
            "VALUES (:start, :stop, 'fenced', 'running') RETURNING id",
            start=now - timedelta(minutes=1),
            stop=now + timedelta(hours=1),
        )
        message = await self.sql(
            "INSERT INTO message (mailing_id, client_id, status, due_at) "
            "VALUES (:m, :c, 'queued', now()) RETURNING id",
            m=mailing.id,
            c=client.id,
        )
        return SendData(message_id=message.id, mailing_id=mailing.id, client_id=client.id)

    async def expire_lease(self, message_id: int) -> None:
        await self.sql(
            "UPDATE message SET lease_until = now() - interval '1 second' WHERE id = :id "
            "RETURNING id",
            id=message_id,
        )

    async def row(self, message_id: int) -> Any:
        return await self.sql(
            "SELECT status, attempts, last_error FROM message WHERE id = :id", id=message_id
        )

    async def outbox(self, topic: str, message_id: int) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            rows = (
                await session.scalars(select(Outbox.payload).where(Outbox.topic == topic))
            ).all()
        found: list[dict[str, Any]] = []
        for row in rows:
            payload = row["payload"]
            if "messages" in payload:  # `messages.transitioned`: this message's entry
                common = {key: value for key, value in payload.items() if key != "messages"}
                found.extend(
                    {**common, **entry}
                    for entry in payload["messages"]
                    if entry["message_id"] == message_id
                )
            elif payload.get("message_id") == message_id:
                found.append(payload)
        return found


async def parts_for(
    infra: Infra, gateway: Gateway | None = None, **overrides: object
) -> AsyncIterator[Parts]:
    settings = make_settings(infra, **overrides)
    engine = create_engine(settings, application_name="tests")
    try:
        yield Parts(settings, create_session_factory(engine), gateway)
    finally:
        await engine.dispose()


async def test_an_outcome_held_past_the_lease_recovery_is_still_written(infra: Infra) -> None:
    async for parts in parts_for(infra):
        command = await parts.queued_message()
        [claimed] = await parts.delivery.claim([command])
        await parts.expire_lease(command.message_id)
        assert await parts.scheduler.recover_stuck() == 1
        assert (await parts.row(command.message_id)).status == "scheduled"
        # Not fired again at once: a slow dispatcher's outcome gets half a lease more.
        later = await parts.sql(
            "SELECT due_at > now() + interval '1 second' AS later FROM message WHERE id = :id",
            id=command.message_id,
        )
        assert later.later

        # The request of attempt 1 was accepted; its outcome arrives now.
        await parts.delivery.record([(claimed, Decision(MessageStatus.SENT))])

        row = await parts.row(command.message_id)
        assert (row.status, row.attempts) == ("sent", 1)
        events = await parts.outbox(parts.topics.message_status, command.message_id)
        assert [(e["previous_status"], e["status"]) for e in events] == [
            ("queued", "sending"),
            ("sending", "scheduled"),
            ("scheduled", "sent"),
        ]


async def test_an_outcome_of_an_older_attempt_is_not_written(infra: Infra) -> None:
    async for parts in parts_for(infra):
        command = await parts.queued_message()
        [first] = await parts.delivery.claim([command])
        await parts.expire_lease(command.message_id)
        await parts.scheduler.recover_stuck()
        await parts.sql(
            "UPDATE message SET status = 'queued' WHERE id = :id RETURNING id", id=first.message_id
        )
        [second] = await parts.delivery.claim([command])
        assert second.attempt == 2

        await parts.delivery.record([(first, Decision(MessageStatus.SENT))])

        row = await parts.row(command.message_id)
        assert (row.status, row.attempts) == ("sending", 2)


async def test_without_deduplication_lease_recovery_fails_the_message_not_resends_it(
    infra: Infra,
) -> None:
    async for parts in parts_for(infra, provider_deduplicates=False):
        command = await parts.queued_message()
        [claimed] = await parts.delivery.claim([command])
        await parts.expire_lease(command.message_id)
        assert await parts.scheduler.recover_stuck() == 1

        row = await parts.row(command.message_id)
        assert (row.status, row.last_error) == ("failed", "unknown outcome: lease expired")
        [dead] = await parts.outbox(parts.topics.message_send_dlq, command.message_id)
        assert dead["last_error"] == "unknown outcome: lease expired"

        # The held outcome then arrives: it knows better than the guess.
        await parts.delivery.record([(claimed, Decision(MessageStatus.SENT))])
        assert (await parts.row(command.message_id)).status == "sent"


async def test_an_error_for_one_message_is_recorded_for_it_alone(infra: Infra) -> None:
    gateway = BrokenForOne(broken=-1)
    async for parts in parts_for(infra, gateway):
        commands = [await parts.queued_message() for _ in range(3)]
        gateway.broken = commands[1].message_id

        assert await parts.delivery.process(commands) == 3

        rows = [await parts.row(command.message_id) for command in commands]
        assert [row.status for row in rows] == ["sent", "retrying", "sent"]
        assert "OverflowError" in rows[1].last_error
        assert sorted(gateway.sent) == sorted(c.message_id for c in commands if c != commands[1])
        [retry] = await parts.outbox(parts.topics.message_send_retry(1), commands[1].message_id)
        assert retry["failures"] == 1


async def test_a_message_of_an_older_mailing_version_goes_out_as_the_mailing_is_now(
    infra: Infra,
) -> None:
    """An edit (PUT) commits a new mailing version at once; the scheduler re-plans its
    messages a moment later, and a message in flight then is out of the re-plan's
    reach. Such a message of an older version is still claimed for a client the
    mailing reaches, with the mailing's current text (and window, and stop time)."""
    async for parts in parts_for(infra):
        command = await parts.queued_message()
        await parts.sql(
            "UPDATE mailing SET version = version + 1, text = 'edited' WHERE id = :id RETURNING id",
            id=command.mailing_id,
        )

        [claimed] = await parts.delivery.claim([command])
        assert (claimed.attempt, claimed.text) == (1, "edited")


async def test_a_message_an_edit_excluded_is_cancelled_not_claimed(infra: Infra) -> None:
    async for parts in parts_for(infra):
        command = await parts.queued_message()
        code = await parts.sql(
            "SELECT operator_code FROM client WHERE id = :id", id=command.client_id
        )
        await parts.sql(
            "UPDATE mailing SET version = version + 1, filter_codes = :codes WHERE id = :id "
            "RETURNING id",
            id=command.mailing_id,
            codes=[(code.operator_code + 1) % 1000],
        )

        assert await parts.delivery.claim([command]) == []
        row = await parts.row(command.message_id)
        assert (row.status, row.attempts, row.last_error) == (
            "cancelled",
            0,
            "no longer matches the mailing",
        )
        events = await parts.outbox(parts.topics.message_status, command.message_id)
        assert [(e["previous_status"], e["status"]) for e in events] == [("queued", "cancelled")]


async def test_an_expansion_step_holds_back_a_deletion_of_its_mailing_not_a_claim(
    infra: Infra,
) -> None:
    """Each step of an audience expansion locks its mailing row until it commits, so the
    mailing is not deleted under the messages the step writes. That lock must not stop
    the dispatchers claiming the mailing's messages fired so far: the first messages
    go out while the rest of the audience is expanded."""
    async for parts in parts_for(infra):
        command = await parts.queued_message()
        async with parts.sessions() as step, step.begin():
            mailing = await step.get(Mailing, command.mailing_id)
            assert mailing is not None
            assert await hold_version(step, mailing)  # the step's lock, until its commit

            [claimed] = await asyncio.wait_for(parts.delivery.claim([command]), timeout=5)
            assert claimed.attempt == 1

            async with parts.sessions() as other:  # rolled back at its end
                await other.execute(text("SET LOCAL lock_timeout = '300ms'"))
                with pytest.raises(DBAPIError, match="lock timeout"):
                    await other.execute(
                        text("DELETE FROM mailing WHERE id = :id"), {"id": command.mailing_id}
                    )
        assert (await parts.row(command.message_id)).status == "sending"
