"""Verifying access tokens issued by an OpenID Connect provider (docs/identity.md).

:class:`OidcVerifier` reads the provider's discovery document (lazily, on first use, with
a few quick retries: a service starts while its provider is down and answers `/ready`
with what :meth:`OidcVerifier.problem` says), caches its JWK set and fetches the set
again when a token names a key id (``kid``) it does not hold, at most once per
``OIDC_JWKS_MIN_REFRESH_S``: a rotated key works without a restart, and a flood of
tokens with made-up key ids cannot hammer the provider.

A token is accepted when it is a JWS signed with one of the announced algorithms that
are asymmetric (never ``none``, never an HMAC algorithm, whose "secret" could be the
provider's public key), by a key of the set, and its ``iss``, ``aud``, ``exp``, ``nbf``
and ``iat`` hold with ``OIDC_CLOCK_SKEW_S`` of skew. JOSE itself is joserfc's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

if TYPE_CHECKING:
    from joserfc.jwk import Key

    from shared.settings import Settings

#: Signature algorithms with a public verification key; the only ones ever accepted.
ASYMMETRIC_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "Ed25519",
    }
)
#: Our role names (what shared.auth checks), in increasing power.
ROLE_NAMES = ("viewer", "operator", "admin")
_DISCOVERY_ATTEMPTS = 3
_RETRY_PAUSE_S = (0.2, 0.5)
# After a failed fetch, later calls fail at once for this long instead of asking again.
_FAILURE_COOLDOWN_S = 1.0
_MAX_TOKEN_CHARS = 16_384


class InvalidToken(Exception):
    """The token is not accepted; ``reason`` says why, in words a caller can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderUnavailable(InvalidToken):
    """The token could not be checked: the provider's discovery document or key set
    could not be fetched (or is unusable). A subclass of InvalidToken, so a caller that
    only knows InvalidToken refuses the request; one that knows it can answer 503."""


