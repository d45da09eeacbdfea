"""The audit trail: who did what to which object, when and from where.

An entry is added in the transaction of the write it describes (the API's
`Unit.write()`), so a committed write always has its entry and an entry always its
write. `details` stays small: the names of the fields changed, counts, a state; never a
secret, a message text or a whole import file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select

from shared.models import AuditLog

if TYPE_CHECKING:
    from fastapi import Request
    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.auth import Principal


@dataclass(frozen=True)
class Origin:
    """Who made a request and from where: the audit's `actor`, `via`, `remote_addr`,
    `request_id` (the id of the request's `http_request` log line)."""

    actor: str
    via: str
    remote_addr: str | None
    request_id: str | None


def request_origin(request: Request) -> Origin:
    principal: Principal | None = getattr(request.state, "principal", None)
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return Origin(
        actor=principal.actor if principal is not None else "anonymous",
        via=principal.via if principal is not None else "none",
        remote_addr=request.client.host if request.client is not None else None,
        request_id=str(request_id) if request_id is not None else None,
    )


def audit_entry(
    origin: Origin,
    action: str,
    object_type: str | None = None,
    object_id: int | str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditLog:
    return AuditLog(
        actor=origin.actor,
        via=origin.via,
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        details=details or {},
        remote_addr=origin.remote_addr,
        request_id=origin.request_id,
    )


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None


async def list_entries(
    session: AsyncSession, where: AuditFilter, limit: int, offset: int
) -> tuple[int, list[AuditLog]]:
    """Entries matching every filter given, newest first."""
    conditions = [
        column == value
        for column, value in (
            (AuditLog.actor, where.actor),
            (AuditLog.action, where.action),
            (AuditLog.object_type, where.object_type),
            (AuditLog.object_id, where.object_id),
        )
        if value is not None
    ]
    count = await session.scalar(select(func.count()).select_from(AuditLog).where(*conditions))
    rows = await session.scalars(
        select(AuditLog).where(*conditions).order_by(AuditLog.id.desc()).limit(limit).offset(offset)
    )
    return count or 0, list(rows)
