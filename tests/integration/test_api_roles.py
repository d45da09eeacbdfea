"""Each role's allowed and denied operations on the real API and reporter, with access
tokens from the real provider (Keycloak): viewer reads; operator also creates, edits,
pauses; admin also deletes and sends reports. Outside development mode, no static
token works."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from asgi_lifespan import LifespanManager

from services.api.main import create_app as api_app
from services.reporter.main import create_app as reporter_app
from tests.support.api_helpers import phone
from tests.support.infra import make_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

    from shared.settings import Settings
    from tests.support.infra import Infra
    from tests.support.keycloak import Keycloak


def production_settings(infra: Infra, keycloak: Keycloak, **overrides: object) -> Settings:
    """Not development mode: the provider's tokens only (no static token)."""
    return make_settings(
        infra,
        dev_mode=False,
        oidc_issuer=keycloak.issuer,
        console_session_secret="test-session-key",
        **overrides,
    )


async def serving(app: FastAPI, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url=base_url) as c,
    ):
        yield c


@pytest.fixture
async def api(infra: Infra, keycloak: Keycloak) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serving(api_app(production_settings(infra, keycloak)), "http://api"):
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


MAILING = {
    "date_time_start": "2031-01-01 00:00:00",
    "date_time_stop": "2031-01-02 00:00:00",
    "text": "roles",
}


async def test_each_role_may_do_what_it_should_and_no_more(
    api: httpx.AsyncClient, keycloak: Keycloak
) -> None:
    viewer, operator, admin = (
        bearer(keycloak.client_token(role)) for role in ("viewer", "operator", "admin")
    )

    # viewer: reads, and is told which role a write needs.
    assert (await api.get("/api/v1/clients/", headers=viewer)).status_code == 200
    assert (
        await api.post("/api/v1/notifications/preview/", json=MAILING, headers=viewer)
    ).status_code == 200
    refused = await api.post("/api/v1/clients/", json={"telephone": phone()}, headers=viewer)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "this needs the operator role; the caller has viewer"

    # operator: creates, edits, pauses; may not delete.
    created = await api.post("/api/v1/clients/", json={"telephone": phone()}, headers=operator)
    assert created.status_code == 201, created.text
    client_id = created.json()["id"]
    patched = await api.patch(
        f"/api/v1/clients/{client_id}/", json={"timezone": "Europe/Berlin"}, headers=operator
    )
    assert patched.status_code == 200
    mailing = await api.post("/api/v1/notifications/", json=MAILING, headers=operator)
    assert mailing.status_code == 201
    mailing_id = mailing.json()["id"]
    paused = await api.post(f"/api/v1/notifications/{mailing_id}/pause/", headers=operator)
    assert paused.status_code == 200
    assert paused.json()["state"] == "paused"
    denied = await api.delete(f"/api/v1/clients/{client_id}/", headers=operator)
    assert denied.status_code == 403
    assert denied.json()["detail"] == "this needs the admin role; the caller has operator"

    # admin: deletes.
    assert (await api.delete(f"/api/v1/clients/{client_id}/", headers=admin)).status_code == 204
    assert (
        await api.delete(f"/api/v1/notifications/{mailing_id}/", headers=admin)
    ).status_code == 204


async def test_refused_credentials_are_401_with_the_reason(
    api: httpx.AsyncClient, keycloak: Keycloak
) -> None:
    token = keycloak.client_token("admin")
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    response = await api.get("/api/v1/clients/", headers=bearer(tampered))
    assert response.status_code == 401
    assert response.json()["detail"].startswith("invalid token: ")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    # Outside development mode a static token is nothing.
    assert (await api.get("/api/v1/clients/", headers=bearer("dev-token"))).status_code == 401


async def test_a_token_without_any_of_our_roles_is_403(
    api: httpx.AsyncClient, keycloak: Keycloak
) -> None:
    client_id, secret = keycloak.machine_client("offline_access")
    token = keycloak.client_token("", client_id=client_id, secret=secret)
    response = await api.get("/api/v1/clients/", headers=bearer(token))
    assert response.status_code == 403
    assert "has none of this service's roles (viewer, operator, admin)" in response.json()["detail"]


async def test_the_identity_provider_is_a_readiness_check(api: httpx.AsyncClient) -> None:
    ready = await api.get("/ready")
    assert ready.json()["checks"]["identity_provider"] == "ok"


async def test_only_an_admin_sends_the_report(infra: Infra, keycloak: Keycloak) -> None:
    settings = production_settings(infra, keycloak, report_recipients="ops@example.com")
    async for reporter in serving(reporter_app(settings), "http://reporter"):
        viewer = bearer(keycloak.client_token("viewer"))
        operator = bearer(keycloak.client_token("operator"))
        assert (await reporter.get("/reports/preview", headers=viewer)).status_code == 200
        refused = await reporter.post("/reports/send", headers=operator)
        assert refused.status_code == 403
        assert refused.json()["detail"] == "this needs the admin role; the caller has operator"
