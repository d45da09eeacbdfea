"""Tokens issued by the real provider (Keycloak, the `keycloak` fixture) through
OidcVerifier: what the API, the console and the reporter accept and refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from playwright.async_api import expect

from shared.oidc import InvalidToken, OidcVerifier
from shared.settings import load_settings
from tests.support.keycloak import ROLES, Keycloak, sign_in_on_keycloak

if TYPE_CHECKING:
    from playwright.async_api import Page, Route


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


def verifier_for(issuer: str, **overrides: object) -> OidcVerifier:
    return OidcVerifier(load_settings(_env_file=None, oidc_issuer=issuer, **overrides))


@pytest.fixture
async def verifier(keycloak: Keycloak) -> AsyncIterator[OidcVerifier]:
    verifier = verifier_for(keycloak.issuer)
    yield verifier
    await verifier.aclose()


async def rejected(verifier: OidcVerifier, token: str, now: float | None = None) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token, now=now)
    return caught.value.reason


@pytest.mark.parametrize("role", ROLES)
async def test_machine_tokens_carry_their_role(
    keycloak: Keycloak, verifier: OidcVerifier, role: str
) -> None:
    token = keycloak.client_token(role)
    claims = await verifier.verify(token)
    assert claims.roles == {role}
    assert claims.name == f"service-account-notifications-ci-{role}"
    raw = unverified_claims(token)
    assert claims.subject == raw["sub"]
    assert claims.expires_at == raw["exp"]
    assert "notifications-api" in raw["aud"]  # type: ignore[operator]


@pytest.mark.parametrize("role", ROLES)
async def test_the_preset_users_sign_in_with_their_role(
    keycloak: Keycloak, verifier: OidcVerifier, role: str
) -> None:
    claims = await verifier.verify(keycloak.password_token(role))
    assert claims.name == role
    assert claims.roles == {role}


async def test_the_console_client_and_the_endpoints_it_needs(
    keycloak: Keycloak, verifier: OidcVerifier
) -> None:
    document = await verifier.discovery()
    for endpoint in ("authorization_endpoint", "token_endpoint", "end_session_endpoint"):
        assert document[endpoint].startswith(keycloak.issuer + "/protocol/openid-connect/")
    assert "S256" in document["code_challenge_methods_supported"]
    assert await verifier.algorithms() >= {"RS256"}
    assert not {"none", "HS256", "HS384", "HS512"} & await verifier.algorithms()
    # authorization code with PKCE: any loopback port under /console/, nothing else
    async with httpx.AsyncClient() as http:

        async def authorize(redirect_uri: str, **extra: str) -> httpx.Response:
            params = {
                "client_id": "notifications-console",
                "response_type": "code",
                "scope": "openid",
                "redirect_uri": redirect_uri,
                **extra,
            }
            return await http.get(document["authorization_endpoint"], params=params)

        async def status(redirect_uri: str, **extra: str) -> int:
            return (await authorize(redirect_uri, **extra)).status_code

        pkce = {"code_challenge": b64(hashlib.sha256(b"v" * 43).digest())}
        s256 = {**pkce, "code_challenge_method": "S256"}
        assert await status("http://127.0.0.1:43117/console/auth/callback", **s256) == 200
        assert await status("http://localhost:8000/console/auth/callback", **s256) == 200
        assert await status("http://evil.example:8000/console/auth/callback", **s256) == 400
        assert await status("http://127.0.0.1:8000/other/callback", **s256) == 400
        # without PKCE, or with the plain method, no login page: the error goes back
        plain = {**pkce, "code_challenge_method": "plain"}
        for extra in ({}, plain):
            refused = await authorize("http://127.0.0.1:8000/console/auth/callback", **extra)
            assert refused.status_code == 302
            location = refused.headers["location"]
            assert location.startswith("http://127.0.0.1:8000/console/auth/callback?")
            assert "error=invalid_request" in location


@pytest.mark.parametrize("role", ROLES)
async def test_the_console_signs_a_user_in_with_pkce_and_out_again(
    keycloak: Keycloak, verifier: OidcVerifier, role: str
) -> None:
    callback = "http://127.0.0.1:8000/console/auth/callback"
    tokens = keycloak.code_flow_tokens(role, callback)
    claims = await verifier.verify(tokens["access_token"])
    assert claims.name == role
    assert claims.roles == {role}
    # the ID token is for the console, not for the API: refused as an access token
    assert "notifications-api" in await rejected(verifier, tokens["id_token"])
    # the refresh token renews the session; the new access token verifies too
    async with httpx.AsyncClient() as http:
        refreshed = await http.post(
            keycloak.token_endpoint(),
            data={
                "grant_type": "refresh_token",
                "client_id": "notifications-console",
                "refresh_token": tokens["refresh_token"],
            },
        )
        assert refreshed.status_code == 200
        assert (await verifier.verify(refreshed.json()["access_token"])).roles == {role}
        # sign-out at the provider goes back to the console
        logout = await http.get(
            (await verifier.discovery())["end_session_endpoint"],
            params={
                "id_token_hint": tokens["id_token"],
                "post_logout_redirect_uri": "http://127.0.0.1:8000/console/",
            },
        )
        assert logout.status_code == 302
        assert logout.headers["location"] == "http://127.0.0.1:8000/console/"
        # the session is over: its refresh token no longer works
        again = await http.post(
            keycloak.token_endpoint(),
            data={
                "grant_type": "refresh_token",
                "client_id": "notifications-console",
                "refresh_token": refreshed.json()["refresh_token"],
            },
        )
        assert again.status_code == 400


async def test_a_user_signs_in_on_keycloaks_page_in_a_real_browser(
    keycloak: Keycloak, verifier: OidcVerifier, offline_page: Page
) -> None:
    # the console is not needed to see where the provider sends the browser back to
    callback = "http://127.0.0.1:8000/console/auth/callback"

    async def console(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/plain", body="back at the console")

    await offline_page.route(f"{callback}?*", console)
    code_verifier = secrets.token_urlsafe(48)
    challenge = b64(hashlib.sha256(code_verifier.encode()).digest())
    document = await verifier.discovery()
    query = urllib.parse.urlencode(
        {
            "client_id": "notifications-console",
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": callback,
            "state": "st",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    await offline_page.goto(f"{document['authorization_endpoint']}?{query}")
    assert await offline_page.title() == "Sign in to Notifications"
    await sign_in_on_keycloak(offline_page, "admin", "wrong")
    # the page reloads with the error (expect waits for it)
    await expect(offline_page.get_by_text("Invalid username or password.")).to_be_visible()
    await sign_in_on_keycloak(offline_page, "admin")
    await offline_page.wait_for_url(f"{callback}?*")
    returned = urllib.parse.parse_qs(urllib.parse.urlsplit(offline_page.url).query)
    assert returned["state"] == ["st"]
    async with httpx.AsyncClient() as http:
        tokens = await http.post(
            document["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "client_id": "notifications-console",
                "code": returned["code"][0],
                "redirect_uri": callback,
                "code_verifier": code_verifier,
            },
        )
    assert tokens.status_code == 200, tokens.text
    claims = await verifier.verify(tokens.json()["access_token"])
    assert (claims.name, sorted(claims.roles)) == ("admin", ["admin"])


async def test_an_expired_token_is_refused_past_the_skew(
    keycloak: Keycloak, verifier: OidcVerifier
) -> None:
    token = keycloak.client_token("viewer")
    expires = float(unverified_claims(token)["exp"])  # type: ignore[arg-type]
    assert (await verifier.verify(token, now=expires + 29)).roles == {"viewer"}
    reason = await rejected(verifier, token, now=expires + 31)
    assert "expired" in reason
    assert "30 s of clock skew" in reason


async def test_a_token_for_another_audience_is_refused(
    keycloak: Keycloak, verifier: OidcVerifier
) -> None:
    client_id, secret = keycloak.machine_client("admin", audience=False)
    token = keycloak.client_token("admin", client_id=client_id, secret=secret)
    assert "notifications-api" not in (unverified_claims(token).get("aud") or [])  # type: ignore[operator]
    reason = await rejected(verifier, token)
    assert "'aud'" in reason or "does not include 'notifications-api'" in reason
    # the same client with the audience mapper is accepted
    client_id, secret = keycloak.machine_client("admin")
    token = keycloak.client_token("admin", client_id=client_id, secret=secret)
    assert (await verifier.verify(token)).roles == {"admin"}


async def test_a_token_of_another_issuer_is_refused(keycloak: Keycloak) -> None:
    token = keycloak.client_token("admin")
    # the same server under another name: its discovery names another issuer
    other = keycloak.issuer.replace("127.0.0.1", "localhost")
    verifier = verifier_for(other)
    try:
        assert "names the issuer" in await rejected(verifier, token)
    finally:
        await verifier.aclose()
    # another realm of the same server: the key set differs, and so does `iss`
    realm = f"other-{uuid.uuid4().hex[:6]}"
    keycloak.create_realm(realm)
    verifier = verifier_for(keycloak.issuer_of(realm))
    try:
        assert "does not publish" in await rejected(verifier, token)
    finally:
        await verifier.aclose()


async def test_forged_tokens_are_refused(keycloak: Keycloak, verifier: OidcVerifier) -> None:
    token = keycloak.client_token("viewer")
    header, payload, signature = token.split(".")
    kid = json.loads(base64.urlsafe_b64decode(header + "=" * 4))["kid"]
    claims = unverified_claims(token)
    admin_claims = {**claims, "realm_access": {"roles": ["admin"]}}
    raised = b64(json.dumps(admin_claims).encode())

    none_header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    assert "'none' is not accepted" in await rejected(verifier, f"{none_header}.{raised}.")
    assert "signature does not verify" in await rejected(verifier, f"{header}.{raised}.{signature}")
    flipped = ("A" if signature[5] != "A" else "B").join((signature[:5], signature[6:]))
    assert "signature does not verify" in await rejected(verifier, f"{header}.{payload}.{flipped}")

    # HS256 "signed" with the provider's own public key, as published in its key set
    async with httpx.AsyncClient() as http:
        jwks = (await http.get((await verifier.discovery())["jwks_uri"])).json()
    (published,) = [k for k in jwks["keys"] if k["kid"] == kid]
    public_pem = RSAKey.import_key(published).as_pem(private=False)
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    mac = hmac.new(public_pem, f"{hs_header}.{raised}".encode(), hashlib.sha256).digest()
    assert "'HS256' is not accepted" in await rejected(verifier, f"{hs_header}.{raised}.{b64(mac)}")

    # a key of our own, under the provider's key id and under a made-up one
    ours = RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)
    forged = jwt.encode({"alg": "RS256", "kid": kid}, admin_claims, ours)
    assert "signature does not verify" in await rejected(verifier, forged)
    made_up = RSAKey.generate_key(2048, parameters={"kid": "made-up"}, private=True)
    forged = jwt.encode({"alg": "RS256", "kid": "made-up"}, admin_claims, made_up)
    assert "'made-up', which the provider does not publish" in await rejected(verifier, forged)


async def test_key_rotation_needs_no_restart_and_refetches_are_limited(
    keycloak: Keycloak,
) -> None:
    realm = f"rotation-{uuid.uuid4().hex[:6]}"
    keycloak.create_realm(realm)
    client_id, secret = keycloak.machine_client("operator", realm=realm)

    def token() -> str:
        form = {"grant_type": "client_credentials", "client_id": client_id}
        return keycloak.grant({**form, "client_secret": secret}, realm=realm)

    issuer = keycloak.issuer_of(realm)
    patient = verifier_for(issuer, oidc_jwks_min_refresh_s=0)
    strict = verifier_for(issuer, oidc_jwks_min_refresh_s=3600)
    try:
        before = token()
        for verifier in (patient, strict):
            assert (await verifier.verify(before)).roles == {"operator"}
            assert verifier.jwks_fetches == 1

        new_kid = keycloak.rotate_keys(realm)
        after = token()
        header = json.loads(base64.urlsafe_b64decode(after.split(".")[0] + "=" * 4))
        assert header["kid"] == new_kid

        # the unknown kid makes the verifier fetch the key set again: accepted
        assert (await patient.verify(after)).roles == {"operator"}
        assert patient.jwks_fetches == 2
        # the old key is gone from the provider: its tokens stop verifying once refetched
        assert "does not publish" in await rejected(patient, before)

        # refetching is rate-limited: within the interval an unknown kid is refused at
        # once, however many tokens name it, and the provider is asked nothing
        for _ in range(10):
            assert "does not publish" in await rejected(strict, after)
        assert strict.jwks_fetches == 1
    finally:
        await patient.aclose()
        await strict.aclose()
