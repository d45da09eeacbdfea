"""Authentication of a service's HTTP actions (the admin API, the reporter's send-now).

Two ways in, checked by `require_token`:
- `Authorization: Bearer <token>`: tokens from `API_TOKENS`, compared in constant time;
- the operator console's session cookie (`console_session`): set by its sign-in with one
  of those tokens, signed with HMAC-SHA256 (`CONSOLE_SESSION_SECRET`), HttpOnly and
  SameSite=Strict. It carries a digest of the token (never the token), so removing the
  token from `API_TOKENS` ends its sessions, an expiry, and the session's CSRF token:
  an unsafe method (POST, PUT, PATCH, DELETE) authenticated by the cookie needs an
  `X-CSRF-Token` header equal to it (403 otherwise).
A missing or wrong token, or a bad or expired cookie, is a 401 with
`WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

if TYPE_CHECKING:
    from shared.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")

SESSION_COOKIE = "console_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Signs sessions when CONSOLE_SESSION_SECRET is unset: they end with the process.
_PROCESS_KEY = secrets.token_bytes(32)


class Unauthorized(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=detail,
            headers={"WWW-Authenticate": "Bearer"},
        )


class CsrfRejected(HTTPException):
    def __init__(self) -> None:
        super().__init__(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"missing or wrong {CSRF_HEADER} header (required with the session cookie)",
        )


def _matches(candidate: str, tokens: list[bytes]) -> bool:
    given = candidate.encode()
    # Compare with every token, never stopping early, so timing says nothing.
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token)
    return found


def token_is_valid(settings: Settings, candidate: str) -> bool:
    return _matches(candidate, [token.encode() for token in settings.token_values()])


# --- console sessions -----------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    token_digest: str
    csrf: str
    expires: int


def _key(settings: Settings) -> bytes:
    secret = settings.console_session_secret
    return secret.get_secret_value().encode() if secret is not None else _PROCESS_KEY


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _sign(key: bytes, payload: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, payload, hashlib.sha256).digest()).decode()


def sign_value(settings: Settings, value: str) -> str:
    """`value.signature`: for the sign-in form's CSRF cookie (before any session)."""
    return f"{value}.{_sign(_key(settings), value.encode())}"


def unsign_value(settings: Settings, signed: str) -> str | None:
    value, _, signature = signed.rpartition(".")
    if not value or not hmac.compare_digest(signature, _sign(_key(settings), value.encode())):
        return None
    return value


def new_session(settings: Settings, token: str, now: float | None = None) -> tuple[str, Session]:
    """A fresh session for `token` (already checked): the cookie's value and the session."""
    moment = time.time() if now is None else now
    session = Session(
        token_digest=_digest(token),
        csrf=secrets.token_urlsafe(24),
        expires=int(moment) + settings.console_session_ttl_s,
    )
    payload = json.dumps(
        {"t": session.token_digest, "c": session.csrf, "e": session.expires},
        separators=(",", ":"),
    ).encode()
    encoded = base64.urlsafe_b64encode(payload).decode()
    return sign_value(settings, encoded), session


def read_session(settings: Settings, cookie: str, now: float | None = None) -> Session | None:
    """The session a cookie holds, or None: bad signature, expired, or its token gone."""
    encoded = unsign_value(settings, cookie)
    if encoded is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(encoded.encode()))
        session = Session(token_digest=str(data["t"]), csrf=str(data["c"]), expires=int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires <= (time.time() if now is None else now):
        return None
    # Still one of API_TOKENS (every one compared, as for a bearer token).
    known = [_digest(token).encode() for token in settings.token_values()]
    if not _matches(session.token_digest, known):
        return None
    return session


def request_session(request: Request) -> Session | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    return read_session(request.app.state.runtime.settings, cookie)


def csrf_ok(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    settings = request.app.state.runtime.settings
    if credentials is not None:
        if credentials.scheme.lower() != "bearer":
            raise Unauthorized("missing bearer token")
        if not token_is_valid(settings, credentials.credentials):
            raise Unauthorized("invalid token")
        return
    if SESSION_COOKIE not in request.cookies:
        raise Unauthorized("missing bearer token")
    session = request_session(request)
    if session is None:
        raise Unauthorized("invalid or expired session: sign in again")
    if request.method not in SAFE_METHODS and not csrf_ok(
        session, request.headers.get(CSRF_HEADER)
    ):
        raise CsrfRejected()
