"""The operator console's session cookie (`console_session`).

Signed with HMAC-SHA256 (`CONSOLE_SESSION_SECRET`), HttpOnly and SameSite=Strict. It
carries who signed in (actor, role, how), an expiry, the session's CSRF token and, for
a sign-in with a development token, a digest of that token (never the token), so
removing the token from `API_TOKENS` ends its sessions. An unsafe method (POST, PUT,
PATCH, DELETE) authenticated by the cookie needs an `X-CSRF-Token` header equal to the
session's CSRF token (403 otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, status

from shared.auth.roles import Principal, Role

if TYPE_CHECKING:
    from fastapi import Request

    from shared.settings import Settings

SESSION_COOKIE = "console_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Signs sessions when CONSOLE_SESSION_SECRET is unset (development mode only): they end
# with the process.
_PROCESS_KEY = secrets.token_bytes(32)


class CsrfRejected(HTTPException):
    def __init__(self) -> None:
        super().__init__(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"missing or wrong {CSRF_HEADER} header (required with the session cookie)",
        )


def matches_any(candidate: str, values: list[bytes]) -> bool:
    given = candidate.encode()
    # Compare with every value, never stopping early, so timing says nothing.
    found = False
    for value in values:
        found |= hmac.compare_digest(given, value)
    return found


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def dev_token_is_valid(settings: Settings, candidate: str) -> bool:
    """One of `API_TOKENS`, and development mode on (they are refused otherwise)."""
    if not settings.dev_mode:
        return False
    return matches_any(candidate, [token.encode() for token in settings.token_values()])


def dev_token_principal(token: str) -> Principal:
    """A development token acts as `admin`; the audit names it by a digest prefix."""
    return Principal(actor=f"token:{token_digest(token)[:8]}", role=Role.ADMIN, via="token")


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str
    expires: int
    token_digest: str = ""  # a development token's sign-in: its digest


def _key(settings: Settings) -> bytes:
    secret = settings.console_session_secret
    return secret.get_secret_value().encode() if secret is not None else _PROCESS_KEY


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


def new_session(
    settings: Settings, principal: Principal, *, token: str = "", now: float | None = None
) -> tuple[str, Session]:
    """A fresh session for `principal` (already authenticated): the cookie and the session.
    `token`: the development token it signed in with, if any."""
    moment = time.time() if now is None else now
    session = Session(
        principal=principal,
        csrf=secrets.token_urlsafe(24),
        expires=int(moment) + settings.console_session_ttl_s,
        token_digest=token_digest(token) if token else "",
    )
    payload = json.dumps(
        {
            "a": principal.actor,
            "r": principal.role.value,
            "v": principal.via,
            "s": principal.subject,
            "t": session.token_digest,
            "c": session.csrf,
            "e": session.expires,
        },
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
        session = Session(
            principal=Principal(
                actor=str(data["a"]), role=Role(data["r"]), via=data["v"], subject=str(data["s"])
            ),
            csrf=str(data["c"]),
            expires=int(data["e"]),
            token_digest=str(data["t"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires <= (time.time() if now is None else now):
        return None
    if session.principal.via == "token":
        # Still one of API_TOKENS, in development mode (every one compared, as for a
        # bearer token).
        known = [token_digest(token).encode() for token in settings.token_values()]
        if not settings.dev_mode or not matches_any(session.token_digest, known):
            return None
    return session


def request_session(request: Request) -> Session | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    return read_session(request.app.state.runtime.settings, cookie)


def csrf_ok(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())
