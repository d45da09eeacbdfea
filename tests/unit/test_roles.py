"""Roles and principals (shared/auth): each role includes the ones before it, and
routes refuse a caller below the role they need with a 403 naming it."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from shared.auth import ADMIN, OPERATOR, VIEWER, Principal, Role, highest_role, install_checks
from shared.auth.roles import Unauthorized
from shared.settings import Settings, SettingsError, refuse_unsafe_credentials


def test_each_role_includes_the_ones_before_it() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR)
    assert Role.ADMIN.allows(Role.VIEWER)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.OPERATOR.allows(Role.ADMIN)
    assert not Role.VIEWER.allows(Role.OPERATOR)


def test_the_highest_known_role_wins_and_unknown_names_are_ignored() -> None:
    assert highest_role(["offline_access", "viewer", "operator"]) is Role.OPERATOR
    assert highest_role(["admin", "viewer"]) is Role.ADMIN
    assert highest_role(["uma_authorization"]) is None
    assert highest_role([]) is None


class FixedKeys:
    """A bearer check that knows two credentials by their `k-` prefix."""

    known = {
        "k-viewer": Principal(actor="key:reader", role=Role.VIEWER, via="api_key"),
        "k-operator": Principal(actor="key:ops", role=Role.OPERATOR, via="api_key"),
    }

    def claims(self, credential: str) -> bool:
        return credential.startswith("k-")

    async def principal(self, credential: str) -> Principal:
        if credential not in self.known:
            raise Unauthorized("unknown key")
        return self.known[credential]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    router = APIRouter(dependencies=[VIEWER])

    @router.get("/read")
    async def read() -> dict[str, str]:
        return {"ok": "read"}

    @router.post("/write", dependencies=[OPERATOR])
    async def write() -> dict[str, str]:
        return {"ok": "write"}

    @router.delete("/delete", dependencies=[ADMIN])
    async def delete() -> dict[str, str]:
        return {"ok": "delete"}

    app.include_router(router)
    app.state.runtime = type("Runtime", (), {"settings": Settings(api_tokens="dev-secret")})()
    install_checks(app, [FixedKeys()])
    return TestClient(app)


def call(client: TestClient, method: str, path: str, credential: str) -> tuple[int, str]:
    response = client.request(method, path, headers={"Authorization": f"Bearer {credential}"})
    return response.status_code, response.json().get("detail", "")


def test_a_viewer_reads_and_is_refused_writes_naming_the_role(client: TestClient) -> None:
    assert call(client, "GET", "/read", "k-viewer")[0] == 200
    assert call(client, "POST", "/write", "k-viewer") == (
        403,
        "this needs the operator role; the caller has viewer",
    )
    assert call(client, "DELETE", "/delete", "k-viewer")[0] == 403


def test_an_operator_writes_but_does_not_delete(client: TestClient) -> None:
    assert call(client, "POST", "/write", "k-operator")[0] == 200
    assert call(client, "DELETE", "/delete", "k-operator") == (
        403,
        "this needs the admin role; the caller has operator",
    )


def test_refused_and_missing_credentials_are_401(client: TestClient) -> None:
    assert call(client, "GET", "/read", "k-unknown") == (401, "unknown key")
    # Outside development mode a static token is no credential at all.
    assert call(client, "GET", "/read", "dev-secret") == (401, "invalid token")
    response = client.get("/read")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_static_tokens_or_no_session_key_refuse_to_start_outside_development() -> None:
    with pytest.raises(SettingsError) as caught:
        refuse_unsafe_credentials(Settings(api_tokens="t"), signs_sessions=True)
    message = str(caught.value)
    assert "API_TOKENS" in message
    assert "CONSOLE_SESSION_SECRET" in message
    refuse_unsafe_credentials(Settings(api_tokens="t", dev_mode=True), signs_sessions=True)
    refuse_unsafe_credentials(Settings(console_session_secret="k"), signs_sessions=True)
    refuse_unsafe_credentials(Settings(), signs_sessions=False)
