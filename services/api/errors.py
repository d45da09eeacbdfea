"""Errors as JSON: 422 naming each bad field, 404 for a missing id, 409 for a conflict.

Never a 500 or a stack trace for bad input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.api.schemas import FieldError

if TYPE_CHECKING:
    from fastapi import FastAPI, Request


class NotFound(Exception):
    def __init__(self, what: str, ident: int) -> None:
        super().__init__(f"{what} {ident} not found")


class UnreadableFile(Exception):
    """A bulk-import file that cannot be read at all: a 4xx naming the problem, and
    nothing of it is written."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class Conflict(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


def describe_error(error: dict[str, Any]) -> dict[str, Any]:
    """One pydantic error as {field, message, type}: the API's 422 items, and the bulk
    import's rejected rows."""
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if kind == "json_invalid":
        return {"field": "body", "message": "request body is not valid JSON", "type": kind}
    loc = tuple(error.get("loc", ()))
    field = _field(loc)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        field = ".".join(filter(None, [field if field != "body" else "", cause.field]))
    if kind == "model_attributes_type" or (kind == "dict_type" and field == "body"):
        return {"field": "body", "message": "request body must be a JSON object", "type": kind}
    if kind == "missing" and field == "body":
        return {"field": "body", "message": "request body is required", "type": kind}
    if kind == "extra_forbidden":
        message = "unknown field"
    return {"field": field, "message": message, "type": kind}


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [describe_error(dict(error)) for error in exc.errors()]
        content_type = request.headers.get("content-type", "")
        if any(d["field"] == "body" for d in details) and "json" not in content_type:
            details = [
                {
                    "field": "body",
                    "message": "send the body as JSON with Content-Type: application/json "
                    f"(got {content_type or 'no Content-Type'})",
                    "type": "content_type",
                }
            ]
        return JSONResponse({"detail": details}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(UnreadableFile)
    async def unreadable(_: Request, exc: UnreadableFile) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"field": exc.field, "message": str(exc), "type": "unreadable_file"}]},
            exc.status,
        )

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"field": exc.field, "message": str(exc), "type": "conflict"}]},
            status.HTTP_409_CONFLICT,
        )