@dataclass(frozen=True)
class Claims:
    """Who a verified token speaks for.

    ``subject`` is ``sub``; ``name`` a display name (``preferred_username``, else
    ``azp``, ``client_id``, ``sub``); ``roles`` our role names (viewer, operator, admin)
    found in the roles claim; ``expires_at`` is ``exp`` (seconds since the epoch).
    """

    subject: str
    name: str
    roles: frozenset[str]
    expires_at: float


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class OidcVerifier:
    """Verifies the provider's access tokens; one per process, shared by every request."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        if settings.oidc_issuer is None:
            raise ValueError("OIDC_ISSUER is not set: there is no provider to verify against")
        self.issuer = settings.oidc_issuer
        self.discovery_url = (
            settings.oidc_discovery_url
            or self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        self.audience = settings.oidc_audience
        self.skew_s = settings.oidc_clock_skew_s
        self.roles_path = tuple(settings.oidc_roles_claim.split("."))
        self.role_map = {
            settings.oidc_role_viewer: "viewer",
            settings.oidc_role_operator: "operator",
            settings.oidc_role_admin: "admin",
        }
        self.min_refresh_s = settings.oidc_jwks_min_refresh_s
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=settings.oidc_http_timeout_s)
        self._lock = asyncio.Lock()
        self._discovery: dict[str, Any] | None = None
        self._algorithms: frozenset[str] = frozenset()
        self._keys: dict[str, Key] = {}
        self._keys_fetched_at: float | None = None  # time.monotonic()
        self._last_failure: tuple[float, ProviderUnavailable] | None = None
        #: How many times the key set was fetched (for /metrics and the tests).
        self.jwks_fetches = 0

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # ---- the provider's documents
    async def discovery(self) -> dict[str, Any]:
        """The provider's discovery document (fetched once; raises ProviderUnavailable)."""
        if self._discovery is not None:
            return self._discovery
        async with self._lock:
            if self._discovery is None:
                document = await self._fetch_json(self.discovery_url, "discovery document")
                self._discovery, self._algorithms = self._check_discovery(document)
            return self._discovery

    def _check_discovery(self, document: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
        where = f"the discovery document at {self.discovery_url}"
        if document.get("issuer") != self.issuer:
            raise self._unavailable(
                f"{where} names the issuer {document.get('issuer')!r}, not OIDC_ISSUER "
                f"{self.issuer!r}"
            )
        if not isinstance(document.get("jwks_uri"), str):
            raise self._unavailable(f"{where} has no jwks_uri")
        announced = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = frozenset(a for a in announced if a in ASYMMETRIC_ALGORITHMS)
        if not algorithms:
            raise self._unavailable(
                f"{where} announces no asymmetric signature algorithm ({announced})"
            )
        return document, algorithms

    async def algorithms(self) -> frozenset[str]:
        """The algorithms a token may be signed with: announced and asymmetric."""
        await self.discovery()
        return self._algorithms

    async def problem(self) -> str | None:
        """None when the discovery document and the key set are at hand (fetching them
        now if need be), else what is wrong: for `/ready`."""
        try:
            await self.discovery()
            if self._keys_fetched_at is None:
                await self._refresh_keys(force=True)
        except ProviderUnavailable as exc:
            return exc.reason
        return None

    async def _fetch_json(self, url: str, what: str) -> dict[str, Any]:
        if self._last_failure is not None:
            at, error = self._last_failure
            if time.monotonic() - at < _FAILURE_COOLDOWN_S:
                raise error
        problem = ""
        for attempt in range(_DISCOVERY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(_RETRY_PAUSE_S[min(attempt, len(_RETRY_PAUSE_S)) - 1])
            try:
                response = await self._http.get(url, headers={"Accept": "application/json"})
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                continue
            if response.status_code != 200:
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break
                continue
            try:
                document = response.json()
            except ValueError:
                problem = "the answer is not JSON"
                break
            if not isinstance(document, dict):
                problem = "the answer is not a JSON object"
                break
            self._last_failure = None
            return document
        raise self._unavailable(f"the provider's {what} at {url} could not be read: {problem}")

    def _unavailable(self, reason: str) -> ProviderUnavailable:
        error = ProviderUnavailable(reason)
        self._last_failure = (time.monotonic(), error)
        return error

    async def _refresh_keys(self, *, force: bool = False) -> bool:
        """Fetch the key set unless it was fetched less than min_refresh_s ago (or
        ``force``); True when it was fetched now."""
        document = await self.discovery()
        async with self._lock:
            fetched = self._keys_fetched_at
            if (
                not force
                and fetched is not None
                and time.monotonic() - fetched < self.min_refresh_s
            ):
                return False
            jwks = await self._fetch_json(document["jwks_uri"], "key set (jwks_uri)")
            self._keys = self._signing_keys(jwks)
            self._keys_fetched_at = time.monotonic()
            self.jwks_fetches += 1
            return True

    def _signing_keys(self, jwks: dict[str, Any]) -> dict[str, Key]:
        entries = jwks.get("keys")
        if not isinstance(entries, list):
            raise self._unavailable("the provider's key set has no 'keys' list")
        usable = [
            entry
            for entry in entries
            if isinstance(entry, dict)
            and entry.get("use", "sig") == "sig"
            and entry.get("kty") in ("RSA", "EC", "OKP")
            and isinstance(entry.get("kid"), str)
        ]
        keys: dict[str, Key] = {}
        for entry in usable:
            try:
                key = KeySet.import_key_set({"keys": [entry]}).keys[0]
            except (JoseError, ValueError, TypeError):
                continue  # a key joserfc cannot read cannot have signed anything we accept
            keys[entry["kid"]] = key
        return keys

    async def _key(self, kid: str) -> Key:
        if self._keys_fetched_at is None:
            await self._refresh_keys(force=True)
        key = self._keys.get(kid)
        if key is None and await self._refresh_keys():
            key = self._keys.get(kid)
        if key is None:
            raise InvalidToken(
                f"the token is signed with key {kid!r}, which the provider does not publish"
            )
        return key

    # ---- tokens
    async def verify(
        self,
        token: str,
        now: float | None = None,
        *,
        audience: str | None = None,
        nonce: str | None = None,
    ) -> Claims:
        """The token's claims, when it is valid at ``now`` (default: the current time,
        seconds since the epoch); InvalidToken (reason inside) otherwise.

        ``audience`` replaces OIDC_AUDIENCE (an ID token is for the console's client);
        ``nonce``, when given, must be the token's ``nonce`` (the sign-in it answers)."""
        token = token.strip()
        if not token:
            raise InvalidToken("the token is empty")
        if len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken(f"the token is longer than {_MAX_TOKEN_CHARS} characters")
        if token.count(".") != 2:
            raise InvalidToken("not a signed JWT (expected three dot-separated parts)")
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError, UnicodeError):
            raise InvalidToken("not a signed JWT (its header cannot be read)") from None
        algorithm = header.get("alg")
        algorithms = await self.algorithms()
        if algorithm not in algorithms:
            raise InvalidToken(
                f"signature algorithm {algorithm!r} is not accepted "
                f"(accepted: {', '.join(sorted(algorithms))})"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token's header names no signing key (kid)")
        key = await self._key(kid)
        try:
            decoded = jwt.decode(token, key, algorithms=[algorithm])
        except BadSignatureError:
            raise InvalidToken("the signature does not verify") from None
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidToken(f"the token cannot be read: {exc}") from None
        claims = decoded.claims
        self._check_claims(claims, time.time() if now is None else now, audience or self.audience)
        if nonce is not None and claims.get("nonce") != nonce:
            raise InvalidToken("the token's nonce is not the one this sign-in sent")
        return Claims(
            subject=str(claims["sub"]),
            name=self._display_name(claims),
            roles=self._roles(claims),
            expires_at=float(claims["exp"]),
        )

    def _check_claims(self, claims: Mapping[str, Any], now: float, audience: str) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=int(now),
            leeway=int(self.skew_s),
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(dict(claims))
        except ExpiredTokenError:
            raise InvalidToken(
                f"the token expired at {_when(claims['exp'])} (now {_when(now)}, "
                f"{self.skew_s:g} s of clock skew allowed)"
            ) from None
        except MissingClaimError as exc:
            raise InvalidToken(f"the token has no {exc.claim!r} claim") from None
        except InvalidClaimError as exc:
            raise InvalidToken(self._claim_problem(exc.claim, claims, now, audience)) from None
        except JoseError as exc:
            raise InvalidToken(f"the token's claims are not valid: {exc}") from None

    def _claim_problem(
        self, claim: str, claims: Mapping[str, Any], now: float, audience: str
    ) -> str:
        value = claims.get(claim)
        if claim == "iss":
            return f"the token was issued by {value!r}, not by {self.issuer!r}"
        if claim == "aud":
            return f"the token's audience {value!r} does not include {audience!r}"
        if claim == "nbf" and isinstance(value, int | float):
            return f"the token is not valid before {_when(value)} (now {_when(now)})"
        if claim == "iat" and isinstance(value, int | float):
            return f"the token was issued in the future, at {_when(value)} (now {_when(now)})"
        return f"the token's {claim!r} claim is not valid: {value!r}"

    @staticmethod
    def _display_name(claims: Mapping[str, Any]) -> str:
        for name in ("preferred_username", "azp", "client_id", "sub"):
            value = claims.get(name)
            if isinstance(value, str) and value:
                return value
        return str(claims.get("sub"))

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        value: object = claims
        for part in self.roles_path:
            if not isinstance(value, Mapping):
                return frozenset()
            value = value.get(part)
        if isinstance(value, str):
            names: list[object] = list(value.replace(",", " ").split())
        elif isinstance(value, list):
            names = value
        else:
            return frozenset()
        return frozenset(
            self.role_map[name] for name in names if isinstance(name, str) and name in self.role_map
        )
