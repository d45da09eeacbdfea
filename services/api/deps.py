"""Request-scoped access to the runtime built in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from shared.logging import ENTITY_KEYS, bind_entities

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.outbox import OutboxRelay
    from shared.service import Runtime


class Unit:
    """One transaction per request; after a commit that staged events, wake the relay."""

    def __init__(self, runtime: Runtime, relay: OutboxRelay) -> None:
        self.runtime = runtime
        self.relay = relay
        self.topics = runtime.topics

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.runtime.sessions() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        async with self.runtime.sessions() as session, session.begin():
            yield session
        self.relay.wake()


async def bind_path_ids(request: Request) -> None:
    """Tie every log line of the request, `http_request` included, to the mailing or
    client its path names (async: a sync dependency would bind in a worker thread)."""
    bind_entities(
        **{
            key: int(value)
            for key, value in request.path_params.items()
            if key in ENTITY_KEYS and isinstance(value, str) and value.isascii() and value.isdigit()
        }
    )


def _unit(request: Request) -> Unit:
    return Unit(request.app.state.runtime, request.app.state.relay)


UnitDep = Annotated[Unit, Depends(_unit)]
