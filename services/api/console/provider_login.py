"""Console sign-in through the identity provider: authorization code with PKCE (S256).

`GET /console/login` sends the browser to the provider's authorization endpoint with a
fresh `state`, `nonce` and PKCE challenge; the three are kept for ten minutes in a
signed, HttpOnly cookie (SameSite=Lax: the provider's redirect back is a top-level
navigation from its site). `GET /console/callback` checks `state`, exchanges the code
(with the verifier) at the token endpoint, verifies the access token (audience
`OIDC_AUDIENCE`, roles) and the ID token (audience: the console's client, `nonce`), and
opens a server-side session holding the tokens. A session whose access token is about
to expire is refreshed with its refresh token on the next request (`refresh`); when that
fails the session ends. Sign-out ends the session here and at the provider
(RP-initiated logout with `id_token_hint`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request, Response, status

from services.api.console.pages import is_secure, open_session, sign_in_page
from shared.auth import sign_value, unsign_value
from shared.auth.provider import NoRole, principal_of
from shared.logging import get_logger
from shared.oidc import InvalidToken, ProviderUnavailable

if TYPE_CHECKING:
    from shared.auth import Principal, Session
    from shared.oidc import OidcVerifier
    from shared.settings import Settings

log = get_logger(__name__)

router = APIRouter(prefix="/console", include_in_schema=False)

FLOW_COOKIE = "console_oidc_flow"
FLOW_TTL_S = 600
# An access token this close to its expiry is refreshed before it is used.
REFRESH_MARGIN_S = 30


class SignInFailed(Exception):
    """Why a sign-in through the provider did not end in a session (said on the page)."""

    def __init__(self, message: str, code: int = status.HTTP_400_BAD_REQUEST) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _callback_url(request: Request) -> str:
    return str(request.url_for("console_callback"))


def _client_auth(settings: Settings) -> tuple[dict[str, str], httpx.BasicAuth | None]:
    """The console's client at the token endpoint: public (client_id in the form), or
    confidential with HTTP Basic when a secret is set."""
    secret = settings.oidc_console_client_secret
    if secret is None:
        return {"client_id": settings.oidc_console_client_id}, None
    return {}, httpx.BasicAuth(settings.oidc_console_client_id, secret.get_secret_value())


async def _token_request(
    settings: Settings, verifier: OidcVerifier, form: dict[str, str]
) -> dict[str, Any]:
    """POST to the provider's token endpoint; its JSON answer, or SignInFailed."""
    endpoint = (await verifier.discovery()).get("token_endpoint")
    if not isinstance(endpoint, str):
        raise SignInFailed("the provider's discovery document has no token endpoint", 502)
    fields, auth = _client_auth(settings)
    try:
        async with httpx.AsyncClient(timeout=settings.oidc_http_timeout_s, auth=auth) as client:
            response = await client.post(
                endpoint, data={**form, **fields}, headers={"Accept": "application/json"}
            )
    except httpx.HTTPError as exc:
        raise SignInFailed(f"the provider's token endpoint did not answer ({exc!r})", 502) from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body, dict):
        said = body.get("error_description") or body.get("error") or response.status_code
        raise SignInFailed(f"the provider refused the sign-in: {said}", 401)
    return body


async def _principal(
    verifier: OidcVerifier, tokens: dict[str, Any], *, nonce: str | None, client_id: str = ""
) -> tuple[Principal, float]:
    """Who the provider's tokens speak for, and when the access token expires."""
    access = tokens.get("access_token")
    if not isinstance(access, str):
        raise SignInFailed("the provider's answer has no access token", 502)
    try:
        claims = await verifier.verify(access)
        id_token = tokens.get("id_token")
        if nonce is not None:
            if not isinstance(id_token, str):
                raise SignInFailed("the provider's answer has no ID token", 502)
            await verifier.verify(id_token, audience=client_id, nonce=nonce)
    except ProviderUnavailable as exc:
        raise SignInFailed(f"the identity provider cannot be reached: {exc.reason}", 503) from None
    except InvalidToken as exc:
        raise SignInFailed(f"the provider's token is not accepted: {exc.reason}", 401) from None
    try:
        principal = principal_of(claims)
    except NoRole as exc:
        raise SignInFailed(
            f"{exc.detail}: ask an administrator for one of them.", status.HTTP_403_FORBIDDEN
        ) from None
    return principal, claims.expires_at


