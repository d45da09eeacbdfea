"""Admin API, mailings: every endpoint's success and error paths, exact JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from shared.db import create_engine
from tests.support.api_helpers import error_fields, phone

if TYPE_CHECKING:
    from tests.support.api_helpers import ApiClient

URL = "/api/v1/notifications/"
BODY: dict[str, Any] = {
    "date_time_start": "2031-01-02 09:00:00",
    "text": "Spring sale",
    "date_time_stop": "2031-01-03 21:00:00",
    "tag": ["urgent"],
    "mobile_code": [911],
    "time_interval_start": "09:00",
    "time_interval_end": "21:00",
}
SENT_AT = datetime(2031, 1, 2, 9, 0, 1, 500000, tzinfo=UTC)
ZERO = {"Created, waiting": 0, "Sent": 0, "Unable to deliver": 0}


async def test_create_returns_the_contract_shape(api: ApiClient) -> None:
    response = await api.http.post(URL, json=BODY)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        **BODY,
        "id": body["id"],
        "number_of_messages": ZERO,
        "messages_by_status": {},
        "state": "scheduled",
        "version": 1,
        "failure_reasons": [],
    }
    assert (await api.http.get(f"{URL}{body['id']}/")).json() == body


async def test_offsets_are_converted_to_utc_and_filters_are_optional(api: ApiClient) -> None:
    response = await api.http.post(
        URL,
        json={
            "date_time_start": "2031-01-02T12:00:00+03:00",
            "date_time_stop": "2031-01-02T10:30:00Z",
            "text": "x",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["date_time_start"] == "2031-01-02 09:00:00"
    assert body["date_time_stop"] == "2031-01-02 10:30:00"
    assert body["tag"] == []
    assert body["mobile_code"] == []
    assert body["time_interval_start"] is None
    assert body["time_interval_end"] is None


async def test_single_values_are_accepted_as_one_element_filters(api: ApiClient) -> None:
    body = (await api.http.post(URL, json={**BODY, "tag": "vip", "mobile_code": 921})).json()
    assert body["tag"] == ["vip"]
    assert body["mobile_code"] == [921]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"date_time_stop": "2031-01-02 09:00:00"}, "date_time_stop"),
        ({"date_time_stop": "2030-01-01 00:00:00"}, "date_time_stop"),
        ({"date_time_start": "yesterday"}, "date_time_start"),
        ({"date_time_start": None}, "date_time_start"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 2001}, "text"),
        ({"text": 5}, "text"),
        ({"time_interval_end": None}, "time_interval_end"),
        ({"time_interval_start": None}, "time_interval_start"),
        ({"time_interval_end": "09:00"}, "time_interval_end"),
        ({"time_interval_start": "9am"}, "time_interval_start"),
        ({"time_interval_start": "25:00"}, "time_interval_start"),
        ({"time_interval_start": "09:00:30"}, "time_interval_start"),
        ({"mobile_code": [1000]}, "mobile_code.0"),
        ({"mobile_code": ["abc"]}, "mobile_code.0"),
        ({"tag": [""]}, "tag.0"),
        ({"priority": "high"}, "priority"),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_changes_nothing(
    api: ApiClient, change: dict[str, Any], field: str
) -> None:
    before = await api.table_counts()
    response = await api.http.post(URL, json={**BODY, **change})
    assert response.status_code == 422, response.text
    assert field in error_fields(response.json())
    assert await api.table_counts() == before


async def test_missing_fields_are_each_named(api: ApiClient) -> None:
    response = await api.http.post(URL, json={})
    assert response.status_code == 422
    assert error_fields(response.json()) == {"date_time_start", "date_time_stop", "text"}


async def test_list_envelope_with_counts(api: ApiClient) -> None:
    created = (await api.http.post(URL, json=BODY)).json()
    everything = (await api.http.get(URL)).json()
    assert set(everything) == {"count", "next", "previous", "results"}
    assert created in everything["results"]
    page = (await api.http.get(URL, params={"limit": 1, "offset": 0})).json()
    assert len(page["results"]) == 1
    assert page["previous"] is None
    assert page["next"] == (
        "http://testserver/api/v1/notifications/?limit=1&offset=1"
        if everything["count"] > 1
        else None
    )


async def test_put_makes_a_new_version(api: ApiClient) -> None:
    created = (await api.http.post(URL, json=BODY)).json()
    change = {
        **BODY,
        "text": "Updated",
        "tag": [],
        "time_interval_start": None,
        "time_interval_end": None,
    }
    response = await api.http.put(f"{URL}{created['id']}/", json=change)
    assert response.status_code == 200, response.text
    assert response.json() == {
        **created,
        "text": "Updated",
        "tag": [],
        "time_interval_start": None,
        "time_interval_end": None,
        "version": 2,
    }
    bad = await api.http.put(f"{URL}{created['id']}/", json={**BODY, "text": ""})
    assert bad.status_code == 422
    assert (await api.http.get(f"{URL}{created['id']}/")).json()["version"] == 2


async def test_delete_removes_the_mailing_and_its_messages(api: ApiClient) -> None:
    mailing = (await api.http.post(URL, json=BODY)).json()
    client = (await api.http.post("/api/v1/clients/", json={"telephone": phone()})).json()
    await _insert_messages(api, mailing["id"], client["id"], ["scheduled"])
    response = await api.http.delete(f"{URL}{mailing['id']}/")
    assert response.status_code == 204
    assert (await api.http.get(f"{URL}{mailing['id']}/")).status_code == 404
    assert (await api.http.get(f"{URL}{mailing['id']}/messages/")).status_code == 404
    assert (await api.http.delete(f"{URL}{mailing['id']}/")).status_code == 404
    assert (
        await _scalar(api, f"SELECT count(*) FROM message WHERE mailing_id = {mailing['id']}") == 0
    )


async def test_missing_mailing_is_404_everywhere(api: ApiClient) -> None:
    missing = f"{URL}{2**62}/"
    for method, path in [
        ("GET", ""),
        ("PUT", ""),
        ("DELETE", ""),
        ("GET", "messages/"),
        ("GET", "forecast/"),
    ]:
        response = await api.http.request(
            method, missing + path, json=BODY if method == "PUT" else None
        )
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": f"mailing {2**62} not found"}


async def _scalar(api: ApiClient, sql: str) -> Any:
    engine = create_engine(api.settings, application_name="tests")
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar_one()
    finally:
        await engine.dispose()


async def _insert_messages(
    api: ApiClient, mailing_id: int, client_id: int, statuses: list[str]
) -> None:
    """Messages as the pipeline would leave them (one client per message, unique pairs),
    with the reporter's counters for them."""
    engine = create_engine(api.settings, application_name="tests")
    try:
        async with engine.begin() as conn:
            for index, status in enumerate(statuses):
                if index == 0:
                    target = client_id
                else:
                    target = (
                        await conn.execute(
                            text("INSERT INTO client (phone) VALUES (:p) RETURNING id"),
                            {"p": phone()},
                        )
                    ).scalar_one()
                await conn.execute(
                    text(
                        "INSERT INTO message (mailing_id, client_id, status, sent_at) "
                        "VALUES (:m, :c, :s, :sent_at)"
                    ),
                    {
                        "m": mailing_id,
                        "c": target,
                        "s": status,
                        "sent_at": SENT_AT if status == "sent" else None,
                    },
                )
                # What the reporter keeps for them (the API reads these counters).
                await conn.execute(
                    text(
                        "INSERT INTO mailing_status_count (mailing_id, status, count) "
                        "VALUES (:m, :s, 1) ON CONFLICT (mailing_id, status) "
                        "DO UPDATE SET count = mailing_status_count.count + 1"
                    ),
                    {"m": mailing_id, "s": status},
                )
    finally:
        await engine.dispose()


