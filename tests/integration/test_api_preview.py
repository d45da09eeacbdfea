"""Audience preview: who a mailing body would reach and when, without creating it.

Its counts are checked against the clients the test made, its histogram against the
forecast of the mailing created from the same body, and both against the old per-client
computation (tests/support/forecast_reference.py) on a varied audience.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from shared.db import create_engine, create_session_factory
from tests.support.api_helpers import error_fields
from tests.support.forecast_reference import audience_rows, per_client

if TYPE_CHECKING:
    from tests.support.api_helpers import ApiClient

PREVIEW = "/api/v1/notifications/preview/"
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "America/St_Johns",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Pago_Pago",
]
CODES = [900, 911, 925, 977]


async def _population(api: ApiClient, prefix: str, size: int) -> list[dict[str, Any]]:
    """`size` clients over every zone and code; each has `<prefix>-all` and some of
    `<prefix>-a`, `-b`, `-c`."""
    rng = random.Random(prefix)
    clients = []
    for position in range(size):
        code = CODES[position % len(CODES)]
        tags = [f"{prefix}-all"] + [f"{prefix}-{letter}" for letter in "abc" if rng.random() < 0.4]
        body = {
            "telephone": f"7{code}{rng.randrange(10**7):07d}",
            "tag": tags,
            "timezone": ZONES[(position * 7) % len(ZONES)],
        }
        response = await api.http.post("/api/v1/clients/", json=body)
        assert response.status_code == 201, response.text
        clients.append({**body, "id": response.json()["id"], "code": code})
    return clients


def _bodies(prefix: str) -> list[dict[str, Any]]:
    return [
        # Window crossing midnight, around Europe's spring-forward night.
        {
            "date_time_start": "2031-03-29 12:00:00",
            "date_time_stop": "2031-04-05 00:00:00",
            "text": "Night owls",
            "tag": [f"{prefix}-all"],
            "time_interval_start": "22:00",
            "time_interval_end": "06:00",
        },
        # A window start in Berlin's DST gap; two tags, two codes.
        {
            "date_time_start": "2031-03-30 00:00:00",
            "date_time_stop": "2031-03-31 00:00:00",
            "text": "DST",
            "tag": [f"{prefix}-a", f"{prefix}-b"],
            "mobile_code": [911, 977],
            "time_interval_start": "02:30",
            "time_interval_end": "03:30",
        },
        # Fall-back night in Europe; a stop an hour after start: many unreachable.
        {
            "date_time_start": "2031-10-26 00:00:00",
            "date_time_stop": "2031-10-26 01:00:00",
            "text": "Short",
            "tag": [f"{prefix}-c"],
            "time_interval_start": "02:30",
            "time_interval_end": "04:00",
        },
        # No window: everyone at the start.
        {
            "date_time_start": "2031-06-01 10:15:00",
            "date_time_stop": "2031-06-02 00:00:00",
            "text": "All at once",
            "tag": [f"{prefix}-all"],
            "mobile_code": [900],
        },
    ]


def _matches(client: dict[str, Any], body: dict[str, Any]) -> bool:
    codes = body.get("mobile_code", [])
    return (not codes or client["code"] in codes) and bool(set(client["tag"]) & set(body["tag"]))


async def test_preview_equals_the_forecast_and_the_per_client_computation(
    api: ApiClient,
) -> None:
    prefix = f"pv-{uuid.uuid4().hex[:8]}"
    clients = await _population(api, prefix, 150)
    engine = create_engine(api.settings, application_name="tests")
    try:
        for body in _bodies(prefix):
            response = await api.http.post(PREVIEW, json=body)
            assert response.status_code == 200, response.text
            preview = response.json()

            reached = [client for client in clients if _matches(client, body)]
            assert preview["audience"] == len(reached) > 0
            assert preview["by_timezone"] == dict(
                sorted(Counter(client["timezone"] for client in reached).items())
            )
            assert preview["by_operator_code"] == {
                str(code): count
                for code, count in sorted(Counter(c["code"] for c in reached).items())
            }
            assert preview["by_tag"] == dict(
                sorted(Counter(tag for client in reached for tag in client["tag"]).items())
            )

            created = await api.http.post("/api/v1/notifications/", json=body)
            assert created.status_code == 201, created.text
            forecast = (
                await api.http.get(
                    f"/api/v1/notifications/{created.json()['id']}/forecast/",
                    params={"limit": 1000},
                )
            ).json()
            assert forecast["count"] == preview["audience"]
            assert forecast["by_hour"] == preview["by_hour"]

            # The old way: every client loaded and planned on its own.
            async with create_session_factory(engine)() as session:
                rows = await audience_rows(session, body["tag"], body.get("mobile_code", []))
            window = (
                (
                    time.fromisoformat(body["time_interval_start"]),
                    time.fromisoformat(body["time_interval_end"]),
                )
                if "time_interval_start" in body
                else None
            )
            old = per_client(
                rows,
                datetime.fromisoformat(body["date_time_start"]).replace(tzinfo=UTC),
                datetime.fromisoformat(body["date_time_stop"]).replace(tzinfo=UTC),
                window,
                datetime.now(UTC),
            )
            assert preview["by_hour"] == old.by_hour
            assert preview["unreachable"] == old.unreachable
            assert preview["first_send_at"] == old.first_send_at
            assert preview["last_send_at"] == old.last_send_at
            assert [
                (item["client"], item["send_at"], item["reason"]) for item in forecast["results"]
            ] == old.items
    finally:
        await engine.dispose()


async def test_unreachable_clients_are_counted_and_have_no_send_time(api: ApiClient) -> None:
    prefix = f"pu-{uuid.uuid4().hex[:8]}"
    for zone in ["UTC", "UTC", "Asia/Tokyo", "America/Los_Angeles"]:
        response = await api.http.post(
            "/api/v1/clients/",
            json={
                "telephone": f"7900{random.randrange(10**7):07d}",
                "tag": [prefix],
                "timezone": zone,
            },
        )
        assert response.status_code == 201, response.text
    # 12:00-13:00 UTC with a 22:00-06:00 window: UTC (12:00 local) waits past the stop,
    # Tokyo opens exactly at the stop (exclusive), Los Angeles (05:00 PDT) goes at once.
    response = await api.http.post(
        PREVIEW,
        json={
            "date_time_start": "2031-03-29 12:00:00",
            "date_time_stop": "2031-03-29 13:00:00",
            "text": "Too short",
            "tag": [prefix],
            "time_interval_start": "22:00",
            "time_interval_end": "06:00",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "audience": 4,
        "by_operator_code": {"900": 4},
        "by_tag": {prefix: 4},
        "by_timezone": {"America/Los_Angeles": 1, "Asia/Tokyo": 1, "UTC": 2},
        "by_hour": {"2031-03-29 12:00:00": 1},
        "first_send_at": "2031-03-29 12:00:00",
        "last_send_at": "2031-03-29 12:00:00",
        "unreachable": 3,
    }


async def test_an_empty_audience_is_zero_everywhere(api: ApiClient) -> None:
    response = await api.http.post(
        PREVIEW,
        json={
            "date_time_start": "2031-06-01 10:00:00",
            "date_time_stop": "2031-06-02 00:00:00",
            "text": "Nobody",
            "tag": [f"none-{uuid.uuid4().hex[:8]}"],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "audience": 0,
        "by_operator_code": {},
        "by_tag": {},
        "by_timezone": {},
        "by_hour": {},
        "first_send_at": None,
        "last_send_at": None,
        "unreachable": 0,
    }


async def _last_outbox_id(api: ApiClient) -> int:
    engine = create_engine(api.settings, application_name="tests")
    try:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(text("SELECT coalesce(max(id), 0) FROM outbox"))).scalar_one()
            )
    finally:
        await engine.dispose()


VALID = {
    "date_time_start": "2031-06-01 10:00:00",
    "date_time_stop": "2031-06-02 00:00:00",
    "text": "Preview",
    "tag": ["preview-nobody"],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"date_time_stop": "2031-06-01 09:00:00"}, "date_time_stop"),
        ({"date_time_start": "tomorrow"}, "date_time_start"),
        ({"text": "   "}, "text"),
        ({"time_interval_start": "09:00"}, "time_interval_end"),
        ({"time_interval_start": "25:00", "time_interval_end": "10:00"}, "time_interval_start"),
        ({"mobile_code": ["abc"]}, "mobile_code"),
        ({"tag": "x" * 65}, "tag"),
        ({"unknown": 1}, "unknown"),
    ],
)
async def test_bad_body_is_422_naming_the_field_as_when_creating(
    api: ApiClient, change: dict[str, Any], field: str
) -> None:
    body = {**VALID, **change}
    created = await api.http.post("/api/v1/notifications/", json=body)
    assert created.status_code == 422
    response = await api.http.post(PREVIEW, json=body)
    assert response.status_code == 422, response.text
    # A list item is named by its position too ("tag.0").
    assert field in {name.split(".")[0] for name in error_fields(response.json())}
    assert error_fields(response.json()) == error_fields(created.json())


async def test_preview_creates_and_publishes_nothing(api: ApiClient) -> None:
    prefix = f"pn-{uuid.uuid4().hex[:8]}"
    await _population(api, prefix, 5)
    before = await api.table_counts()
    last_event = await _last_outbox_id(api)
    for body in [*_bodies(prefix), {"text": "bad"}]:
        await api.http.post(PREVIEW, json=body)
    assert await api.table_counts() == before
    assert await _last_outbox_id(api) == last_event


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_other_methods_on_preview_are_405(api: ApiClient, method: str) -> None:
    response = await api.http.request(method, PREVIEW, json=VALID)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
