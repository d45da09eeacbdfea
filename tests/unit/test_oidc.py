"""OidcVerifier against an in-process provider: keys made here, discovery and JWK set
served through httpx's MockTransport. The same checks against Keycloak itself are in
tests/integration/test_oidc_tokens.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from shared.oidc import Claims, InvalidToken, OidcVerifier, ProviderUnavailable
from shared.settings import Settings, SettingsError, load_settings

ISSUER = "https://id.example.test/realms/notifications"


class FakeProvider:
    """Discovery and JWKS of an issuer whose keys the test holds."""

    def __init__(self) -> None:
        self.keys: list[RSAKey | ECKey] = [
            RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
        ]
        self.algorithms = ["RS256", "ES256", "HS256", "none"]
        self.discovery_status = 200
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.issuer = ISSUER

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            self.discovery_requests += 1
            if self.discovery_status != 200:
                return httpx.Response(self.discovery_status)
            return httpx.Response(
                200,
                json={
                    "issuer": self.issuer,
                    "jwks_uri": f"{ISSUER}/protocol/openid-connect/certs",
                    "authorization_endpoint": f"{ISSUER}/protocol/openid-connect/auth",
                    "token_endpoint": f"{ISSUER}/protocol/openid-connect/token",
                    "end_session_endpoint": f"{ISSUER}/protocol/openid-connect/logout",
                    "id_token_signing_alg_values_supported": self.algorithms,
                },
            )
        if request.url.path.endswith("/certs"):
            self.jwks_requests += 1
            public = [k.as_dict(private=False) for k in self.keys]
            enc = {**public[0], "kid": "enc-1", "use": "enc", "alg": "RSA-OAEP"}
            return httpx.Response(200, json={"keys": [*public, enc]})
        return httpx.Response(404)

    def token(self, key: Any = None, alg: str = "RS256", **claims: Any) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": ["notifications-api", "account"],
            "sub": "user-1",
            "preferred_username": "ops",
            "iat": now,
            "exp": now + 300,
            "realm_access": {"roles": ["operator", "offline_access"]},
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode({"alg": alg, "kid": key.kid}, body, key)


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"_env_file": None, "oidc_issuer": ISSUER}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


def verifier_for(provider: FakeProvider, **overrides: object) -> OidcVerifier:
    http = httpx.AsyncClient(transport=httpx.MockTransport(provider.handler))
    return OidcVerifier(settings(**overrides), http)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def rejected(verifier: OidcVerifier, token: str, now: float | None = None) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token, now=now)
    return caught.value.reason


async def test_a_valid_token_gives_subject_name_roles_and_expiry(provider: FakeProvider) -> None:
    verifier = verifier_for(provider)
    token = provider.token(exp=2_000_000_000, iat=1_999_999_000)
    claims = await verifier.verify(token, now=1_999_999_500)
    assert claims == Claims(
        subject="user-1", name="ops", roles=frozenset({"operator"}), expires_at=2_000_000_000.0
    )


async def test_machine_tokens_are_named_after_their_client(provider: FakeProvider) -> None:
    verifier = verifier_for(provider)
    token = provider.token(preferred_username=None, azp="notifications-ci-viewer")
    assert (await verifier.verify(token)).name == "notifications-ci-viewer"


async def test_roles_follow_the_configured_claim_and_names(provider: FakeProvider) -> None:
    verifier = verifier_for(provider, oidc_roles_claim="groups", oidc_role_admin="notif-admins")
    token = provider.token(groups=["notif-admins", "admin", "viewer"])
    assert (await verifier.verify(token)).roles == {"admin", "viewer"}
    # a space-separated string counts too; a missing claim means no role, not a bad token
    assert (await verifier.verify(provider.token(groups="viewer other"))).roles == {"viewer"}
    assert (await verifier.verify(provider.token())).roles == frozenset()


async def test_expiry_and_not_before_allow_the_clock_skew(provider: FakeProvider) -> None:
    verifier = verifier_for(provider, oidc_clock_skew_s=30)
    token = provider.token(iat=900, exp=2_000, nbf=1_000)
    assert (await verifier.verify(token, now=2_029)).subject == "user-1"
    assert "expired" in await rejected(verifier, token, now=2_031)
    assert (await verifier.verify(token, now=971)).subject == "user-1"
    assert "not valid before" in await rejected(verifier, token, now=969)


async def test_a_token_issued_in_the_future_is_refused(provider: FakeProvider) -> None:
    verifier = verifier_for(provider)
    reason = await rejected(verifier, provider.token(iat=5_000, exp=9_000), now=4_000)
    assert "issued in the future" in reason


async def test_issuer_audience_and_subject_are_required(provider: FakeProvider) -> None:
    verifier = verifier_for(provider)
    assert "issued by 'https://evil.test'" in await rejected(
        verifier, provider.token(iss="https://evil.test")
    )
    assert "does not include 'notifications-api'" in await rejected(
        verifier, provider.token(aud="account")
    )
    assert "'aud'" in await rejected(verifier, provider.token(aud=None))
    assert "'sub'" in await rejected(verifier, provider.token(sub=None))
    assert "'exp'" in await rejected(verifier, provider.token(exp=None))


async def test_alg_none_hmac_and_foreign_signatures_are_refused(provider: FakeProvider) -> None:
    verifier = verifier_for(provider)
    good = provider.token()
    header, payload, signature = good.split(".")
    none = b64(json.dumps({"alg": "none", "kid": "k1"}).encode())
    assert "'none' is not accepted" in await rejected(verifier, f"{none}.{payload}.")
    # HS256 keyed with the provider's public key (the classic confusion attack)
    public_pem = provider.keys[0].as_pem(private=False)
    hs_header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    mac = hmac.new(public_pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    assert "'HS256' is not accepted" in await rejected(
        verifier, f"{hs_header}.{payload}.{b64(mac)}"
    )
    # a key of our own under the provider's kid
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    assert "signature does not verify" in await rejected(verifier, provider.token(key=stranger))
    # tampered payload, tampered signature
    tampered = b64(json.dumps({"sub": "root", "aud": "notifications-api"}).encode())
    assert "signature does not verify" in await rejected(
        verifier, f"{header}.{tampered}.{signature}"
    )
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert "signature does not verify" in await rejected(verifier, f"{header}.{payload}.{flipped}")


async def test_algorithms_are_the_announced_asymmetric_ones(provider: FakeProvider) -> None:
    provider.algorithms = ["ES256", "HS256"]
    verifier = verifier_for(provider)
    assert await verifier.algorithms() == {"ES256"}
    assert "'RS256' is not accepted" in await rejected(verifier, provider.token())
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1"}, private=True)
    provider.keys.append(ec)
    assert (await verifier.verify(provider.token(key=ec, alg="ES256"))).subject == "user-1"


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "a.b.c", "!!!.###.$$$", "x" * 20_000],
)
async def test_malformed_tokens_are_refused(provider: FakeProvider, token: str) -> None:
    assert await rejected(verifier_for(provider), token)


async def test_an_unknown_kid_refetches_the_key_set_once_per_interval(
    provider: FakeProvider,
) -> None:
    verifier = verifier_for(provider, oidc_jwks_min_refresh_s=3600)
    assert (await verifier.verify(provider.token())).subject == "user-1"
    assert provider.jwks_requests == 1
    # a made-up kid right after the first fetch: refused without asking the provider
    forged = RSAKey.generate_key(2048, parameters={"kid": "made-up"}, private=True)
    for _ in range(20):
        assert "does not publish" in await rejected(verifier, provider.token(key=forged))
    assert provider.jwks_requests == 1


async def test_a_rotated_key_is_fetched_without_a_restart(provider: FakeProvider) -> None:
    verifier = verifier_for(provider, oidc_jwks_min_refresh_s=0)
    assert (await verifier.verify(provider.token())).subject == "user-1"
    new = RSAKey.generate_key(2048, parameters={"kid": "k2"}, private=True)
    provider.keys = [new]
    assert (await verifier.verify(provider.token(key=new))).subject == "user-1"
    assert provider.jwks_requests == 2
    assert verifier.jwks_fetches == 2


async def test_an_unreachable_provider_is_reported_and_retried_later(
    provider: FakeProvider,
) -> None:
    provider.discovery_status = 503
    verifier = verifier_for(provider)
    assert "HTTP 503" in (await verifier.problem() or "")
    with pytest.raises(ProviderUnavailable):
        await verifier.verify(provider.token())
    provider.discovery_status = 200
    verifier._last_failure = None  # the cool-down (1 s) is not what this test is about
    assert await verifier.problem() is None
    assert (await verifier.verify(provider.token())).subject == "user-1"
    assert (await verifier.discovery())["end_session_endpoint"].endswith("/logout")


async def test_a_verifier_is_made_while_the_provider_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    verifier = OidcVerifier(settings(), http)  # no request yet
    problem = await verifier.problem()
    assert problem is not None
    assert "could not be read: ConnectError: connection refused" in problem
    with pytest.raises(ProviderUnavailable):
        await verifier.verify(FakeProvider().token())


async def test_a_discovery_document_of_another_issuer_is_refused(provider: FakeProvider) -> None:
    provider.issuer = "https://other.example.test/realms/x"
    verifier = verifier_for(provider)
    problem = await verifier.problem()
    assert problem is not None
    assert "names the issuer 'https://other.example.test/realms/x'" in problem


def test_settings_validate_the_oidc_variables() -> None:
    assert not load_settings(_env_file=None).oidc_enabled
    assert load_settings(_env_file=None, oidc_issuer=ISSUER).oidc_enabled
    assert load_settings(_env_file=None, oidc_issuer="  ").oidc_issuer is None
    for bad in (
        {"oidc_issuer": "id.example.test"},
        {"oidc_discovery_url": "ftp://x/y"},
        {"oidc_roles_claim": "realm_access..roles"},
        {"oidc_role_admin": " "},
        {"oidc_clock_skew_s": -1},
        {"oidc_role_admin": "viewer"},
    ):
        with pytest.raises(SettingsError) as caught:
            load_settings(_env_file=None, **bad)
        assert next(iter(bad)).upper() in str(caught.value)


def test_a_verifier_needs_an_issuer() -> None:
    with pytest.raises(ValueError, match="OIDC_ISSUER"):
        OidcVerifier(Settings(_env_file=None))