def _expiry(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _failed(request: Request, failure: SignInFailed) -> Response:
    log.warning("console_sign_in_failed", reason=failure.message)
    return sign_in_page(request, failure.code, f"Not signed in: {failure.message}")


@router.get("/login")
async def login(request: Request) -> Response:
    settings: Settings = request.app.state.runtime.settings
    verifier: OidcVerifier | None = getattr(request.app.state, "oidc", None)
    if verifier is None:
        return _failed(request, SignInFailed("no identity provider is configured", 404))
    try:
        endpoint = (await verifier.discovery()).get("authorization_endpoint")
    except ProviderUnavailable as exc:
        return _failed(request, SignInFailed(f"the identity provider: {exc.reason}", 503))
    if not isinstance(endpoint, str):
        return _failed(request, SignInFailed("the provider has no authorization endpoint", 502))
    flow = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "verifier": secrets.token_urlsafe(48),
        "at": int(time.time()),
    }
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.oidc_console_client_id,
            "redirect_uri": _callback_url(request),
            "scope": settings.oidc_console_scopes,
            "state": flow["state"],
            "nonce": flow["nonce"],
            "code_challenge": _challenge(str(flow["verifier"])),
            "code_challenge_method": "S256",
        }
    )
    response = Response(
        status_code=status.HTTP_303_SEE_OTHER, headers={"Location": f"{endpoint}?{query}"}
    )
    encoded = base64.urlsafe_b64encode(json.dumps(flow).encode()).decode()
    response.set_cookie(
        FLOW_COOKIE,
        sign_value(settings, encoded),
        max_age=FLOW_TTL_S,
        httponly=True,
        samesite="lax",
        secure=is_secure(request),
        path="/console/",
    )
    return response


def _flow(request: Request, settings: Settings) -> dict[str, Any] | None:
    encoded = unsign_value(settings, request.cookies.get(FLOW_COOKIE, ""))
    if encoded is None:
        return None
    try:
        flow = json.loads(base64.urlsafe_b64decode(encoded.encode()))
    except ValueError:
        return None
    if not isinstance(flow, dict) or time.time() - int(flow.get("at", 0)) > FLOW_TTL_S:
        return None
    return flow


@router.get("/callback", name="console_callback")
async def callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    settings: Settings = request.app.state.runtime.settings
    verifier: OidcVerifier | None = getattr(request.app.state, "oidc", None)
    flow = _flow(request, settings)
    try:
        if verifier is None:
            raise SignInFailed("no identity provider is configured", 404)
        if error:
            raise SignInFailed(f"the provider said {error_description or error}")
        if flow is None or not state or not secrets.compare_digest(state, str(flow["state"])):
            raise SignInFailed("the sign-in expired or came from elsewhere; try again")
        if not code:
            raise SignInFailed("the provider sent no authorization code")
        tokens = await _token_request(
            settings,
            verifier,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": _callback_url(request),
                "code_verifier": str(flow["verifier"]),
            },
        )
        principal, expires_at = await _principal(
            verifier, tokens, nonce=str(flow["nonce"]), client_id=settings.oidc_console_client_id
        )
    except SignInFailed as failure:
        response = _failed(request, failure)
        response.delete_cookie(FLOW_COOKIE, path="/console/")
        return response
    log.info("console_signed_in", actor=principal.actor, role=principal.role.value)
    response = await open_session(
        request,
        principal,
        tokens["access_token"],
        from_elsewhere=True,
        credential_expires_at=_expiry(expires_at),
        refresh_token=tokens.get("refresh_token"),
        id_token=tokens.get("id_token"),
    )
    response.delete_cookie(FLOW_COOKIE, path="/console/")
    return response


class TokenRefresh:
    """Renews a provider session's access token with its refresh token (and its role
    with it); None when the provider no longer accepts it: the session then ends."""

    def __init__(self, settings: Settings, verifier: OidcVerifier) -> None:
        self.settings = settings
        self.verifier = verifier

    def due(self, session: Session, now: datetime) -> bool:
        expires = session.credential_expires_at
        return (
            session.principal.via == "oidc"
            and expires is not None
            and (expires - now).total_seconds() <= REFRESH_MARGIN_S
        )

    async def __call__(self, session: Session) -> Session | None:
        if not session.refresh_token:
            return None
        try:
            tokens = await _token_request(
                self.settings,
                self.verifier,
                {"grant_type": "refresh_token", "refresh_token": session.refresh_token},
            )
            principal, expires_at = await _principal(self.verifier, tokens, nonce=None)
        except (SignInFailed, ProviderUnavailable) as exc:
            log.info(
                "console_session_not_refreshed", actor=session.principal.actor, reason=str(exc)
            )
            return None
        return replace(
            session,
            principal=principal,
            credential=tokens["access_token"],
            credential_expires_at=_expiry(expires_at),
            refresh_token=tokens.get("refresh_token") or session.refresh_token,
            id_token=tokens.get("id_token") or session.id_token,
        )


async def end_session_url(request: Request, session: Session) -> str | None:
    """Where to send the browser to sign out at the provider too (None: nowhere)."""
    verifier: OidcVerifier | None = getattr(request.app.state, "oidc", None)
    if verifier is None or session.principal.via != "oidc":
        return None
    try:
        endpoint = (await verifier.discovery()).get("end_session_endpoint")
    except ProviderUnavailable:
        return None
    if not isinstance(endpoint, str):
        return None
    settings: Settings = request.app.state.runtime.settings
    query: dict[str, str] = {
        "client_id": settings.oidc_console_client_id,
        "post_logout_redirect_uri": str(request.url_for("sign_in_form")),
    }
    if session.id_token:
        query["id_token_hint"] = session.id_token
    return f"{endpoint}?{urlencode(query)}"
