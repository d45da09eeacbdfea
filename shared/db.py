"""SQLAlchemy 2 async engine and session factory on psycopg 3.

Built in each service's lifespan (never at import) and disposed at shutdown.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import TextClause

    from shared.settings import Settings

# Rows one pruning statement deletes: short transactions, a bounded WAL burst.
PRUNE_BATCH = 5000


def create_engine(settings: Settings, *, application_name: str) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_pre_ping=True,
        pool_timeout=settings.database_timeout_s,
        connect_args={
            "application_name": application_name,
            "connect_timeout": max(1, int(settings.database_timeout_s)),
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Raise when PostgreSQL does not answer a trivial query."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    bind = sessions.kw["bind"]
    assert isinstance(bind, AsyncEngine)
    return bind


async def prune_in_batches(
    engine: AsyncEngine,
    *,
    lock: int,
    statement: TextClause,
    params: dict[str, Any],
    batch_size: int = PRUNE_BATCH,
) -> int | None:
    """Run a `DELETE ... LIMIT :batch`-shaped `statement` until it deletes fewer than
    `batch_size` rows, each batch its own transaction; return the rows deleted.

    Every process that prunes a table calls this; the session advisory lock `lock` lets
    one of them prune at a time and the others skip (None) instead of waiting or
    scanning the same rows. The lock goes with the connection, even on a crash.
    """
    async with engine.connect() as conn:
        leader = await conn.scalar(select(func.pg_try_advisory_lock(lock)))
        await conn.commit()
        if not leader:
            return None
        deleted = 0
        try:
            while True:
                result = await conn.execute(statement, {**params, "batch": batch_size})
                await conn.commit()
                count = int(result.rowcount or 0)
                deleted += count
                if count < batch_size:
                    return deleted
        finally:
            with contextlib.suppress(Exception):
                await conn.execute(select(func.pg_advisory_unlock(lock)))
                await conn.commit()
