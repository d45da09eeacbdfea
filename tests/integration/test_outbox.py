"""The outbox: every write's event reaches Kafka once, in order per key, even when
Kafka was down at the time of the write."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select

from services.api.main import create_app
from shared.db import create_engine, create_session_factory
from shared.events import ClientCreated, ClientData
from shared.kafka import create_broker, ensure_topics, topics_from
from shared.models import Outbox
from shared.outbox import OutboxRelay, add_events
from tests.support.api_helpers import phone
from tests.support.infra import make_settings
from tests.support.kafka_helpers import read_topic
from tests.support.polling import eventually
from tools.infra import KafkaServer, PostgresServer, run_migrations

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.api_helpers import ApiClient
    from tests.support.infra import Infra

MAILING = {
    "date_time_start": "2031-01-02 09:00:00",
    "date_time_stop": "2031-01-03 09:00:00",
    "text": "Hello",
}


def _by_type(records: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(key, value["type"]) for key, value in records]


async def test_writes_publish_versioned_events_keyed_by_id(api: ApiClient) -> None:
    topics = topics_from(api.settings)
    number = phone()
    client = (
        await api.http.post("/api/v1/clients/", json={"telephone": number, "tag": ["b", "a"]})
    ).json()
    await api.http.patch(f"/api/v1/clients/{client['id']}/", json={"timezone": "Europe/Paris"})
    await api.http.delete(f"/api/v1/clients/{client['id']}/")
    mailing = (await api.http.post("/api/v1/notifications/", json=MAILING)).json()
    await api.http.delete(f"/api/v1/notifications/{mailing['id']}/")

    bootstrap = api.settings.kafka_bootstrap
    client_events = await read_topic(bootstrap, topics.client_events, expect=3)
    mailing_events = await read_topic(bootstrap, topics.mailing_events, expect=2)

    key = str(client["id"])
    assert _by_type(client_events) == [
        (key, "client.created"),
        (key, "client.updated"),
        (key, "client.deleted"),
    ]
    created = client_events[0][1]
    assert created["schema_version"] == 1
    assert set(created) == {"event_id", "type", "occurred_at", "schema_version", "payload"}
    assert created["payload"] == {
        "id": client["id"],
        "phone": number,
        "operator_code": int(number[1:4]),
        "tags": ["a", "b"],
        "timezone": "UTC",
    }
    assert client_events[1][1]["payload"]["timezone"] == "Europe/Paris"
    assert client_events[2][1]["payload"] == {"id": client["id"]}
    assert _by_type(mailing_events) == [
        (str(mailing["id"]), "mailing.created"),
        (str(mailing["id"]), "mailing.deleted"),
    ]
    assert mailing_events[0][1]["payload"]["start_at"] == "2031-01-02T09:00:00Z"


async def test_writes_are_accepted_while_kafka_is_down_and_their_events_follow(
    infra: Infra, tmp_path: Path
) -> None:
    # Own broker (to stop it) and own database (so no other test's outbox rows interfere).
    kafka, pg = KafkaServer(tmp_path / "kafka"), PostgresServer(tmp_path / "pg")
    await asyncio.gather(asyncio.to_thread(kafka.start), asyncio.to_thread(pg.start))
    await asyncio.to_thread(run_migrations, pg.url)
    settings = make_settings(
        infra, database_url=pg.url, kafka_bootstrap=kafka.bootstrap, api_tokens="t"
    )
    app = create_app(settings)
    try:
        async with (
            LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app),
                base_url="http://api",
                headers={"Authorization": "Bearer t"},
            ) as http,
        ):
            await eventually(lambda: http.get("/ready"), lambda r: r.status_code == 200)
            await asyncio.to_thread(kafka.stop)

            created = await http.post("/api/v1/notifications/", json=MAILING)
            assert created.status_code == 201
            mailing_id = created.json()["id"]
            edited = await http.put(
                f"/api/v1/notifications/{mailing_id}/", json={**MAILING, "text": "Edited"}
            )
            assert edited.status_code == 200
            client = await http.post("/api/v1/clients/", json={"telephone": phone()})
            assert client.status_code == 201
            assert (await http.get("/ready")).status_code == 503

            await asyncio.to_thread(kafka.start)
            await eventually(lambda: http.get("/ready"), lambda r: r.status_code == 200)
            topics = topics_from(settings)
            # The client's event, the outbox's last row, first: the relay publishes rows
            # in order, so the mailing events (and any duplicate of them) are in by then.
            client_events = await read_topic(
                kafka.bootstrap, topics.client_events, expect=1, timeout=60
            )
            mailing_events = await read_topic(kafka.bootstrap, topics.mailing_events, expect=2)
    finally:
        await asyncio.gather(asyncio.to_thread(kafka.stop), asyncio.to_thread(pg.stop))

    key = str(mailing_id)
    assert _by_type(mailing_events) == [(key, "mailing.created"), (key, "mailing.updated")]
    assert mailing_events[0][1]["payload"]["version"] == 1
    assert mailing_events[1][1]["payload"]["version"] == 2
    assert mailing_events[1][1]["payload"]["text"] == "Edited"
    assert _by_type(client_events) == [(str(client.json()["id"]), "client.created")]


async def test_two_relays_never_publish_a_row_twice_and_keep_order_per_key(
    infra: Infra, tmp_path: Path
) -> None:
    pg = PostgresServer(tmp_path / "pg")
    await asyncio.to_thread(pg.start)
    await asyncio.to_thread(run_migrations, pg.url)
    settings = make_settings(infra, database_url=pg.url)
    await ensure_topics(settings)
    topics = topics_from(settings)
    engine = create_engine(settings, application_name="tests")
    sessions = create_session_factory(engine)
    keys, per_key = 40, 25
    events = [
        ClientCreated(payload=ClientData(id=k, phone=f"7{k:010d}", operator_code=seq))
        for seq in range(per_key)
        for k in range(keys)
    ]
    async with sessions() as session, session.begin():
        await add_events(session, topics.client_events, events)  # type: ignore[arg-type]

    brokers = [create_broker(settings, client_id=f"relay-{n}") for n in range(2)]
    try:
        for broker in brokers:
            await broker.start()
        relays = [
            OutboxRelay(sessions, broker, topics=topics.all(), service="test", batch_size=37)
            for broker in brokers
        ]

        async def drain(relay: OutboxRelay) -> None:
            while await relay.backlog():
                await relay.publish_once()

        await asyncio.gather(*(drain(relay) for relay in relays))
        async with sessions() as session:
            unpublished = await session.scalar(
                select(func.count()).select_from(Outbox).where(Outbox.published_at.is_(None))
            )
        assert unpublished == 0
        records = await read_topic(
            settings.kafka_bootstrap, topics.client_events, expect=len(events), timeout=60
        )
    finally:
        for broker in brokers:
            await broker.stop()
        await engine.dispose()
        await asyncio.to_thread(pg.stop)

    ids = [value["event_id"] for _, value in records]
    assert len(ids) == len(events)
    assert set(ids) == {str(event.event_id) for event in events}
    order: dict[str, list[int]] = defaultdict(list)
    for key, value in records:
        order[key].append(value["payload"]["operator_code"])
    assert all(sequence == list(range(per_key)) for sequence in order.values())
