"""API keys on the real PostgreSQL: each role's allowed and denied operations, the key
shown once and stored hashed, revocation seen by a second API process, last use, bad
input, the reporter's send-now with a key."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from services.api.main import create_app
from shared.api_keys import parse_key
from shared.db import create_engine
from tests.support.api_helpers import error_fields, phone
from tests.support.infra import make_settings
from tests.support.keys import bearer, create_key, served, unique
from tests.support.polling import eventually

if TYPE_CHECKING:
    from tests.support.api_helpers import ApiClient
    from tests.support.infra import Infra

KEYS = "/api/v1/api-keys/"
CLIENTS = "/api/v1/clients/"
MAILINGS = "/api/v1/notifications/"
MAILING = {
    "date_time_start": "2031-01-02 09:00:00",
    "text": "Spring sale",
    "date_time_stop": "2031-01-03 21:00:00",
}


async def _row(api: ApiClient, key_id: int) -> dict[str, Any]:
    engine = create_engine(api.settings, application_name="tests")
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT * FROM api_key WHERE id = :id"), {"id": key_id})
            ).one()
            whole = (
                await conn.execute(
                    text("SELECT api_key::text FROM api_key WHERE id = :id"), {"id": key_id}
                )
            ).scalar_one()
        return {**row._asdict(), "as_text": whole}
    finally:
        await engine.dispose()


async def test_each_role_may_do_what_it_allows_and_is_told_what_it_lacks(api: ApiClient) -> None:
    viewer = bearer((await create_key(api.http, "viewer"))["key"])
    operator = bearer((await create_key(api.http, "operator"))["key"])
    admin = bearer((await create_key(api.http, "admin"))["key"])
    http = api.http

    # viewer: reads; every write is a 403 naming the role it needs.
    assert (await http.get(CLIENTS, params={"limit": 1}, headers=viewer)).status_code == 200
    assert (await http.get(MAILINGS, params={"limit": 1}, headers=viewer)).status_code == 200
    refused = await http.post(CLIENTS, json={"telephone": phone()}, headers=viewer)
    assert refused.status_code == 403
    assert refused.json() == {"detail": "this needs the operator role; the caller has viewer"}
    assert (await http.post(MAILINGS, json=MAILING, headers=viewer)).status_code == 403
    assert (await http.get(KEYS, headers=viewer)).status_code == 403

    # operator: creates, edits, pauses; no delete, no keys.
    client = await http.post(CLIENTS, json={"telephone": phone()}, headers=operator)
    assert client.status_code == 201, client.text
    client_id = client.json()["id"]
    patched = await http.patch(f"{CLIENTS}{client_id}/", json={"tag": ["vip"]}, headers=operator)
    assert patched.status_code == 200
    mailing = await http.post(MAILINGS, json=MAILING, headers=operator)
    assert mailing.status_code == 201
    mailing_id = mailing.json()["id"]
    paused = await http.post(f"{MAILINGS}{mailing_id}/pause/", headers=operator)
    assert paused.status_code == 200
    assert paused.json()["state"] == "paused"
    denied = await http.delete(f"{CLIENTS}{client_id}/", headers=operator)
    assert denied.status_code == 403
    assert denied.json() == {"detail": "this needs the admin role; the caller has operator"}
    assert (await http.delete(f"{MAILINGS}{mailing_id}/", headers=operator)).status_code == 403
    no_keys = await http.post(KEYS, json={"name": unique("x"), "role": "viewer"}, headers=operator)
    assert no_keys.status_code == 403

    # admin: deletes, manages keys.
    assert (await http.delete(f"{CLIENTS}{client_id}/", headers=admin)).status_code == 204
    assert (await http.get(f"{CLIENTS}{client_id}/", headers=admin)).status_code == 404
    assert (await http.delete(f"{MAILINGS}{mailing_id}/", headers=admin)).status_code == 204
    made = await create_key(http, "viewer", as_=admin)
    assert (await http.delete(f"{KEYS}{made['id']}/", headers=admin)).status_code == 204


async def test_the_key_is_shown_once_and_stored_as_a_hash(api: ApiClient) -> None:
    name = unique("billing")
    created = await create_key(api.http, "operator", name=name)
    assert set(created) == {"id", "name", "role", "key", "created_at"}
    assert (created["name"], created["role"]) == (name, "operator")
    parsed = parse_key(created["key"])
    assert parsed is not None
    lookup, secret = parsed
    assert len(secret) >= 43  # 32 random bytes, base64url

    listing = await api.http.get(KEYS, params={"limit": 1000})
    assert listing.status_code == 200
    assert secret not in listing.text
    (listed,) = [item for item in listing.json()["results"] if item["id"] == created["id"]]
    assert listed == {
        "id": created["id"],
        "name": name,
        "role": "operator",
        "created_at": created["created_at"],
        "created_by": "token:" + hashlib.sha256(b"test-token").hexdigest()[:8],
        "last_used_at": None,
        "revoked_at": None,
        "revoked_by": None,
    }

    row = await _row(api, created["id"])
    assert row["lookup"] == lookup
    assert bytes(row["secret_sha256"]) == hashlib.sha256(secret.encode()).digest()
    assert secret not in row["as_text"]
    assert created["key"] not in row["as_text"]


async def test_a_key_revoked_on_one_api_process_is_refused_by_another(
    api: ApiClient, infra: Infra
) -> None:
    created = await create_key(api.http, "viewer")
    key = bearer(created["key"])
    settings = make_settings(infra, api_tokens="test-token")
    async with served(create_app(settings)) as second:
        assert (await second.get(CLIENTS, params={"limit": 1}, headers=key)).status_code == 200
        # Revoked through the first process...
        assert (await api.http.delete(f"{KEYS}{created['id']}/")).status_code == 204
        # ...the second refuses it within seconds (in fact from its next request).
        refused = await eventually(
            lambda: second.get(CLIENTS, params={"limit": 1}, headers=key),
            lambda r: r.status_code == 401,
            timeout=5,
            what="the revoked key refused by the second process",
        )
        assert refused.json() == {"detail": "API key revoked"}
        assert refused.headers["www-authenticate"] == "Bearer"
    assert (await api.http.get(CLIENTS, headers=key)).status_code == 401


async def test_revoking_twice_changes_nothing_and_an_unknown_id_is_404(api: ApiClient) -> None:
    name = unique("twice")
    created = await create_key(api.http, "viewer", name=name)
    assert (await api.http.delete(f"{KEYS}{created['id']}/")).status_code == 204
    first = await _row(api, created["id"])
    assert first["revoked_at"] is not None
    assert (await api.http.delete(f"{KEYS}{created['id']}/")).status_code == 204
    assert (await _row(api, created["id"]))["revoked_at"] == first["revoked_at"]
    missing = await api.http.delete(f"{KEYS}{2**62}/")
    assert missing.status_code == 404
    # A revoked key's name may be used again.
    again = await create_key(api.http, "admin", name=name)
    assert again["id"] != created["id"]


async def test_last_used_is_set_on_first_use_and_not_rewritten_within_the_minute(
    api: ApiClient,
) -> None:
    created = await create_key(api.http, "viewer")
    assert (await _row(api, created["id"]))["last_used_at"] is None
    key = bearer(created["key"])
    assert (await api.http.get(CLIENTS, params={"limit": 1}, headers=key)).status_code == 200
    first = (await _row(api, created["id"]))["last_used_at"]
    assert first is not None
    assert (await api.http.get(CLIENTS, params={"limit": 1}, headers=key)).status_code == 200
    assert (await _row(api, created["id"]))["last_used_at"] == first
    listing = (await api.http.get(KEYS, params={"limit": 1000})).json()["results"]
    (listed,) = [item for item in listing if item["id"] == created["id"]]
    assert listed["last_used_at"] is not None


async def test_bad_input_is_422_naming_the_field_and_a_taken_name_409(api: ApiClient) -> None:
    async def fields(body: object) -> tuple[int, set[str]]:
        response = await api.http.post(KEYS, json=body)
        return response.status_code, error_fields(response.json())

    assert await fields({"name": unique("r"), "role": "root"}) == (422, {"role"})
    assert await fields({"name": "", "role": "viewer"}) == (422, {"name"})
    assert await fields({"name": "x" * 65, "role": "viewer"}) == (422, {"name"})
    assert await fields({"name": "has space", "role": "viewer"}) == (422, {"name"})
    assert await fields({"role": "viewer"}) == (422, {"name"})
    assert await fields({"name": unique("r"), "role": "viewer", "key": "mine"}) == (422, {"key"})
    taken = (await create_key(api.http, "viewer"))["name"]
    assert await fields({"name": taken, "role": "admin"}) == (409, {"name"})
    assert (await api.http.delete(f"{KEYS}0/")).status_code == 422


async def test_a_wrong_key_is_401(api: ApiClient) -> None:
    created = await create_key(api.http, "admin")
    lookup, secret = parse_key(created["key"]) or ("", "")
    tampered = f"nk_{lookup}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
    for credential, reason in [
        (tampered, "invalid API key"),
        ("nk_0000000000000000_" + "A" * 43, "invalid API key"),
        ("nk_short", "malformed API key"),
    ]:
        response = await api.http.get(CLIENTS, headers=bearer(credential))
        assert response.status_code == 401
        assert response.json() == {"detail": reason}
