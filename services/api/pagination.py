"""limit/offset pagination with the contract's envelope: count, next, previous, results."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query, Request
from pydantic import BaseModel, Field

T = TypeVar("T")

MAX_PAGE = 1000
MAX_OFFSET = 2**53


class Page(BaseModel, Generic[T]):
    count: int = Field(description="Total number of results across all pages.")
    next: str | None = Field(description="URL of the next page, or null.")
    previous: str | None = Field(description="URL of the previous page, or null.")
    results: list[T]


class PageParams(BaseModel):
    limit: int
    offset: int


def page_params(
    limit: Annotated[
        int | None,
        Query(
            ge=1, le=MAX_PAGE, description=f"Page size (at most {MAX_PAGE}; default all, capped)"
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Results to skip")] = 0,
) -> PageParams:
    return PageParams(limit=limit or MAX_PAGE, offset=offset)


def make_page(request: Request, params: PageParams, count: int, results: list[T]) -> Page[T]:
    def link(offset: int) -> str:
        return str(request.url.include_query_params(limit=params.limit, offset=offset))

    following = params.offset + params.limit
    nxt = link(following) if following < count else None
    prev = link(max(params.offset - params.limit, 0)) if params.offset > 0 else None
    return Page[T](count=count, next=nxt, previous=prev, results=results)
