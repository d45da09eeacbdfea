"""HTTP entry points for clients: parse, call one function, return."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from services.api import clients, imports
from services.api.body_limit import max_body_bytes
from services.api.deps import UnitDep, bind_path_ids
from services.api.import_file import CSV, MAX_LINE_CHARS, NDJSON, file_kind
from services.api.pagination import Page, PageParams, make_page, page_params
from services.api.schemas import (
    TAG_MAX,
    ClientIn,
    ClientOut,
    ClientPatch,
    ErrorOut,
    ImportOut,
    OperatorCode,
    RejectedRow,
    TagName,
    Zone,
)
from shared.auth import ADMIN, OPERATOR, VIEWER

router = APIRouter(
    prefix="/api/v1/clients",
    tags=["clients"],
    dependencies=[Depends(bind_path_ids), VIEWER],
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


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    responses=TAKEN,
    dependencies=[OPERATOR],
    summary="Add a client",
)
async def create_client(body: ClientIn, unit: UnitDep) -> ClientOut:
    async with unit.write() as session:
        return await clients.create_client(session, unit.topics, body)


# A bulk import streams; its body may be far larger than a JSON body (~45 bytes a row).
IMPORT_MAX_BODY_BYTES = 1 << 30
_IMPORT_BODY = {
    "required": True,
    "content": {
        CSV: {
            "schema": {"type": "string"},
            "example": "telephone,tag,timezone\n79111234567,vip|new,Europe/Moscow\n",
        },
        # application/x-ndjson is taken too (see the description); not declared here,
        # for OpenAPI tools cannot build such a body.
    },
}


@router.post(
    "/import/",
    dependencies=[OPERATOR],
    summary="Import clients from a CSV or NDJSON file",
    description=(
        f"The body is the file, streamed: `{CSV}` with a header row "
        "`telephone,tag,timezone` (several tags separated by `|`; an empty time zone is "
        f"UTC) or `{NDJSON}` (one client body per line, as POST takes). Each row is checked "
        "as POST checks a client; a bad row is listed in `rejected` with its line and "
        "field and the good rows are written. `mode=create` (default): a telephone that "
        "belongs to a client is rejected; `mode=upsert`: that client's tags and time zone "
        "are replaced, as PUT does. A telephone twice in the file: the first line counts. "
        "A file that cannot be read at all (wrong or missing header, not UTF-8, empty, a "
        f"line over {MAX_LINE_CHARS} characters) is a 422 and changes nothing; another "
        f"content type is a 415; a body over {IMPORT_MAX_BODY_BYTES} bytes a 413."
    ),
    responses={
        413: {"model": ErrorOut, "description": "Body over the import's size limit"},
        415: {"model": ErrorOut, "description": "Not text/csv or application/x-ndjson"},
        422: {"model": ErrorOut, "description": "The file cannot be read; nothing written"},
    },
    openapi_extra={"requestBody": _IMPORT_BODY},
)
@max_body_bytes(IMPORT_MAX_BODY_BYTES)
async def import_clients(
    request: Request,
    unit: UnitDep,
    mode: Annotated[
        Literal["create", "upsert"],
        Query(description="create: existing telephones are rejected; upsert: replaced"),
    ] = "create",
) -> ImportOut:
    kind = file_kind(request.headers.get("content-type"))
    async with unit.write() as session:
        result = await imports.import_clients(session, unit.topics, kind, mode, request.stream())
    return ImportOut(
        created=result.created,
        updated=result.updated,
        unchanged=result.unchanged,
        rejected=[
            RejectedRow(line=row.line, field=row.field, message=row.message)
            for row in result.rejected
        ],
        rejected_count=result.rejected_count,
    )


@router.api_route(
    "/import/", methods=["GET", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False
)
async def import_other_methods() -> Response:
    """405 (not the 422 of `/{client_id}/` with the id `import`): only POST imports."""
    return Response(status_code=status.HTTP_405_METHOD_NOT_ALLOWED, headers={"Allow": "POST"})


@router.get("/", summary="List and search clients")
async def list_clients(
    request: Request,
    unit: UnitDep,
    params: Annotated[PageParams, Depends(page_params)],
    telephone: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,11}$", description="Telephones starting with these digits"),
    ] = None,
    tag: Annotated[
        TagName | None,
        Query(min_length=1, max_length=TAG_MAX, description="Clients with this tag"),
    ] = None,
    mobile_code: Annotated[OperatorCode | None, Query(description="Operator code")] = None,
    timezone: Annotated[Zone | None, Query(description="IANA time zone")] = None,
) -> Page[ClientOut]:
    """Filters combine with AND; paging as everywhere (`limit`, `offset`)."""
    search = clients.Search(
        telephone=telephone, tag=tag, mobile_code=mobile_code, timezone=timezone
    )
    async with unit.read() as session:
        count, items = await clients.list_clients(session, params.limit, params.offset, search)
    return make_page(request, params, count, items)


@router.get("/{client_id}/", responses=NOT_FOUND, summary="Get a client")
async def get_client(client_id: ClientId, unit: UnitDep) -> ClientOut:
    async with unit.read() as session:
        return await clients.get_client(session, client_id)


@router.put(
    "/{client_id}/",
    responses=NOT_FOUND | TAKEN,
    dependencies=[OPERATOR],
    summary="Replace a client",
)
async def replace_client(client_id: ClientId, body: ClientIn, unit: UnitDep) -> ClientOut:
    async with unit.write() as session:
        return await clients.update_client(session, unit.topics, client_id, body)


@router.patch(
    "/{client_id}/",
    responses=NOT_FOUND | TAKEN,
    dependencies=[OPERATOR],
    summary="Change some fields",
)
async def patch_client(client_id: ClientId, body: ClientPatch, unit: UnitDep) -> ClientOut:
    async with unit.write() as session:
        return await clients.update_client(session, unit.topics, client_id, body)


@router.delete(
    "/{client_id}/",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    dependencies=[ADMIN],
    summary="Delete a client (pending messages to it are cancelled; history stays)",
)
async def delete_client(client_id: ClientId, unit: UnitDep) -> Response:
    async with unit.write() as session:
        await clients.delete_client(session, unit.topics, client_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
