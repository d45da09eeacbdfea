"""Bulk import against a concurrent writer: a telephone another transaction gives a
client while the import runs is a rejected row, and the rest of the file is imported."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select, text

from services.api import imports
from services.api.import_file import CSV, Rejected
from shared.models import Client, ClientTag
from shared.topics import Topics
from tests.support.api_helpers import phone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

WAIT_S = 30.0


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _until_blocked(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Until the import's INSERT into `client` waits for another transaction's lock."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO client (%' "
        "AND datname = current_database()"
    )
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        async with sessions() as session:
            if await session.scalar(query):
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the import never waited for the other transaction")


async def test_a_telephone_taken_while_the_import_runs_is_rejected_not_fatal(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    taken, free = phone(), phone()
    body = f"telephone,tag,timezone\n{taken},x,UTC\n{free},x,UTC\n".encode()

    async def run_import() -> imports.ImportResult:
        async with sessions() as session, session.begin():
            return await imports.import_clients(session, Topics(), CSV, "create", _body(body))

    async with sessions() as other:
        async with other.begin():
            # Not committed yet: the import's plan does not see this client, its INSERT
            # then waits for this transaction and finds the telephone taken.
            await other.execute(insert(Client).values(phone=taken, timezone="UTC"))
            running = asyncio.create_task(run_import())
            await _until_blocked(sessions)
        result = await asyncio.wait_for(running, WAIT_S)

    assert (result.created, result.updated, result.unchanged) == (1, 0, 0)
    assert result.rejected == [Rejected(2, "telephone", f"telephone {taken} belongs to a client")]
    assert result.rejected_count == 1
    async with sessions() as session:
        owners = (
            await session.execute(
                select(Client.phone, func.count(ClientTag.tag_id))
                .outerjoin(ClientTag, ClientTag.client_id == Client.id)
                .where(Client.phone.in_([taken, free]), Client.deleted_at.is_(None))
                .group_by(Client.phone)
            )
        ).all()
    assert dict(owners) == {taken: 0, free: 1}  # the taken client keeps what it had
