"""API keys for integrations: their format, their storage, and the bearer check.

A key reads `nk_<lookup>_<secret>`: `lookup` (16 hex digits) is public and finds the
row; `secret` is 32 random bytes (base64url). The database keeps the SHA-256 of the
secret, never the secret. A plain SHA-256 is the right hash here, not a slow KDF
(bcrypt, scrypt, Argon2): those exist to make guessing a low-entropy password from its
hash expensive, and a 256-bit random secret cannot be guessed however fast the hash;
a slow hash would only add its cost to every request.

`ApiKeyCheck` asks PostgreSQL (one index lookup) and remembers a key found valid for
`CACHE_S` (1 s) only: a key revoked on one API process is refused by every process
within that second (the revoking process forgets at once). The lookup costs a pool
checkout and a round trip, about 2.4 ms a request on the development machine
(docs/benchmarks.md, `make bench-auth`); the second's cache saves it for a caller's
bursts. `last_used_at` is written at most once a minute per key, by a conditional UPDATE
that only runs when the row read shows an older time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select, update

from shared.auth import Principal, Role, Unauthorized
from shared.logging import get_logger
from shared.models import ApiKey

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings

log = get_logger(__name__)

PREFIX = "nk_"
LOOKUP_HEX = 16
SECRET_BYTES = 32
# `last_used_at` is at most this stale.
LAST_USED_EVERY = timedelta(minutes=1)
# How long a process trusts a key it found valid (so how late it sees a revocation).
CACHE_S = 1.0
CACHE_MAX = 1024
_SHAPE = re.compile(rf"nk_(?P<lookup>[0-9a-f]{{{LOOKUP_HEX}}})_(?P<secret>[A-Za-z0-9_-]{{43}})")
# Compared against when the lookup finds nothing, so a miss costs what a hit costs.
_NOTHING = hashlib.sha256(b"").digest()


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str, bytes]:
    """A fresh key: (the key to show once, its lookup id, the digest to store)."""
    lookup = secrets.token_hex(LOOKUP_HEX // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return f"{PREFIX}{lookup}_{secret}", lookup, secret_digest(secret)


def parse_key(credential: str) -> tuple[str, str] | None:
    """(lookup, secret) of a well-formed key, else None."""
    match = _SHAPE.fullmatch(credential)
    return (match["lookup"], match["secret"]) if match else None


def key_principal(name: str, role: str) -> Principal:
    return Principal(actor=f"key:{name}", role=Role(role), via="api_key", subject=name)


class ApiKeyCheck:
    """The `BearerCheck` of API keys (see `shared.auth.bearer`)."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, cache_s: float = CACHE_S
    ) -> None:
        self.sessions = sessions
        self.cache_s = cache_s
        # SHA-256 of the whole key -> (principal, until when it is trusted).
        self._valid: dict[bytes, tuple[Principal, float]] = {}

    def claims(self, credential: str) -> bool:
        return credential.startswith(PREFIX)

    def forget(self) -> None:
        """Trust no key from memory (after a revocation by this process)."""
        self._valid.clear()

    async def principal(self, credential: str) -> Principal:
        memo = hashlib.sha256(credential.encode()).digest()
        known = self._valid.get(memo)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        principal = await self._look_up(credential)
        if len(self._valid) >= CACHE_MAX:
            self._valid.clear()
        if self.cache_s > 0:
            self._valid[memo] = (principal, time.monotonic() + self.cache_s)
        return principal

    async def _look_up(self, credential: str) -> Principal:
        parsed = parse_key(credential)
        if parsed is None:
            raise Unauthorized("malformed API key")
        lookup, secret = parsed
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(
                        ApiKey.id,
                        ApiKey.name,
                        ApiKey.role,
                        ApiKey.secret_sha256,
                        ApiKey.revoked_at,
                        ApiKey.last_used_at,
                        func.now(),
                    ).where(ApiKey.lookup == lookup)
                )
            ).one_or_none()
            stored = row.secret_sha256 if row is not None else _NOTHING
            matches = hmac.compare_digest(secret_digest(secret), stored)
            if row is None or not matches:
                raise Unauthorized("invalid API key")
            if row.revoked_at is not None:
                raise Unauthorized("API key revoked")
            now: datetime = row[6]
            if row.last_used_at is None or row.last_used_at < now - LAST_USED_EVERY:
                await _mark_used(session, row.id)
        return key_principal(row.name, row.role)


async def _mark_used(session: AsyncSession, key_id: int) -> None:
    """One conditional UPDATE: of several processes seeing the same stale time, the first
    writes and the others match no row."""
    await session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            or_(
                ApiKey.last_used_at.is_(None),
                ApiKey.last_used_at < func.now() - LAST_USED_EVERY,
            ),
        )
        .values(last_used_at=func.now())
    )
    await session.commit()


async def any_key_usable(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """Whether an unrevoked API key exists (the start-up check without an identity
    provider)."""
    async with sessions() as session:
        found = await session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1))
    return found is not None


BOOTSTRAP_COMMAND = "notifications-api-key create --name ops --role admin"


class StartRefused(RuntimeError):
    """A service with HTTP actions that nobody could use: it does not start."""


async def require_a_way_in(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
    """Outside development mode, with no identity provider (`OIDC_ISSUER`), the API keys
    are the only credentials: refuse to start while none is usable."""
    if settings.dev_mode or settings.oidc_issuer is not None:
        return
    try:
        usable = await any_key_usable(sessions)
    except Exception as exc:
        raise StartRefused(
            "refusing to start: OIDC_ISSUER is unset, so API keys are the only credentials, "
            f"and PostgreSQL did not answer whether one exists ({exc!r})"
        ) from exc
    if not usable:
        raise StartRefused(
            "refusing to start outside development mode: no way to authenticate. Set "
            "OIDC_ISSUER (the identity provider's issuer URL), or create an API key: "
            f"`{BOOTSTRAP_COMMAND}` (or `make api-key NAME=ops ROLE=admin`), which prints "
            "the key once"
        )
