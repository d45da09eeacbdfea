"""Request-scoped access to the runtime built in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from shared.audit import Origin, audit_entry, request_origin
from shared.logging import ENTITY_KEYS, bind_entities

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from typing import Any

    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.outbox import OutboxRelay
    from shared.service import Runtime


class Unit:
    """One transaction per request; after a commit that staged events, wake the relay.

    A write records its audit entry in its own transaction: `unit.audit(...)` inside
    `unit.write()`, so the entry commits (or rolls back) with the write.
    """

    def __init__(self, runtime: Runtime, relay: OutboxRelay, request: Request) -> None:
        self.runtime = runtime
        self.relay = relay
        self.topics = runtime.topics
        self.request = request
        self._writing: AsyncSession | None = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.runtime.sessions() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        async with self.runtime.sessions() as session, session.begin():
            self._writing = session
            try:
                yield session
            finally:
                self._writing = None
        self.relay.wake()

    def audit(
        self,
        action: str,
        object_type: str | None = None,
        object_id: int | str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Add the audit entry of the write in progress (flushed with its commit)."""
        if self._writing is None:
            raise RuntimeError("Unit.audit() belongs inside Unit.write()")
        self._writing.add(audit_entry(self.origin, action, object_type, object_id, details))

    @property
    def origin(self) -> Origin:
        """Read when used: by then the route's role check has authenticated the caller."""
        return request_origin(self.request)


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
    return Unit(request.app.state.runtime, request.app.state.relay, request)


UnitDep = Annotated[Unit, Depends(_unit)]
