"""Admin API, an operator's control of a mailing: pause, resume, cancel, replay of
failed messages, top failure reasons; 404 for an unknown id, 409 naming why."""

from __future__ import annotations

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
}
ACTIONS = ("pause", "resume", "cancel", "replay")


async def _sql(api: ApiClient, sql: str, **params: Any) -> Any:
    engine = create_engine(api.settings, application_name="tests")
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return result.scalar_one() if result.returns_rows else None
    finally:
        await engine.dispose()


async def _state_events(api: ApiClient, mailing_id: int) -> list[str]:
    engine = create_engine(api.settings, application_name="tests")
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT payload->'payload'->>'state' FROM outbox WHERE key = :k "
                    "AND payload->>'type' = 'mailing.state_changed' ORDER BY id"
                ),
                {"k": str(mailing_id)},
            )
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


async def _mailing(api: ApiClient) -> dict[str, Any]:
    response = await api.http.post(URL, json=BODY)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _messages(api: ApiClient, mailing_id: int, rows: list[tuple[str, str | None]]) -> None:
    """Messages as the pipeline leaves them, with the reporter's counters for them."""
    for status, error in rows:
        client = (await api.http.post("/api/v1/clients/", json={"telephone": phone()})).json()
        await _sql(
            api,
            "INSERT INTO message (mailing_id, client_id, status, last_error, due_at) "
            "VALUES (:m, :c, :s, :e, '2031-01-02 09:00:00+00')",
            m=mailing_id,
            c=client["id"],
            s=status,
            e=error,
        )
        await _sql(
            api,
            "INSERT INTO mailing_status_count (mailing_id, status, count) VALUES (:m, :s, 1) "
            "ON CONFLICT (mailing_id, status) DO UPDATE SET count = mailing_status_count.count + 1",
            m=mailing_id,
            s=status,
        )


async def test_an_unknown_mailing_is_404_for_every_action(api: ApiClient) -> None:
    for action in ACTIONS:
        response = await api.http.post(f"{URL}{2**62}/{action}/")
        assert response.status_code == 404, action
        assert response.json() == {"detail": f"mailing {2**62} not found"}


async def test_pause_resume_cancel_answer_the_mailing_with_its_new_state(api: ApiClient) -> None:
    mailing = await _mailing(api)
    ident = mailing["id"]

    paused = await api.http.post(f"{URL}{ident}/pause/")
    assert paused.status_code == 200, paused.text
    assert paused.json() == {**mailing, "state": "paused"}
    assert (await api.http.get(f"{URL}{ident}/")).json()["state"] == "paused"
    # Again: nothing changes, no second event.
    assert (await api.http.post(f"{URL}{ident}/pause/")).json()["state"] == "paused"

    # Never activated (its start is ahead): resumed, it waits for its start again.
    resumed = await api.http.post(f"{URL}{ident}/resume/")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "scheduled"
    assert (await api.http.post(f"{URL}{ident}/resume/")).json()["state"] == "scheduled"

    await _sql(
        api, "UPDATE mailing SET state = 'running', activated_at = now() WHERE id = :i", i=ident
    )
    await api.http.post(f"{URL}{ident}/pause/")
    assert (await api.http.post(f"{URL}{ident}/resume/")).json()["state"] == "running"

    cancelled = await api.http.post(f"{URL}{ident}/cancel/")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert (await api.http.post(f"{URL}{ident}/cancel/")).json()["state"] == "cancelled"

    assert await _state_events(api, ident) == [
        "paused",
        "scheduled",
        "paused",
        "running",
        "cancelled",
    ]


@pytest.mark.parametrize(
    ("state", "action", "says"),
    [
        ("finished", "pause", "cannot pause a finished mailing"),
        ("finished", "resume", "cannot resume a finished mailing"),
        ("finished", "cancel", "cannot cancel a finished mailing"),
        ("cancelled", "pause", "cannot pause a cancelled mailing"),
        ("cancelled", "resume", "cannot resume a cancelled mailing"),
    ],
)
async def test_an_impossible_transition_is_409_and_changes_nothing(
    api: ApiClient, state: str, action: str, says: str
) -> None:
    ident = (await _mailing(api))["id"]
    await _sql(api, "UPDATE mailing SET state = :s WHERE id = :i", s=state, i=ident)
    response = await api.http.post(f"{URL}{ident}/{action}/")
    assert response.status_code == 409, response.text
    [detail] = response.json()["detail"]
    assert detail["field"] == "state"
    assert says in detail["message"]
    assert (await api.http.get(f"{URL}{ident}/")).json()["state"] == state
    assert await _state_events(api, ident) == []


