"""HTTP entry points for mailings ("notifications"): parse, call one function, return."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from services.api import mailings
from services.api.buckets import BUCKETS_BY_NAME, Bucket
from services.api.deps import UnitDep, bind_path_ids
from services.api.pagination import Page, PageParams, make_page, page_params
from services.api.schemas import (
    ErrorOut,
    Forecast,
    MailingIn,
    MailingOut,
    MessageOut,
    Preview,
)
from shared.auth import ADMIN, OPERATOR, VIEWER

router = APIRouter(
    prefix="/api/v1/notifications",
    tags=["mailings"],
    dependencies=[Depends(bind_path_ids), VIEWER],
    responses={
        401: {"model": ErrorOut, "description": "Missing or wrong token"},
        422: {"model": ErrorOut, "description": "Invalid input, each bad field named"},
    },
)
MailingId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Mailing id")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such mailing"}
}
StatusFilter = Literal[
    Bucket,
    "scheduled",
    "queued",
    "sending",
    "retrying",
    "sent",
    "failed",
    "expired",
    "cancelled",
]


@router.post(
    "/", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR], summary="Create a mailing"
)
async def create_mailing(body: MailingIn, unit: UnitDep) -> MailingOut:
    async with unit.write() as session:
        return await mailings.create_mailing(session, unit.topics, body)


@router.post(
    "/preview/",
    summary="Audience and send-time histogram of a mailing body, without creating it",
)
async def preview(body: MailingIn, unit: UnitDep) -> Preview:
    """The same body and validation as creating; nothing is written or published."""
    async with unit.read() as session:
        return await mailings.preview(session, body)


@router.api_route(
    "/preview/",
    methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def preview_other_methods() -> Response:
    """405 naming POST alone: without this route `/{mailing_id}/` would read "preview" as
    an id (a 422), and the app's 405 handler would list that route's methods too."""
    return JSONResponse(
        {"detail": "Method Not Allowed"},
        status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
        headers={"Allow": "POST"},
    )


@router.get("/", summary="List mailings with their message counts")
async def list_mailings(
    request: Request, unit: UnitDep, params: Annotated[PageParams, Depends(page_params)]
) -> Page[MailingOut]:
    async with unit.read() as session:
        count, items = await mailings.list_mailings(session, params.limit, params.offset)
    return make_page(request, params, count, items)


@router.get("/{mailing_id}/", responses=NOT_FOUND, summary="Get a mailing with its counts")
async def get_mailing(mailing_id: MailingId, unit: UnitDep) -> MailingOut:
    async with unit.read() as session:
        return await mailings.get_mailing(session, mailing_id)


@router.put(
    "/{mailing_id}/",
    responses={
        **NOT_FOUND,
        409: {"model": ErrorOut, "description": "The mailing is cancelled: it cannot change"},
    },
    dependencies=[OPERATOR],
    summary="Replace a mailing (sent messages stay; pending ones follow the new version)",
)
async def replace_mailing(mailing_id: MailingId, body: MailingIn, unit: UnitDep) -> MailingOut:
    async with unit.write() as session:
        return await mailings.replace_mailing(session, unit.topics, mailing_id, body)


@router.delete(
    "/{mailing_id}/",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    dependencies=[ADMIN],
    summary="Delete a mailing and its messages",
)
async def delete_mailing(mailing_id: MailingId, unit: UnitDep) -> Response:
    async with unit.write() as session:
        await mailings.delete_mailing(session, unit.topics, mailing_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{mailing_id}/messages/", responses=NOT_FOUND, summary="Messages of a mailing")
async def list_messages(
    request: Request,
    mailing_id: MailingId,
    unit: UnitDep,
    params: Annotated[PageParams, Depends(page_params)],
    status_filter: Annotated[
        StatusFilter | None,
        Query(alias="status", description="A bucket name or an exact internal status"),
    ] = None,
) -> Page[MessageOut]:
    statuses = BUCKETS_BY_NAME.get(status_filter, [status_filter]) if status_filter else []
    async with unit.read() as session:
        count, items = await mailings.list_messages(
            session, mailing_id, params.limit, params.offset, statuses
        )
    return make_page(request, params, count, items)


@router.get(
    "/{mailing_id}/forecast/",
    responses=NOT_FOUND,
    summary="When will it go out: planned UTC send time per client and counts per hour",
)
async def forecast(
    request: Request,
    mailing_id: MailingId,
    unit: UnitDep,
    params: Annotated[PageParams, Depends(page_params)],
) -> Forecast:
    async with unit.read() as session:
        count, items, by_hour = await mailings.forecast(
            session, mailing_id, params.limit, params.offset
        )
    page = make_page(request, params, count, items)
    return Forecast(
        count=page.count, next=page.next, previous=page.previous, results=items, by_hour=by_hour
    )
