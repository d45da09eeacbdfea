"""The session's Keycloak (the `keycloak` fixture) and helpers that ask it for tokens or
change it through its admin REST API.

The fixture starts Keycloak (tools/infra/keycloak.py) the first time a test asks for it,
once per run; with KEYCLOAK_URL set it uses that server instead (it must have the
realm of deploy/keycloak/notifications-realm.json and the admin/admin administrator).
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import secrets
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tools.infra.keycloak import ADMIN_PASSWORD, ADMIN_USER, PRESET_USERS, REALM, KeycloakServer

if TYPE_CHECKING:
    from playwright.async_api import Page

ROLES = ("viewer", "operator", "admin")
AUDIENCE = "notifications-api"


def audience_mapper(audience: str = AUDIENCE) -> dict[str, Any]:
    return {
        "name": f"audience {audience}",
        "protocol": "openid-connect",
        "protocolMapper": "oidc-audience-mapper",
        "config": {
            "included.custom.audience": audience,
            "access.token.claim": "true",
            "id.token.claim": "false",
        },
    }


PASSWORDS = {name: secret for name, secret, _ in PRESET_USERS}


async def sign_in_on_keycloak(page: Page, user: str, password: str | None = None) -> None:
    """On Keycloak's own login page (the page is showing it): sign ``user`` in."""
    await page.locator("#username").fill(user)
    await page.locator("#password").fill(password or PASSWORDS[user])
    await page.locator("#kc-login").click()