async def test_a_cancelled_mailing_cannot_be_edited(api: ApiClient) -> None:
    ident = (await _mailing(api))["id"]
    await api.http.post(f"{URL}{ident}/cancel/")
    response = await api.http.put(f"{URL}{ident}/", json={**BODY, "text": "again"})
    assert response.status_code == 409, response.text
    assert error_fields(response.json()) == {"state"}
    body = (await api.http.get(f"{URL}{ident}/")).json()
    assert (body["text"], body["version"]) == ("Spring sale", 1)


async def test_failed_messages_show_their_reasons_and_replay_by_reason(api: ApiClient) -> None:
    ident = (await _mailing(api))["id"]
    await _messages(
        api,
        ident,
        [
            ("failed", "HTTP 400: bad number"),
            ("failed", "HTTP 400: bad number"),
            ("failed", "gave up after 20 attempts: HTTP 503"),
            ("sent", None),
            ("expired", "stop time reached"),
        ],
    )
    body = (await api.http.get(f"{URL}{ident}/")).json()
    assert body["failure_reasons"] == [
        {"reason": "HTTP 400: bad number", "count": 2},
        {"reason": "gave up after 20 attempts: HTTP 503", "count": 1},
    ]
    failed = (await api.http.get(f"{URL}{ident}/messages/?status=failed")).json()
    assert failed["count"] == 3
    assert sorted(m["last_error"] for m in failed["results"]) == [
        "HTTP 400: bad number",
        "HTTP 400: bad number",
        "gave up after 20 attempts: HTTP 503",
    ]

    one = await api.http.post(
        f"{URL}{ident}/replay/", json={"reason": "gave up after 20 attempts: HTTP 503"}
    )
    assert one.status_code == 200, one.text
    assert one.json() == {"replayed": 1}
    assert (await api.http.post(f"{URL}{ident}/replay/")).json() == {"replayed": 2}
    assert (await api.http.post(f"{URL}{ident}/replay/", json={})).json() == {"replayed": 0}
    assert (
        await _sql(
            api,
            "SELECT count(*) FROM message WHERE mailing_id = :i AND status = 'scheduled' "
            "AND last_error = 'replayed by an operator' AND due_at <= now()",
            i=ident,
        )
        == 3
    )
    # Each named in a status event, so the reporter's counters follow.
    assert (
        await _sql(
            api,
            "SELECT count(*) FROM outbox, "
            "jsonb_array_elements(payload->'payload'->'messages') AS m "
            "WHERE key = :k AND payload->>'type' = 'messages.transitioned' "
            "AND payload->'payload'->>'status' = 'scheduled' "
            "AND m->>'previous_status' = 'failed'",
            k=str(ident),
        )
        == 3
    )


async def test_a_cancelled_or_stopped_mailing_replays_nothing(api: ApiClient) -> None:
    cancelled = (await _mailing(api))["id"]
    await _messages(api, cancelled, [("failed", "HTTP 400: bad number")])
    await api.http.post(f"{URL}{cancelled}/cancel/")
    assert (await api.http.post(f"{URL}{cancelled}/replay/")).json() == {"replayed": 0}

    stopped = (await _mailing(api))["id"]
    await _messages(api, stopped, [("failed", "HTTP 400: bad number")])
    await _sql(
        api,
        "UPDATE mailing SET start_at = now() - interval '2 hours', "
        "stop_at = now() - interval '1 hour' WHERE id = :i",
        i=stopped,
    )
    assert (await api.http.post(f"{URL}{stopped}/replay/")).json() == {"replayed": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"reason": 5}', "reason"),
        ('{"reason": "a\\u0000b"}', "reason"),  # PostgreSQL text cannot hold it
        ('{"reason": "\\udbcd"}', "reason"),  # a lone surrogate: not valid Unicode
        ('{"why": "x"}', "why"),
        ("[1]", "body"),
    ],
)
async def test_a_bad_replay_body_is_422_naming_the_field(
    api: ApiClient, body: str, field: str
) -> None:
    ident = (await _mailing(api))["id"]
    response = await api.http.post(
        f"{URL}{ident}/replay/", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert error_fields(response.json()) == {field}
