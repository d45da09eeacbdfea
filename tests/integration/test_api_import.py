"""Bulk import and client search: what an operator loading a list relies on.

Good rows are written and bad ones named by line and field; `upsert` counts what it
changed; a file that cannot be read at all is a 4xx that changes nothing; the changes
go out as `clients.imported` events the scheduler can read.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from services.api.import_file import MAX_LINE_CHARS
from shared.events import ClientsImported, client_event_adapter
from shared.models import Outbox
from tests.support.api_helpers import phone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from tests.support.api_helpers import ApiClient

URL = "/api/v1/clients/import/"
CSV = {"Content-Type": "text/csv"}
NDJSON = {"Content-Type": "application/x-ndjson"}


async def _client(api: ApiClient, number: str) -> dict[str, Any] | None:
    found = (await api.http.get("/api/v1/clients/", params={"telephone": number})).json()
    results: list[dict[str, Any]] = found["results"]
    return results[0] if results else None


def _tags(client: dict[str, Any] | None) -> list[str]:
    assert client is not None
    return [tag["name"] for tag in client["tag"]]


async def test_a_good_csv_file_creates_every_client(api: ApiClient) -> None:
    a, b, c = phone(), phone(), phone()
    body = (
        "telephone,tag,timezone\n"
        f"{a},vip|new,Europe/Moscow\r\n"
        f"{b},,\n"
        f'"{c}","spring, 2031",Asia/Singapore\n'
    )
    response = await api.http.post(URL, content=body.encode(), headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "rejected": [],
        "rejected_count": 0,
    }
    first = await _client(api, a)
    assert first is not None
    assert first["timezone"] == "Europe/Moscow"
    assert first["mobile_code"] == int(a[1:4])
    assert _tags(first) == ["new", "vip"]
    second = await _client(api, b)
    assert second is not None
    assert (second["timezone"], second["tag"]) == ("UTC", [])
    third = await _client(api, c)
    assert _tags(third) == ["spring, 2031"]
    assert third is not None
    assert third["timezone"] == "Asia/Singapore"


async def test_bad_rows_are_named_by_line_and_field_and_good_rows_imported(
    api: ApiClient,
) -> None:
    good, other, twice = phone(), phone(), phone()
    body = "\n".join(
        [
            "timezone,telephone,tag",  # any column order
            f"UTC,{good},a",  # 2
            "UTC,8123,a",  # 3: telephone
            f"Mars/Olympus,{phone()},a",  # 4: timezone
            f"UTC,{phone()}",  # 5: too few cells
            f"UTC,{twice},a",  # 6
            f"UTC,{twice},b",  # 7: the same telephone again
            f"UTC,{phone()},a||b",  # 8: an empty tag name
            "",  # blank lines are skipped
            f"UTC,{other},",  # 10
        ]
    )
    response = await api.http.post(URL, content=body.encode(), headers=CSV)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["created"], result["rejected_count"]) == (3, 5)
    named = [(row["line"], row["field"]) for row in result["rejected"]]
    assert named == [(3, "telephone"), (4, "timezone"), (5, "line"), (7, "telephone"), (8, "tag.1")]
    assert "7 followed by 10 digits" in result["rejected"][0]["message"]
    assert "line 6" in result["rejected"][3]["message"]
    assert _tags(await _client(api, twice)) == ["a"]  # the first line counts
    assert await _client(api, good) is not None
    assert await _client(api, other) is not None


async def test_create_rejects_known_telephones_and_upsert_counts_what_changed(
    api: ApiClient,
) -> None:
    same, zone, tags, new = phone(), phone(), phone(), phone()
    seed = "telephone,tag,timezone\n" + "".join(f"{n},a|b,UTC\n" for n in (same, zone, tags))
    assert (await api.http.post(URL, content=seed.encode(), headers=CSV)).json()["created"] == 3

    again = f"telephone,tag,timezone\n{same},a|b,UTC\n{new},x,UTC\n"
    created = (await api.http.post(URL, content=again.encode(), headers=CSV)).json()
    assert (created["created"], created["updated"], created["unchanged"]) == (1, 0, 0)
    assert [(row["line"], row["field"]) for row in created["rejected"]] == [(2, "telephone")]
    assert "belongs to a client" in created["rejected"][0]["message"]

    changes = (
        f"telephone,tag,timezone\n{same},b|a,UTC\n{zone},a|b,Europe/Paris\n"
        f"{tags},c,UTC\n{phone()},,UTC\n"
    )
    response = await api.http.post(
        URL, params={"mode": "upsert"}, content=changes.encode(), headers=CSV
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["created"], result["updated"], result["unchanged"]) == (1, 2, 1)
    assert result["rejected"] == []
    moved = await _client(api, zone)
    assert moved is not None
    assert moved["timezone"] == "Europe/Paris"
    assert _tags(moved) == ["a", "b"]
    assert _tags(await _client(api, tags)) == ["c"]


async def test_ndjson_rows_are_checked_as_post_bodies(api: ApiClient) -> None:
    good, bad_field = phone(), phone()
    body = "\n".join(
        [
            f'{{"telephone": {good}, "tag": "solo", "timezone": "Europe/Moscow"}}',
            "{not json",
            f'{{"telephone": "{bad_field}", "colour": "red"}}',
            f'{{"telephone": "{phone()}", "mobile_code": 1}}',
            "[1, 2]",
        ]
    )
    response = await api.http.post(URL, content=body.encode(), headers=NDJSON)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["created"] == 1
    named = [(row["line"], row["field"]) for row in result["rejected"]]
    assert named == [(2, "line"), (3, "colour"), (4, "mobile_code"), (5, "line")]
    assert _tags(await _client(api, good)) == ["solo"]
    assert await _client(api, bad_field) is None


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _unreadable_cases() -> list[Any]:
    row = f"{phone()},a,UTC\n".encode()
    header = b"telephone,tag,timezone\n"
    return [
        pytest.param(CSV, [b"phone,tags\n", row], 422, "header", id="wrong-header"),
        pytest.param(CSV, [row, row], 422, "header", id="no-header"),
        pytest.param(CSV, [header, b"telephone,x\n"], 200, None, id="header-then-a-bad-row"),
        pytest.param(
            CSV,
            [header, row, "79111234567,caf\xe9,UTC\n".encode("latin-1")],
            422,
            "body",
            id="not-utf8-late",
        ),
        pytest.param(CSV, [header, row, b"\xe2\x82"], 422, "body", id="truncated-utf8"),
        pytest.param(CSV, [], 422, "body", id="empty"),
        pytest.param(CSV, [b"\n \n"], 422, "body", id="blank"),
        pytest.param(
            CSV, [header, row, b"7" * (MAX_LINE_CHARS + 1), b"\n"], 422, "body", id="huge-line"
        ),
        pytest.param(
            CSV, [header, row, b"x" * (MAX_LINE_CHARS * 2)], 422, "body", id="huge-last-line"
        ),
        pytest.param(NDJSON, [b"\xff\xfe{}\n"], 422, "body", id="ndjson-not-utf8"),
        pytest.param({"Content-Type": "application/json"}, [row], 415, "content-type", id="json"),
        pytest.param({}, [row], 415, "content-type", id="no-content-type"),
    ]


@pytest.mark.parametrize(("headers", "parts", "status", "field"), _unreadable_cases())
async def test_a_file_that_cannot_be_read_is_a_4xx_that_changes_nothing(
    api: ApiClient, headers: dict[str, str], parts: list[bytes], status: int, field: str | None
) -> None:
    before = await api.table_counts()
    response = await api.http.post(URL, content=_chunks(*parts), headers=headers)
    assert response.status_code == status, response.text
    if field is None:  # a header and nothing else: a valid file of no rows
        assert response.json()["created"] == 0
        assert [row["line"] for row in response.json()["rejected"]] == [2]
        return
    detail = response.json()["detail"]
    assert [item["field"] for item in detail] == [field]
    assert detail[0]["message"]
    assert await api.table_counts() == before


async def test_an_import_over_the_json_body_limit_is_accepted(api: ApiClient) -> None:
    rows = [f"{phone()},bulk,UTC\n" for _ in range(60_000)]
    body = ("telephone,tag,timezone\n" + "".join(rows)).encode()
    assert len(body) > api.settings.api_max_body_bytes
    response = await api.http.post(URL, content=body, headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json()["created"] + response.json()["rejected_count"] == 60_000
    too_big = await api.http.post(
        "/api/v1/clients/", content=body, headers={"Content-Type": "application/json"}
    )
    assert too_big.status_code == 413


async def test_changes_are_staged_as_clients_imported_events(
    api: ApiClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    known, new = phone(), phone()
    await api.http.post("/api/v1/clients/", json={"telephone": known, "timezone": "UTC"})
    known_id = (await _client(api, known) or {})["id"]
    async with sessions() as session:
        last = await session.scalar(select(Outbox.id).order_by(Outbox.id.desc()).limit(1))
    body = f"telephone,tag,timezone\n{known},t,Asia/Tokyo\n{new},t,UTC\n"
    response = await api.http.post(URL, params={"mode": "upsert"}, content=body, headers=CSV)
    assert response.status_code == 200, response.text
    new_id = (await _client(api, new) or {})["id"]
    async with sessions() as session:
        rows = (await session.scalars(select(Outbox).where(Outbox.id > (last or 0)))).all()
    events = [client_event_adapter.validate_python(row.payload) for row in rows]
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, ClientsImported)
    assert event.payload.created == [new_id]
    assert event.payload.updated == [known_id]
    assert event.payload.timezone_changed == [known_id]
    assert rows[0].key == str(min(known_id, new_id))
    assert rows[0].topic.endswith("client.events")


async def test_search_filters_combine_with_and_keep_paging(api: ApiClient) -> None:
    prefix = f"79{random.randrange(10**5, 10**6)}"
    tag = f"search-{prefix}"
    numbers = [f"{prefix}{i:03d}" for i in range(4)]
    zones = ["Europe/Moscow", "Europe/Moscow", "UTC", "Europe/Moscow"]
    tags = [[tag], [tag, "other"], [tag], []]
    for number, zone, tag_list in zip(numbers, zones, tags, strict=True):
        created = await api.http.post(
            "/api/v1/clients/", json={"telephone": number, "timezone": zone, "tag": tag_list}
        )
        assert created.status_code == 201, created.text

    async def found(**params: Any) -> list[str]:
        response = await api.http.get("/api/v1/clients/", params=params)
        assert response.status_code == 200, response.text
        return [client["telephone"] for client in response.json()["results"]]

    assert await found(telephone=prefix) == numbers
    assert await found(telephone=prefix, tag=tag) == numbers[:3]
    assert await found(telephone=prefix, tag=tag, timezone="Europe/Moscow") == numbers[:2]
    assert await found(tag=tag, timezone="UTC") == [numbers[2]]
    assert await found(telephone=prefix, mobile_code=int(prefix[1:4])) == numbers
    assert await found(telephone=prefix, mobile_code=(int(prefix[1:4]) + 1) % 1000) == []
    paged = (
        await api.http.get("/api/v1/clients/", params={"telephone": prefix, "limit": 1})
    ).json()
    assert paged["count"] == 4
    assert f"telephone={prefix}" in paged["next"]
    for params in ({"telephone": "7a"}, {"mobile_code": 1000}, {"timezone": "Nowhere"}):
        bad = await api.http.get("/api/v1/clients/", params=params)
        assert bad.status_code == 422
        assert [item["field"] for item in bad.json()["detail"]] == list(params)


async def test_other_methods_on_the_import_path_are_405_and_a_bad_tag_filter_422(
    api: ApiClient,
) -> None:
    for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS"):
        response = await api.http.request(method, URL)
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "POST"
    bad = await api.http.get("/api/v1/clients/", params={"tag": "a\x00b"})
    assert bad.status_code == 422
    assert [item["field"] for item in bad.json()["detail"]] == ["tag"]
