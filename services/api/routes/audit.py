"""`GET /api/v1/audit/`: the audit trail, newest first (operators and admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from services.api.deps import UnitDep
from services.api.pagination import Page, PageParams, make_page, page_params
from services.api.schemas import ErrorOut
from shared.audit import AuditFilter, list_entries
from shared.auth import OPERATOR

router = APIRouter(
    prefix="/api/v1/audit",
    tags=["audit"],
    dependencies=[OPERATOR],
    responses={
        401: {"model": ErrorOut, "description": "Missing or wrong credential"},
        403: {"model": ErrorOut, "description": "The caller is a viewer"},
        422: {"model": ErrorOut, "description": "Invalid input, each bad field named"},
    },
)


class AuditEntryOut(BaseModel):
    at: datetime
    actor: str = Field(description="`key:<name>`, the token subject's name, or `token:<digest>`")
    action: str = Field(examples=["mailing.pause"])
    object_type: str | None = Field(description="client, mailing, api_key; null for an import")
    object_id: str | None
    via: str = Field(description="api_key, oidc or token")
    details: dict[str, Any] = Field(description="What changed: field names, counts, a state")
    remote_addr: str | None
    request_id: str | None = Field(description="The `request_id` of the request's log lines")


# Exact matches; printable text only (a NUL cannot be stored, so it matches nothing).
Text = Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


@router.get("/", summary="The audit trail: every write, who, what, when, from where")
async def list_audit(
    request: Request,
    unit: UnitDep,
    params: Annotated[PageParams, Depends(page_params)],
    actor: Text = None,
    action: Text = None,
    object_type: Text = None,
    object_id: Text = None,
) -> Page[AuditEntryOut]:
    """Filters combine with AND and match exactly; newest first."""
    where = AuditFilter(actor=actor, action=action, object_type=object_type, object_id=object_id)
    async with unit.read() as session:
        count, rows = await list_entries(session, where, params.limit, params.offset)
    items = [
        AuditEntryOut(
            at=row.at,
            actor=row.actor,
            action=row.action,
            object_type=row.object_type,
            object_id=row.object_id,
            via=row.via,
            details=row.details,
            remote_addr=row.remote_addr,
            request_id=row.request_id,
        )
        for row in rows
    ]
    return make_page(request, params, count, items)
