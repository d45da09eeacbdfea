"""The operator console's sessions, kept server-side (`console_session`).

The browser holds a random id in an HttpOnly, SameSite=Strict cookie (`console_session`);
the database holds its SHA-256, who signed in (actor, role, how), an expiry, the
session's CSRF token and the credential the console uses on the operator's behalf (the
identity provider's access token with its refresh token, or a development token).
Signing out deletes the row: the session ends at once, whoever holds a copy of the
cookie. A development-token session also ends when the token leaves `API_TOKENS` or
development mode is off. An unsafe method (POST, PUT, PATCH, DELETE) authenticated by
the cookie needs an `X-CSRF-Token` header equal to the session's CSRF token (403
otherwise). `CONSOLE_SESSION_SECRET` signs the short-lived cookies of the sign-in forms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from fastapi import HTTPException, status
from sqlalchemy import delete

from shared.auth.roles import Principal, Role
from shared.models import ConsoleSession

if TYPE_CHECKING:
    from fastapi import Request
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings

SESSION_COOKIE = "console_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Signs the sign-in forms' cookies when CONSOLE_SESSION_SECRET is unset (development
# mode only).
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


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str
    expires_at: datetime
    credential: str
    credential_expires_at: datetime | None = None
    refresh_token: str | None = None
    id_token: str | None = None
    id_hash: str = ""


def _hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def _session(row: ConsoleSession) -> Session:
    return Session(
        principal=Principal(
            actor=row.actor,
            role=Role(row.role),
            via=row.via,  # type: ignore[arg-type]
            subject=row.subject,
        ),
        csrf=row.csrf,
        expires_at=row.expires_at,
        credential=row.credential,
        credential_expires_at=row.credential_expires_at,
        refresh_token=row.refresh_token,
        id_token=row.id_token,
        id_hash=row.id_hash,
    )


class Refresher(Protocol):
    """Renews a session's credential before it expires (the identity provider's)."""

    def due(self, session: Session, now: datetime) -> bool: ...

    async def __call__(self, session: Session) -> Session | None: ...


class ConsoleSessions:
    """Open, read, renew and close console sessions in the database."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        refresher: Refresher | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.refresher = refresher

    async def open(
        self,
        principal: Principal,
        credential: str,
        *,
        credential_expires_at: datetime | None = None,
        refresh_token: str | None = None,
        id_token: str | None = None,
        now: datetime | None = None,
    ) -> tuple[str, Session]:
        """A new session: the cookie's value (shown once, never stored) and the session."""
        moment = now or datetime.now(UTC)
        cookie = secrets.token_urlsafe(32)
        row = ConsoleSession(
            id_hash=_hash(cookie),
            actor=principal.actor,
            role=principal.role.value,
            via=principal.via,
            subject=principal.subject,
            csrf=secrets.token_urlsafe(24),
            credential=credential,
            credential_expires_at=credential_expires_at,
            refresh_token=refresh_token,
            id_token=id_token,
            expires_at=moment + timedelta(seconds=self.settings.console_session_ttl_s),
        )
        async with self.sessions() as db, db.begin():
            # Sessions past their expiry are of no use to anyone: dropped on each sign-in.
            await db.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= moment))
            db.add(row)
        return cookie, _session(row)

    async def read(self, cookie: str, now: datetime | None = None) -> Session | None:
        """The live session of a cookie, or None (unknown, ended, expired, token gone).
        A credential about to expire is renewed first; if it cannot be, the session ends."""
        if not cookie:
            return None
        moment = now or datetime.now(UTC)
        async with self.sessions() as db:
            row = await db.get(ConsoleSession, _hash(cookie))
        if row is None:
            return None
        session = _session(row)
        if session.expires_at <= moment:
            return None
        if session.principal.via == "token" and not dev_token_is_valid(
            self.settings, session.credential
        ):
            return None
        if self.refresher is not None and self.refresher.due(session, moment):
            renewed = await self.refresher(session)
            if renewed is None:
                await self.close(cookie)
                return None
            await self.renew(renewed)
            return renewed
        return session

    async def renew(self, session: Session) -> None:
        """Store a session's new credential (and the role it carries) after a refresh."""
        async with self.sessions() as db, db.begin():
            row = await db.get(ConsoleSession, session.id_hash)
            if row is not None:
                row.role = session.principal.role.value
                row.credential = session.credential
                row.credential_expires_at = session.credential_expires_at
                row.refresh_token = session.refresh_token
                row.id_token = session.id_token

    async def close(self, cookie: str) -> Session | None:
        """End the session now; the ended session (for the provider's sign-out), if any."""
        if not cookie:
            return None
        async with self.sessions() as db, db.begin():
            row = await db.scalar(
                delete(ConsoleSession)
                .where(ConsoleSession.id_hash == _hash(cookie))
                .returning(ConsoleSession)
            )
            return _session(row) if row is not None else None


async def request_session(request: Request) -> Session | None:
    """The request's console session (read once per request), or None. A session opened
    with an API key lasts only while the key does (checked like a bearer credential)."""
    if hasattr(request.state, "console_session"):
        found: Session | None = request.state.console_session
        return found
    store: ConsoleSessions | None = getattr(request.app.state, "console_sessions", None)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    session = await store.read(cookie) if store is not None and cookie else None
    if session is not None and session.principal.via == "api_key":
        for check in getattr(request.app.state, "bearer_checks", []):
            if check.claims(session.credential):
                try:
                    await check.principal(session.credential)
                except HTTPException:
                    session = None
                break
    request.state.console_session = session
    return session


def csrf_ok(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())
