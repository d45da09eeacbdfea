"""The audit trail on the real PostgreSQL: exact entries for a sequence of writes by two
keys, the filters and paging, who may read it, an entry only with its write, the actor
on the request's log line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from structlog.testing import capture_logs

from tests.support.api_helpers import phone
from tests.support.keys import bearer, create_key, unique

if TYPE_CHECKING:
    from tests.support.api_helpers import ApiClient

AUDIT = "/api/v1/audit/"
CLIENTS = "/api/v1/clients/"
MAILINGS = "/api/v1/notifications/"
MAILING = {
    "date_time_start": "2031-01-02 09:00:00",
    "text": "Spring sale",
    "date_time_stop": "2031-01-03 21:00:00",
}
FIELDS = {
    "at",
    "actor",
    "action",
    "object_type",
    "object_id",
    "via",
    "details",
    "remote_addr",
    "request_id",
}


def _short(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (
        entry["actor"],
        entry["action"],
        entry["object_type"],
        entry["object_id"],
        entry["details"],
    )


async def _trail(api: ApiClient, **filters: str) -> list[dict[str, Any]]:
    response = await api.http.get(AUDIT, params={**filters, "limit": 1000})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


async def test_a_sequence_of_writes_by_two_keys_is_recorded_exactly(api: ApiClient) -> None:
    ops_name, admin_name = unique("ops"), unique("boss")
    ops = await create_key(api.http, "operator", name=ops_name)
    boss = await create_key(api.http, "admin", name=admin_name)
    a, b = bearer(ops["key"]), bearer(boss["key"])
    http = api.http

    client = (
        await http.post(CLIENTS, json={"telephone": phone(), "tag": ["vip"]}, headers=a)
    ).json()
    cid = str(client["id"])
    patch = await http.patch(f"{CLIENTS}{cid}/", json={"timezone": "Europe/Moscow"}, headers=a)
    assert patch.status_code == 200
    put = await http.put(
        f"{CLIENTS}{cid}/",
        json={"telephone": client["telephone"], "tag": ["new"], "timezone": "Europe/Moscow"},
        headers={**a, "X-Request-Id": "req-put-1"},
    )
    assert put.status_code == 200
    mailing = (await http.post(MAILINGS, json=MAILING, headers=a)).json()
    mid = str(mailing["id"])
    edited = await http.put(f"{MAILINGS}{mid}/", json={**MAILING, "text": "Summer"}, headers=a)
    assert edited.status_code == 200
    assert (await http.post(f"{MAILINGS}{mid}/pause/", headers=a)).status_code == 200
    assert (await http.post(f"{MAILINGS}{mid}/resume/", headers=b)).status_code == 200
    replayed = await http.post(f"{MAILINGS}{mid}/replay/", json={"reason": "HTTP 503"}, headers=b)
    assert replayed.status_code == 200
    assert (await http.post(f"{MAILINGS}{mid}/cancel/", headers=b)).status_code == 200
    assert (await http.delete(f"{MAILINGS}{mid}/", headers=b)).status_code == 204
    assert (await http.delete(f"{CLIENTS}{cid}/", headers=b)).status_code == 204
    made = await create_key(http, "viewer", as_=b)
    assert (await http.delete(f"/api/v1/api-keys/{made['id']}/", headers=b)).status_code == 204

    by_ops = await _trail(api, actor=f"key:{ops_name}")
    assert [_short(entry) for entry in by_ops] == [
        (f"key:{ops_name}", "mailing.pause", "mailing", mid, {"state": "paused"}),
        (f"key:{ops_name}", "mailing.replace", "mailing", mid, {"changed": ["text"]}),
        (
            f"key:{ops_name}",
            "mailing.create",
            "mailing",
            mid,
            {"fields": ["date_time_start", "date_time_stop", "text"]},
        ),
        (f"key:{ops_name}", "client.replace", "client", cid, {"changed": ["tag"]}),
        (f"key:{ops_name}", "client.patch", "client", cid, {"changed": ["timezone"]}),
        (f"key:{ops_name}", "client.create", "client", cid, {"fields": ["tag", "telephone"]}),
    ]
    by_boss = await _trail(api, actor=f"key:{admin_name}")
    assert [_short(entry) for entry in by_boss] == [
        (f"key:{admin_name}", "api_key.revoke", "api_key", str(made["id"]), {"name": made["name"]}),
        (
            f"key:{admin_name}",
            "api_key.create",
            "api_key",
            str(made["id"]),
            {"name": made["name"], "role": "viewer"},
        ),
        (f"key:{admin_name}", "client.delete", "client", cid, {}),
        (f"key:{admin_name}", "mailing.delete", "mailing", mid, {}),
        (f"key:{admin_name}", "mailing.cancel", "mailing", mid, {"state": "cancelled"}),
        (
            f"key:{admin_name}",
            "mailing.replay",
            "mailing",
            mid,
            {"replayed": 0, "reason": "HTTP 503"},
        ),
        (f"key:{admin_name}", "mailing.resume", "mailing", mid, {"state": "scheduled"}),
    ]
    for entry in by_ops + by_boss:
        assert set(entry) == FIELDS
        assert entry["via"] == "api_key"
        assert entry["remote_addr"] == "127.0.0.1"
        assert entry["request_id"]
    (put_entry,) = [e for e in by_ops if e["action"] == "client.replace"]
    assert put_entry["request_id"] == "req-put-1"
    # Newest first, by time too.
    times = [entry["at"] for entry in by_ops]
    assert times == sorted(times, reverse=True)
    # The keys' own creation, by the development token.
    (creation,) = await _trail(api, action="api_key.create", object_id=str(ops["id"]))
    assert creation["via"] == "token"
    assert creation["details"] == {"name": ops_name, "role": "operator"}


async def test_filters_combine_and_pages_go_newest_first(api: ApiClient) -> None:
    key = await create_key(api.http, "operator")
    who = bearer(key["key"])
    actor = f"key:{key['name']}"
    ids = []
    for _ in range(5):
        created = await api.http.post(CLIENTS, json={"telephone": phone()}, headers=who)
        ids.append(str(created.json()["id"]))
    await api.http.patch(f"{CLIENTS}{ids[0]}/", json={"tag": ["x"]}, headers=who)

    first = await api.http.get(AUDIT, params={"actor": actor, "limit": 2})
    body = first.json()
    assert body["count"] == 6
    assert [e["object_id"] for e in body["results"]] == [ids[0], ids[4]]
    assert body["previous"] is None
    second = (await api.http.get(body["next"])).json()
    assert [e["object_id"] for e in second["results"]] == [ids[3], ids[2]]
    last = (await api.http.get(second["next"])).json()
    assert [e["object_id"] for e in last["results"]] == [ids[1], ids[0]]
    assert last["next"] is None

    one = await _trail(api, actor=actor, object_type="client", object_id=ids[0])
    assert [e["action"] for e in one] == ["client.patch", "client.create"]
    created_only = await _trail(api, actor=actor, action="client.create")
    assert len(created_only) == 5
    assert await _trail(api, actor=actor, object_type="mailing") == []
    too_long = await api.http.get(AUDIT, params={"actor": "x" * 201})
    assert too_long.status_code == 422


async def test_operators_and_admins_read_the_trail_viewers_do_not(api: ApiClient) -> None:
    viewer = bearer((await create_key(api.http, "viewer"))["key"])
    operator = bearer((await create_key(api.http, "operator"))["key"])
    refused = await api.http.get(AUDIT, headers=viewer)
    assert refused.status_code == 403
    assert refused.json() == {"detail": "this needs the operator role; the caller has viewer"}
    assert (await api.http.get(AUDIT, params={"limit": 1}, headers=operator)).status_code == 200
    assert (await api.http.get(AUDIT, headers={"Authorization": ""})).status_code == 401


async def test_a_refused_write_leaves_no_entry_and_an_import_records_counts(
    api: ApiClient,
) -> None:
    key = await create_key(api.http, "operator")
    who = bearer(key["key"])
    actor = f"key:{key['name']}"
    taken = phone()
    assert (await api.http.post(CLIENTS, json={"telephone": taken}, headers=who)).status_code == 201
    clash = await api.http.post(CLIENTS, json={"telephone": taken}, headers=who)
    assert clash.status_code == 409
    assert [e["action"] for e in await _trail(api, actor=actor)] == ["client.create"]

    csv = f"telephone,tag,timezone\n{phone()},a,\n{taken},,\nnot-a-phone,,\n"
    imported = await api.http.post(
        f"{CLIENTS}import/", content=csv, headers={**who, "Content-Type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    latest = (await _trail(api, actor=actor))[0]
    assert _short(latest) == (
        actor,
        "client.import",
        None,
        None,
        {"mode": "create", "created": 1, "updated": 0, "unchanged": 0, "rejected": 2},
    )


async def test_the_request_log_line_names_the_actor(api: ApiClient) -> None:
    key = await create_key(api.http, "viewer")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        response = await api.http.get(CLIENTS, params={"limit": 1}, headers=bearer(key["key"]))
    assert response.status_code == 200
    (line,) = [entry for entry in logs if entry["event"] == "http_request"]
    assert line["actor"] == f"key:{key['name']}"
    assert line["status"] == 200
