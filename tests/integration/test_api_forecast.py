"""Forecast: planned UTC send time per client, by the scheduler's window algebra.

Expected times are worked out by hand below, not by calling the code under test.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from shared.windows import NO_ALLOWED_TIME_BEFORE_STOP as NO_TIME
from tests.support.api_helpers import phone

if TYPE_CHECKING:
    from tests.support.api_helpers import ApiClient


async def _clients(api: ApiClient, tag: str, zones: list[str]) -> list[int]:
    ids = []
    for zone in zones:
        body = {"telephone": phone(), "tag": [tag], "timezone": zone}
        response = await api.http.post("/api/v1/clients/", json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def _forecast(api: ApiClient, mailing: dict[str, Any], **params: Any) -> dict[str, Any]:
    created = await api.http.post("/api/v1/notifications/", json=mailing)
    assert created.status_code == 201, created.text
    response = await api.http.get(
        f"/api/v1/notifications/{created.json()['id']}/forecast/", params=params
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# Mailing from 2031-03-29 12:00 UTC, window 22:00-06:00 (crosses midnight).
CROSSING_MIDNIGHT = [
    # 12:00 UTC is 12:00 local: wait for 22:00.
    ("UTC", "2031-03-29 22:00:00"),
    # UTC+9: 21:00 local, opens at 22:00 local = 13:00 UTC.
    ("Asia/Tokyo", "2031-03-29 13:00:00"),
    # UTC+5:30: 17:30 local, opens at 22:00 local = 16:30 UTC.
    ("Asia/Kolkata", "2031-03-29 16:30:00"),
    # PDT (UTC-7): 05:00 local, inside the window's morning part: at once.
    ("America/Los_Angeles", "2031-03-29 12:00:00"),
    # CET (UTC+1) the day before the change to CEST: 22:00 CET = 21:00 UTC.
    ("Europe/Berlin", "2031-03-29 21:00:00"),
    # UTC-11: 01:00 local, inside: at once.
    ("Pacific/Pago_Pago", "2031-03-29 12:00:00"),
]


async def test_window_crossing_midnight_in_zones_east_and_west(api: ApiClient) -> None:
    tag = f"fc-{uuid.uuid4().hex[:8]}"
    ids = await _clients(api, tag, [zone for zone, _ in CROSSING_MIDNIGHT])
    body = await _forecast(
        api,
        {
            "date_time_start": "2031-03-29 12:00:00",
            "date_time_stop": "2031-04-05 00:00:00",
            "text": "Night owls",
            "tag": [tag],
            "time_interval_start": "22:00",
            "time_interval_end": "06:00",
        },
    )
    assert body["count"] == len(CROSSING_MIDNIGHT)
    assert body["next"] is None
    assert body["results"] == [
        {"client": client, "send_at": expected, "reason": None}
        for client, (_, expected) in zip(ids, CROSSING_MIDNIGHT, strict=True)
    ]
    assert body["by_hour"] == {
        "2031-03-29 12:00:00": 2,
        "2031-03-29 13:00:00": 1,
        "2031-03-29 16:00:00": 1,
        "2031-03-29 21:00:00": 1,
        "2031-03-29 22:00:00": 1,
    }


async def test_window_start_in_a_dst_gap_opens_when_the_clocks_jump(api: ApiClient) -> None:
    # Berlin, 2031-03-30: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never happens.
    tag = f"dst-{uuid.uuid4().hex[:8]}"
    [berlin, new_york] = await _clients(api, tag, ["Europe/Berlin", "America/New_York"])
    body = await _forecast(
        api,
        {
            "date_time_start": "2031-03-30 00:00:00",
            "date_time_stop": "2031-03-31 00:00:00",
            "text": "DST",
            "tag": tag,
            "time_interval_start": "02:30",
            "time_interval_end": "03:30",
        },
    )
    assert body["results"] == [
        {"client": berlin, "send_at": "2031-03-30 01:00:00", "reason": None},
        # New York is on EDT (UTC-4) already: 02:30 local = 06:30 UTC.
        {"client": new_york, "send_at": "2031-03-30 06:30:00", "reason": None},
    ]


async def test_no_allowed_time_before_stop_gives_null_and_the_reason(api: ApiClient) -> None:
    tag = f"stop-{uuid.uuid4().hex[:8]}"
    [utc, tokyo] = await _clients(api, tag, ["UTC", "Asia/Tokyo"])
    body = await _forecast(
        api,
        {
            "date_time_start": "2031-03-29 12:00:00",
            # Stop is exclusive: Tokyo's window opens exactly at the stop time.
            "date_time_stop": "2031-03-29 13:00:00",
            "text": "Too short",
            "tag": [tag],
            "time_interval_start": "22:00",
            "time_interval_end": "06:00",
        },
    )
    assert body["results"] == [
        {"client": utc, "send_at": None, "reason": NO_TIME},
        {"client": tokyo, "send_at": None, "reason": NO_TIME},
    ]
    assert body["by_hour"] == {}


async def test_without_window_everyone_at_start_and_pages_keep_the_totals(
    api: ApiClient,
) -> None:
    tag = f"page-{uuid.uuid4().hex[:8]}"
    ids = await _clients(api, tag, ["UTC", "Asia/Tokyo", "America/Sao_Paulo"])
    body = await _forecast(
        api,
        {
            "date_time_start": "2031-06-01 10:15:00",
            "date_time_stop": "2031-06-02 00:00:00",
            "text": "All at once",
            "tag": [tag],
        },
        limit=2,
        offset=1,
    )
    assert body["count"] == 3
    assert body["results"] == [
        {"client": ids[1], "send_at": "2031-06-01 10:15:00", "reason": None},
        {"client": ids[2], "send_at": "2031-06-01 10:15:00", "reason": None},
    ]
    assert body["previous"] is not None
    assert body["next"] is None
    assert body["by_hour"] == {"2031-06-01 10:00:00": 3}


@pytest.mark.parametrize(("codes", "expected"), [([], 2), ([900], 1), ([901], 0)])
async def test_audience_is_tag_and_operator_code(
    api: ApiClient, codes: list[int], expected: int
) -> None:
    tag = f"aud-{uuid.uuid4().hex[:8]}"
    for number in (f"7900{uuid.uuid4().int % 10**7:07d}", f"7555{uuid.uuid4().int % 10**7:07d}"):
        await api.http.post("/api/v1/clients/", json={"telephone": number, "tag": [tag, "x"]})
    await api.http.post("/api/v1/clients/", json={"telephone": phone(), "tag": ["other"]})
    body = await _forecast(
        api,
        {
            "date_time_start": "2031-06-01 10:00:00",
            "date_time_stop": "2031-06-02 00:00:00",
            "text": "Filtered",
            "tag": [tag, f"{tag}-unused"],
            "mobile_code": codes,
        },
    )
    assert body["count"] == expected