@dataclass
class Keycloak:
    """A running Keycloak with the notifications realm."""

    url: str
    realm: str = REALM
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def issuer(self) -> str:
        return self.issuer_of(self.realm)

    def issuer_of(self, realm: str) -> str:
        return f"{self.url}/realms/{realm}"

    def token_endpoint(self, realm: str | None = None) -> str:
        return f"{self.issuer_of(realm or self.realm)}/protocol/openid-connect/token"

    # ---- tokens
    def client_token(
        self, role: str, *, client_id: str | None = None, secret: str | None = None
    ) -> str:
        """A client-credentials access token of the preset client for ``role``
        (``notifications-ci-<role>``, secret ``ci-<role>-secret``), or of another client."""
        return self.grant(
            {
                "grant_type": "client_credentials",
                "client_id": client_id or f"notifications-ci-{role}",
                "client_secret": secret or f"ci-{role}-secret",
            }
        )

    def password_token(self, user: str, password: str | None = None) -> str:
        """A preset user's access token by the password grant, through a client that
        exists for the tests only (the realm's own clients do not allow this grant)."""
        client_id = self.ensure_client(
            "notifications-test-password",
            publicClient=True,
            directAccessGrantsEnabled=True,
            standardFlowEnabled=False,
            protocolMappers=[audience_mapper()],
        )[1]
        return self.grant(
            {
                "grant_type": "password",
                "client_id": client_id,
                "username": user,
                "password": password or PASSWORDS[user],
                "scope": "openid",
            }
        )

    def code_flow_tokens(
        self, user: str, redirect_uri: str = "http://127.0.0.1:8000/console/auth/callback"
    ) -> dict[str, Any]:
        """What the console gets by signing ``user`` in: the authorization code flow with
        PKCE (S256) of the ``notifications-console`` client, the login form of Keycloak's
        own page filled in over HTTP (no browser). The token endpoint's answer."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        with httpx.Client(timeout=30, follow_redirects=False) as browser:
            page = browser.get(
                f"{self.issuer}/protocol/openid-connect/auth",
                params={
                    "client_id": "notifications-console",
                    "response_type": "code",
                    "scope": "openid",
                    "redirect_uri": redirect_uri,
                    "state": "s1",
                    "code_challenge": challenge.rstrip(b"=").decode(),
                    "code_challenge_method": "S256",
                },
            )
            assert page.status_code == 200, page.text
            action = re.search(r'<form[^>]*id="kc-form-login"[^>]*action="([^"]+)"', page.text)
            assert action is not None, "no login form on Keycloak's page"
            # Keycloak marks its cookies Secure; browsers send them to 127.0.0.1 over
            # plain HTTP (a secure context), httpx does not: send them by hand
            jar = "; ".join(f"{c.name}={c.value}" for c in page.cookies.jar)
            answer = browser.post(
                html.unescape(action.group(1)),
                data={"username": user, "password": PASSWORDS[user], "credentialId": ""},
                headers={"Cookie": jar},
            )
            assert answer.status_code == 302, answer.text
            location = answer.headers["location"]
            assert location.startswith(redirect_uri + "?"), location
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
            assert query["state"] == ["s1"]
            tokens = browser.post(
                f"{self.issuer}/protocol/openid-connect/token",
                data={
                    "grant_type": "authorization_code",
                    "client_id": "notifications-console",
                    "code": query["code"][0],
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
            )
            assert tokens.status_code == 200, tokens.text
            result: dict[str, Any] = tokens.json()
            return result

    def grant(self, form: dict[str, str], realm: str | None = None) -> str:
        response = self.http.post(self.token_endpoint(realm), data=form)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    # ---- the admin REST API
    def admin_headers(self) -> dict[str, str]:
        response = self.http.post(
            f"{self.url}/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": ADMIN_USER,
                "password": ADMIN_PASSWORD,
            },
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def admin(self, method: str, path: str, realm: str | None = None, **kwargs: Any) -> Any:
        base = f"{self.url}/admin/realms"
        target = f"{base}/{realm or self.realm}{path}" if realm != "" else f"{base}{path}"
        response = self.http.request(method, target, headers=self.admin_headers(), **kwargs)
        assert response.status_code < 300, f"{method} {target}: {response.text}"
        return response.json() if response.content else None

    def ensure_client(
        self, client_id: str, realm: str | None = None, **representation: Any
    ) -> tuple[str, str]:
        """Create the client unless it exists: (its internal id, its client id)."""
        found = self.admin("GET", "/clients", realm, params={"clientId": client_id})
        if not found:
            self.admin(
                "POST",
                "/clients",
                realm,
                json={"clientId": client_id, "enabled": True, **representation},
            )
            found = self.admin("GET", "/clients", realm, params={"clientId": client_id})
        return found[0]["id"], client_id

    def machine_client(
        self, role: str, *, audience: bool = True, realm: str | None = None
    ) -> tuple[str, str]:
        """A new confidential client with a service account holding ``role``:
        (client id, secret). Without ``audience`` it lacks the notifications-api mapper."""
        client_id = f"test-{role}-{uuid.uuid4().hex[:8]}"
        secret = uuid.uuid4().hex
        internal, _ = self.ensure_client(
            client_id,
            realm,
            publicClient=False,
            secret=secret,
            serviceAccountsEnabled=True,
            standardFlowEnabled=False,
            directAccessGrantsEnabled=False,
            protocolMappers=[audience_mapper()] if audience else [],
        )
        user = self.admin("GET", f"/clients/{internal}/service-account-user", realm)
        role_rep = self.admin("GET", f"/roles/{role}", realm)
        self.admin("POST", f"/users/{user['id']}/role-mappings/realm", realm, json=[role_rep])
        return client_id, secret

    def create_realm(self, name: str) -> None:
        """An empty realm with our three roles (for tests that change its keys)."""
        self.admin(
            "POST",
            "",
            "",
            json={
                "realm": name,
                "enabled": True,
                "roles": {"realm": [{"name": role} for role in ROLES]},
            },
        )

    def signing_kids(self, realm: str | None = None) -> list[str]:
        """The realm's active RS256 signing keys, highest priority first."""
        keys = self.admin("GET", "/keys", realm)["keys"]
        active = [
            k
            for k in keys
            if k.get("algorithm") == "RS256" and k.get("use") == "SIG" and k["status"] == "ACTIVE"
        ]
        return [k["kid"] for k in sorted(active, key=lambda k: -int(k.get("providerPriority", 0)))]

    def rotate_keys(self, realm: str | None = None) -> str:
        """Add a new rsa-generated key provider above the others, disable the old RS256
        providers; returns the new signing key's id."""
        realm_id = self.admin("GET", "", realm)["id"]
        kind = "org.keycloak.keys.KeyProvider"
        old = [
            c
            for c in self.admin("GET", "/components", realm, params={"type": kind})
            if c["providerId"] in ("rsa-generated", "rsa")
            and c.get("config", {}).get("algorithm", ["RS256"]) == ["RS256"]
        ]
        priority = 1 + max((int(c["config"].get("priority", ["0"])[0]) for c in old), default=100)
        self.admin(
            "POST",
            "/components",
            realm,
            json={
                "name": f"rsa-rotated-{uuid.uuid4().hex[:6]}",
                "providerId": "rsa-generated",
                "providerType": kind,
                "parentId": realm_id,
                "config": {
                    "priority": [str(priority)],
                    "keySize": ["2048"],
                    "algorithm": ["RS256"],
                    "active": ["true"],
                    "enabled": ["true"],
                },
            },
        )
        for component in old:
            component["config"]["enabled"] = ["false"]
            self.admin("PUT", f"/components/{component['id']}", realm, json=component)
        kids = self.signing_kids(realm)
        assert len(kids) == 1, kids
        return kids[0]


#: Seconds a test that uses the fixture may take: its setup may be Keycloak's first
#: start ever on the machine (download, build, seed: 2.5-4 minutes here).
FIRST_START_TIMEOUT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using `keycloak` get FIRST_START_TIMEOUT_S unless they set a timeout."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "keycloak" in fixtures and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(FIRST_START_TIMEOUT_S))


@pytest.fixture(scope="session")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keycloak]:
    """The session's Keycloak, started on first use (or KEYCLOAK_URL's)."""
    url = os.environ.get("KEYCLOAK_URL")
    if url:
        yield Keycloak(url.rstrip("/"))
        return
    server = KeycloakServer(tmp_path_factory.mktemp("keycloak"))
    try:
        server.start()
        os.environ["INFRA_KEYCLOAK_VERSION"] = server.description
        yield Keycloak(server.url)
    finally:
        server.stop()
