"""The scheduler's work on whole mailings, driven in-process on the real PostgreSQL and
the real Kafka broker: expiry at stop time and the re-plan of an edit change a mailing
in bounded batches with one aggregated status event per batch (never one per message),
the reporter's counters built from those events equal a fresh COUNT(*) GROUP BY, and an
edit that lands while the audience is being expanded leaves exactly the new audience.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import and_, text
from sqlalchemy.exc import IntegrityError

from services.reporter.counters import Counters
from services.reporter.handlers import parse
from services.scheduler.service import Scheduler
from shared.kafka import create_broker, ensure_topics, topics_from
from shared.models import Message, MessageStatus
from shared.statuses import transition_where
from tests.support.infra import make_settings
from tests.support.kafka_helpers import read_topic

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from faststream.kafka import KafkaBroker
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings
    from tests.support.api_helpers import ApiClient
    from tests.support.infra import Infra

URL = "/api/v1/notifications/"
BATCH = 1000  # SCHEDULER_BULK_BATCH_SIZE of these tests


def fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def body(tags: list[str], **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "date_time_start": fmt(now - timedelta(minutes=1)),
        "date_time_stop": fmt(now + timedelta(hours=2)),
        "text": "bulk",
        "tag": tags,
        **extra,
    }


@pytest.fixture
def bulk_settings(infra: Infra) -> Settings:
    return make_settings(
        infra,
        scheduler_bulk_batch_size=BATCH,
        scheduler_batch_size=50_000,
        expansion_batch_size=50_000,
    )


@pytest.fixture
async def broker(bulk_settings: Settings) -> AsyncIterator[KafkaBroker]:
    await ensure_topics(bulk_settings)
    broker = create_broker(bulk_settings, client_id="tests")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def add_clients(
    sessions: async_sessionmaker[AsyncSession], count: int, tags_of: Callable[[int], list[str]]
) -> dict[int, list[str]]:
    """`count` clients (UTC) with consecutive phones; client i gets `tags_of(i)`.
    Returns {client id: tags}."""
    async with sessions() as session, session.begin():
        # A run of consecutive phones no other test's client has: the shared database
        # holds many random ones, so a range that meets one is drawn again.
        for _attempt in range(10):
            base = random.randrange(10**9, 10**10 - count)
            try:
                async with session.begin_nested():
                    ids = list(
                        await session.scalars(
                            text(
                                "INSERT INTO client (phone) "
                                "SELECT '7' || lpad((:base + g)::text, 10, '0') "
                                "FROM generate_series(0, :n - 1) AS g ORDER BY g RETURNING id"
                            ),
                            {"base": base, "n": count},
                        )
                    )
                break
            except IntegrityError:
                continue
        else:
            raise AssertionError("no free run of consecutive phones in 10 draws")
        ids.sort()
        tags = {client: tags_of(i) for i, client in enumerate(ids)}
        for name in {t for names in tags.values() for t in names}:
            await session.execute(
                text("INSERT INTO tag (name) VALUES (:t) ON CONFLICT DO NOTHING"), {"t": name}
            )
            members = [client for client, names in tags.items() if name in names]
            await session.execute(
                text(
                    "INSERT INTO client_tag (client_id, tag_id) "
                    "SELECT c, (SELECT id FROM tag WHERE name = :t) "
                    "FROM unnest(CAST(:ids AS bigint[])) AS c"
                ),
                {"t": name, "ids": members},
            )
    return tags


async def rows(sessions: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(text(sql), params)).all())


async def status_counts(
    sessions: async_sessionmaker[AsyncSession], mailing_id: int
) -> dict[str, int]:
    return dict(
        await rows(
            sessions,
            "SELECT status, count(*) FROM message WHERE mailing_id = :m GROUP BY status",
            m=mailing_id,
        )
    )


async def status_events(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, mailing_id: int, after: int = 0
) -> list[tuple[int, dict[str, Any]]]:
    """(outbox id, record) of the mailing's status events staged after outbox id `after`."""
    return [
        (ident, payload)
        for ident, payload in await rows(
            sessions,
            "SELECT id, payload FROM outbox WHERE topic = :t AND key = :k AND id > :a ORDER BY id",
            t=topics_from(settings).message_status,
            k=str(mailing_id),
            a=after,
        )
    ]


