"""The console's server-side sessions (shared/auth/sessions.py) on the real PostgreSQL:
the cookie is a random id whose hash alone is stored; a session expires, ends at once
when signed out (a copied cookie with it), and a development-token session ends when
its token is removed."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import SecretStr
from sqlalchemy import select

from shared.auth import ConsoleSessions, Principal, Role, dev_token_principal
from shared.models import ConsoleSession

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings


async def test_a_session_reads_back_and_only_its_hash_is_stored(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    store = ConsoleSessions(settings.model_copy(update={"api_tokens": []}), sessions)
    principal = Principal(actor="alice", role=Role.OPERATOR, via="oidc", subject="u-1")
    cookie, opened = await store.open(principal, "access-token", refresh_token="refresh")
    read = await store.read(cookie)
    assert read == opened
    assert read is not None
    assert read.principal == principal
    assert len(read.csrf) >= 24
    async with sessions() as db:
        row = await db.get(ConsoleSession, hashlib.sha256(cookie.encode()).hexdigest())
        stored = list(await db.scalars(select(ConsoleSession.id_hash)))
    assert row is not None
    assert row.actor == "alice"
    assert cookie not in stored
    assert await store.read(cookie[:-1] + ("A" if cookie[-1] != "A" else "B")) is None
    assert await store.read("") is None


async def test_a_session_expires_and_sign_out_ends_it_for_every_copy(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    store = ConsoleSessions(settings.model_copy(update={"console_session_ttl_s": 60}), sessions)
    principal = Principal(actor="bob", role=Role.VIEWER, via="oidc")
    cookie, _ = await store.open(principal, "t")
    later = datetime.now(UTC) + timedelta(seconds=59)
    assert await store.read(cookie, now=later) is not None
    assert await store.read(cookie, now=later + timedelta(seconds=2)) is None

    copied = cookie
    ended = await store.close(cookie)
    assert ended is not None
    assert ended.principal.actor == "bob"
    assert await store.read(copied) is None
    assert await store.close(cookie) is None


async def test_removing_a_development_token_ends_its_sessions(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    with_token = settings.model_copy(update={"api_tokens": [SecretStr("alpha")]})
    cookie, _ = await ConsoleSessions(with_token, sessions).open(
        dev_token_principal("alpha"), "alpha"
    )
    assert await ConsoleSessions(with_token, sessions).read(cookie) is not None
    without = with_token.model_copy(update={"api_tokens": [SecretStr("beta")]})
    assert await ConsoleSessions(without, sessions).read(cookie) is None
    production = with_token.model_copy(update={"dev_mode": False})
    assert await ConsoleSessions(production, sessions).read(cookie) is None


async def test_renewed_tokens_and_role_are_kept(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    store = ConsoleSessions(settings, sessions)
    cookie, opened = await store.open(Principal(actor="c", role=Role.VIEWER, via="oidc"), "old")
    promoted = Principal(actor="c", role=Role.ADMIN, via="oidc")
    await store.renew(replace(opened, principal=promoted, credential="new", refresh_token="r2"))
    read = await store.read(cookie)
    assert read is not None
    assert (read.principal.role, read.credential, read.refresh_token) == (Role.ADMIN, "new", "r2")
