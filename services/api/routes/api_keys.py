"""HTTP entry points for API keys (admin only): create, list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from services.api import api_keys
from services.api.api_keys import ApiKeyCreated, ApiKeyIn, ApiKeyOut
from services.api.deps import UnitDep
from services.api.pagination import Page, PageParams, make_page, page_params
from services.api.schemas import ErrorOut
from shared.api_keys import ApiKeyCheck
from shared.auth import ADMIN

router = APIRouter(
    prefix="/api/v1/api-keys",
    tags=["api keys"],
    dependencies=[ADMIN],
    responses={
        401: {"model": ErrorOut, "description": "Missing or wrong credential"},
        403: {"model": ErrorOut, "description": "The caller is not an admin"},
        422: {"model": ErrorOut, "description": "Invalid input, each bad field named"},
    },
)
KeyId = Annotated[int, Path(ge=1, le=2**63 - 1, description="API key id")]


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorOut, "description": "A key in use has that name"}},
    summary="Create an API key (the answer is the only time the key is shown)",
)
async def create_key(body: ApiKeyIn, unit: UnitDep) -> ApiKeyCreated:
    async with unit.write() as session:
        created = await api_keys.create_key(session, body, unit.origin.actor)
        unit.audit(
            "api_key.create", "api_key", created.id, {"name": created.name, "role": created.role}
        )
    return created


@router.get("/", summary="List API keys, newest first (never their secrets)")
async def list_keys(
    request: Request,
    unit: UnitDep,
    params: Annotated[PageParams, Depends(page_params)],
    revoked: Annotated[bool, Query(description="Include revoked keys")] = True,
) -> Page[ApiKeyOut]:
    async with unit.read() as session:
        count, items = await api_keys.list_keys(
            session, params.limit, params.offset, revoked=revoked
        )
    return make_page(request, params, count, items)


@router.delete(
    "/{key_id}/",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorOut, "description": "No such API key"}},
    summary="Revoke an API key: refused by every API process within a second",
    description="Revoking a key already revoked is a 204 that changes nothing (the first "
    "revocation's time and author stay).",
)
async def revoke_key(key_id: KeyId, request: Request, unit: UnitDep) -> Response:
    async with unit.write() as session:
        revoked, now = await api_keys.revoke_key(session, key_id, unit.origin.actor)
        if now:
            unit.audit("api_key.revoke", "api_key", key_id, {"name": revoked.name})
    for check in getattr(request.app.state, "bearer_checks", []):
        if isinstance(check, ApiKeyCheck):
            check.forget()  # this process: at once; the others within ApiKeyCheck.cache_s
    return Response(status_code=status.HTTP_204_NO_CONTENT)
