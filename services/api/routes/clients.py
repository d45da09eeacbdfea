"""HTTP entry points for clients: parse, call one function, return."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response, status

from services.api import clients
from services.api.deps import UnitDep, bind_path_ids
from services.api.pagination import Page, PageParams, make_page, page_params
from services.api.schemas import ClientIn, ClientOut, ClientPatch, ErrorOut
from shared.auth import require_token

router = APIRouter(
    prefix="/api/v1/clients",
    tags=["clients"],
    dependencies=[Depends(bind_path_ids), Depends(require_token)],
    responses={
        401: {"model": ErrorOut, "description": "Missing or wrong token"},
        422: {"model": ErrorOut, "description": "Invalid input, each bad field named"},
    },
)
ClientId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Client id")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such client"}
}
TAKEN: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "Telephone belongs to another client"}
}


@router.post("/", status_code=status.HTTP_201_CREATED, responses=TAKEN, summary="Add a client")
async def create_client(body: ClientIn, unit: UnitDep) -> ClientOut:
    async with unit.write() as session:
        return await clients.create_client(session, unit.topics, body)


@router.get("/", summary="List clients")
async def list_clients(
    request: Request, unit: UnitDep, params: Annotated[PageParams, Depends(page_params)]
) -> Page[ClientOut]:
    async with unit.read() as session:
        count, items = await clients.list_clients(session, params.limit, params.offset)
    return make_page(request, params, count, items)


@router.get("/{client_id}/", responses=NOT_FOUND, summary="Get a client")
async def get_client(client_id: ClientId, unit: UnitDep) -> ClientOut:
    async with unit.read() as session:
        return await clients.get_client(session, client_id)


@router.put("/{client_id}/", responses=NOT_FOUND | TAKEN, summary="Replace a client")
async def replace_client(client_id: ClientId, body: ClientIn, unit: UnitDep) -> ClientOut:
    async with unit.write() as session:
        return await clients.update_client(session, unit.topics, client_id, body)


@router.patch("/{client_id}/", responses=NOT_FOUND | TAKEN, summary="Change some fields")
async def patch_client(client_id: ClientId, body: ClientPatch, unit: UnitDep) -> ClientOut:
    async with unit.write() as session:
        return await clients.update_client(session, unit.topics, client_id, body)


@router.delete(
    "/{client_id}/",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Delete a client (pending messages to it are cancelled; history stays)",
)
async def delete_client(client_id: ClientId, unit: UnitDep) -> Response:
    async with unit.write() as session:
        await clients.delete_client(session, unit.topics, client_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