async def test_counts_buckets_and_messages(api: ApiClient) -> None:
    mailing = (await api.http.post(URL, json=BODY)).json()
    client = (await api.http.post("/api/v1/clients/", json={"telephone": phone()})).json()
    statuses = [
        "sent",
        "scheduled",
        "queued",
        "sending",
        "retrying",
        "sent",
        "failed",
        "expired",
        "cancelled",
    ]
    await _insert_messages(api, mailing["id"], client["id"], statuses)

    body = (await api.http.get(f"{URL}{mailing['id']}/")).json()
    assert body["number_of_messages"] == {"Created, waiting": 4, "Sent": 2, "Unable to deliver": 2}
    assert body["messages_by_status"] == {
        "sent": 2,
        "scheduled": 1,
        "queued": 1,
        "sending": 1,
        "retrying": 1,
        "failed": 1,
        "expired": 1,
        "cancelled": 1,
    }

    messages = (await api.http.get(f"{URL}{mailing['id']}/messages/")).json()
    assert messages["count"] == 9
    first = messages["results"][0]
    assert first == {
        "id": first["id"],
        "pub_date": "2031-01-02T09:00:01.500000Z",
        "status": "Sent",
        "notification": mailing["id"],
        "clients": [client["id"]],
        "state": "sent",
        "attempts": 0,
        "due_at": None,
        "sent_at": "2031-01-02T09:00:01.500000Z",
        "last_error": None,
    }
    sent = (await api.http.get(f"{URL}{mailing['id']}/messages/", params={"status": "Sent"})).json()
    assert sent["count"] == 2
    assert {m["state"] for m in sent["results"]} == {"sent"}
    waiting = (
        await api.http.get(
            f"{URL}{mailing['id']}/messages/",
            params={"status": "Created, waiting", "limit": 2, "offset": 2},
        )
    ).json()
    assert waiting["count"] == 4
    assert [m["status"] for m in waiting["results"]] == ["Created, waiting"] * 2
    assert waiting["next"] is None
    exact = (
        await api.http.get(f"{URL}{mailing['id']}/messages/", params={"status": "expired"})
    ).json()
    assert [m["status"] for m in exact["results"]] == ["Unable to deliver"]
    bad = await api.http.get(f"{URL}{mailing['id']}/messages/", params={"status": "lost"})
    assert bad.status_code == 422
    assert error_fields(bad.json()) == {"status"}