async def last_outbox_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    [(ident,)] = await rows(sessions, "SELECT coalesce(max(id), 0) FROM outbox")
    return int(ident)


async def assert_counters_exact(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, mailing_id: int
) -> None:
    """The reporter's own parsing and counting of every status event staged for the
    mailing gives exactly COUNT(*) GROUP BY status."""
    events = await status_events(sessions, settings, mailing_id)

    records = tuple(
        SimpleNamespace(value=json.dumps(record).encode(), topic="t", partition=0, offset=i)
        for i, (_, record) in enumerate(events)
    )
    parsed = parse(records)
    assert len(parsed) == len(records), "the reporter could not read some status events"
    await Counters(sessions).apply(parsed)  # those applied before count once
    counters = dict(
        await rows(
            sessions,
            "SELECT status, count FROM mailing_status_count WHERE mailing_id = :m AND count <> 0",
            m=mailing_id,
        )
    )
    assert counters == await status_counts(sessions, mailing_id)


async def create_mailing(api: ApiClient, payload: dict[str, Any]) -> int:
    response = await api.http.post(URL, json=payload)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def edit_mailing(api: ApiClient, mailing_id: int, payload: dict[str, Any]) -> None:
    response = await api.http.put(f"{URL}{mailing_id}/", json=payload)
    assert response.status_code == 200, response.text


def types_of(events: list[tuple[int, dict[str, Any]]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for _, record in events:
        found[record["type"]] = found.get(record["type"], 0) + 1
    return found


async def test_expiry_of_a_large_mailing_is_batched_with_aggregated_events(
    api: ApiClient,
    sessions: async_sessionmaker[AsyncSession],
    bulk_settings: Settings,
    broker: KafkaBroker,
) -> None:
    tag = f"x{uuid.uuid4().hex[:8]}"
    size = 20_000
    await add_clients(sessions, size, lambda i: [tag])
    mailing_id = await create_mailing(api, body([tag]))
    scheduler = Scheduler(sessions, broker, topics_from(bulk_settings), bulk_settings)
    assert await scheduler.activate(mailing_id) == 1
    # Some in flight toward the dispatcher (`queued`), some waiting for a retry.
    async with sessions() as session, session.begin():
        retrying = await transition_where(
            session,
            scheduler.topics,
            and_(Message.mailing_id == mailing_id, Message.client_id % 10 == 0),
            MessageStatus.RETRYING,
        )
    assert retrying > 0
    assert await scheduler.fire_due() >= size - retrying
    await assert_counters_exact(sessions, bulk_settings, mailing_id)
    async with sessions() as session, session.begin():
        await session.execute(
            text("UPDATE mailing SET stop_at = now() - interval '1 second' WHERE id = :m"),
            {"m": mailing_id},
        )
    before = await last_outbox_id(sessions)

    assert await scheduler.expire_past_stop() >= size

    assert await status_counts(sessions, mailing_id) == {"expired": size}
    [(state,)] = await rows(sessions, "SELECT state FROM mailing WHERE id = :m", m=mailing_id)
    assert state == "finished"
    events = await status_events(sessions, bulk_settings, mailing_id, after=before)
    [(low, high)] = await rows(
        sessions, "SELECT min(id), max(id) FROM message WHERE mailing_id = :m", m=mailing_id
    )
    # One aggregated event per batch of at most BATCH messages, never one per message.
    assert set(types_of(events)) == {"messages.status_changed"}, types_of(events)
    assert size // BATCH <= len(events) <= math.ceil((high - low + 1) / BATCH)
    moved: dict[tuple[str, str], int] = {}
    for _, record in events:
        for change in record["payload"]["changes"]:
            key = (change["previous_status"], change["status"])
            moved[key] = moved.get(key, 0) + change["count"]
            assert change["count"] <= BATCH
    assert moved == {("queued", "expired"): size - retrying, ("retrying", "expired"): retrying}
    await assert_counters_exact(sessions, bulk_settings, mailing_id)
    # Nothing left to do: a second pass (a restart) changes nothing and stages nothing.
    again = await last_outbox_id(sessions)
    await scheduler.expire_past_stop()
    assert await status_events(sessions, bulk_settings, mailing_id, after=again) == []


async def test_edit_of_a_large_mailing_is_replanned_in_batches(
    api: ApiClient,
    sessions: async_sessionmaker[AsyncSession],
    bulk_settings: Settings,
    broker: KafkaBroker,
) -> None:
    old, new = f"o{uuid.uuid4().hex[:8]}", f"n{uuid.uuid4().hex[:8]}"
    size = 20_000
    # Even clients keep matching after the edit, odd ones do not.
    tags = await add_clients(sessions, size, lambda i: [old, new] if i % 2 == 0 else [old])
    newcomers = await add_clients(sessions, 300, lambda i: [new])
    payload = body([old])
    mailing_id = await create_mailing(api, payload)
    scheduler = Scheduler(sessions, broker, topics_from(bulk_settings), bulk_settings)
    assert await scheduler.activate(mailing_id) == 1
    # 100 failed for good earlier (half of them still match): they get a new chance.
    failed = sorted(tags)[:100]
    async with sessions() as session, session.begin():
        await transition_where(
            session,
            scheduler.topics,
            and_(Message.mailing_id == mailing_id, Message.client_id.in_(failed)),
            MessageStatus.FAILED,
            error="gateway said no",
        )
    before = await last_outbox_id(sessions)

    await edit_mailing(api, mailing_id, {**payload, "tag": [new], "text": "bulk v2"})
    await scheduler.apply_edit(mailing_id)

    by_client = {
        client: (status, version)
        for client, status, version in await rows(
            sessions,
            "SELECT client_id, status, mailing_version FROM message WHERE mailing_id = :m",
            m=mailing_id,
        )
    }
    for client, names in tags.items():
        if new in names:
            assert by_client[client] == ("scheduled", 2), client
        elif client in failed:
            assert by_client[client][0] == "failed", client
        else:
            assert by_client[client][0] == "cancelled", client
    for client in newcomers:
        assert by_client[client] == ("scheduled", 2), client
    events = await status_events(sessions, bulk_settings, mailing_id, after=before)
    found = types_of(events)
    assert set(found) <= {"messages.status_changed", "messages.created"}, found
    [(low, high)] = await rows(
        sessions, "SELECT min(id), max(id) FROM message WHERE mailing_id = :m", m=mailing_id
    )
    assert found["messages.status_changed"] <= math.ceil((high - low + 1) / BATCH)
    await assert_counters_exact(sessions, bulk_settings, mailing_id)
    assert await status_counts(sessions, mailing_id) == {
        "scheduled": size // 2 + 300,
        "cancelled": size // 2 - 50,
        "failed": 50,
    }
    # The same edit applied again (a redelivered event) changes nothing.
    again = await last_outbox_id(sessions)
    await scheduler.apply_edit(mailing_id)
    assert await status_events(sessions, bulk_settings, mailing_id, after=again) == []


class PausingSessions:
    """A session factory whose sessions pause after the first commit after which
    `when()` holds, until `release()`: the caller's work stops between two transactions."""

    def __init__(
        self, inner: async_sessionmaker[AsyncSession], when: Callable[[], Awaitable[bool]]
    ) -> None:
        self.inner = inner
        self.when = when
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    def release(self) -> None:
        self.resume.set()

    def __call__(self) -> AsyncSession:
        session = self.inner()
        commit: Callable[[], Awaitable[None]] = session.commit

        async def pausing_commit() -> None:
            await commit()
            if not self.paused.is_set() and await self.when():
                self.paused.set()
                await self.resume.wait()

        session.commit = pausing_commit  # type: ignore[method-assign]
        return session


async def test_an_edit_during_activation_leaves_exactly_the_new_audience(
    api: ApiClient,
    sessions: async_sessionmaker[AsyncSession],
    infra: Infra,
    bulk_settings: Settings,
    broker: KafkaBroker,
) -> None:
    settings = make_settings(
        infra,
        kafka_topic_prefix=bulk_settings.kafka_topic_prefix,
        expansion_batch_size=100,
        scheduler_batch_size=50_000,
        scheduler_bulk_batch_size=BATCH,
    )
    old, new = f"o{uuid.uuid4().hex[:8]}", f"n{uuid.uuid4().hex[:8]}"
    # One client in three keeps matching after the edit; 200 match only the new filter.
    tags = await add_clients(sessions, 3000, lambda i: [old, new] if i % 3 == 0 else [old])
    tags.update(await add_clients(sessions, 200, lambda i: [new]))
    audience = {client for client, names in tags.items() if new in names}
    excluded = set(tags) - audience
    payload = body([old])
    mailing_id = await create_mailing(api, payload)

    async def some_made() -> bool:
        [(count,)] = await rows(
            sessions, "SELECT count(*) FROM message WHERE mailing_id = :m", m=mailing_id
        )
        return bool(count)

    pausing = PausingSessions(sessions, some_made)
    scheduler = Scheduler(
        pausing,  # type: ignore[arg-type]
        broker,
        topics_from(settings),
        settings,
    )
    activation = asyncio.create_task(scheduler.activate(mailing_id))
    # Activation has committed its first expansion batch (of the old filter) and waits.
    await asyncio.wait_for(pausing.paused.wait(), timeout=60)
    [(first,)] = await rows(
        sessions, "SELECT count(*) FROM message WHERE mailing_id = :m", m=mailing_id
    )
    assert 0 < first < 3000, "the edit must land in the middle of the expansion"
    await edit_mailing(api, mailing_id, {**payload, "tag": [new], "text": "v2"})
    # The scheduler's handler for the update event: waits for the mailing's lock.
    edit = asyncio.create_task(scheduler.apply_edit(mailing_id))
    pausing.release()
    await asyncio.wait_for(activation, timeout=120)
    await asyncio.wait_for(edit, timeout=120)
    # The scheduler's loop activates the mailing if it is still waiting for that.
    for _ in range(3):
        [(state,)] = await rows(sessions, "SELECT state FROM mailing WHERE id = :m", m=mailing_id)
        if state != "scheduled":
            break
        await scheduler.activate(mailing_id)
    assert state == "running"

    by_client = {
        client: (status, version)
        for client, status, version in await rows(
            sessions,
            "SELECT client_id, status, mailing_version FROM message WHERE mailing_id = :m",
            m=mailing_id,
        )
    }
    pending = {c for c, (status, _) in by_client.items() if status == "scheduled"}
    assert pending == audience
    assert {by_client[c] for c in audience} == {("scheduled", 2)}
    assert {by_client[c][0] for c in excluded & set(by_client)} <= {"cancelled"}
    await assert_counters_exact(sessions, settings, mailing_id)

    # What goes to the dispatchers: a command for each client of the new audience only.
    # fire_due() returns once its commands are published: all are in the topic by now.
    await scheduler.fire_due()
    commands = await read_topic(
        infra.kafka_bootstrap, topics_from(settings).message_send, expect=len(audience)
    )
    sent_to = [
        r["payload"]["client_id"] for _, r in commands if r["payload"]["mailing_id"] == mailing_id
    ]
    assert sorted(sent_to) == sorted(audience)
    assert not excluded & set(sent_to)
