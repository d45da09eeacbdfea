"""Request bodies over a size limit are refused with 413 before they are read.

A pure ASGI middleware (no BaseHTTPMiddleware, which would buffer): a declared
`Content-Length` over the limit is answered at once, without reading a byte of the body;
a body without one (chunked) is counted as it streams in, and the request is cut off
with the same 413 as soon as it passes the limit, so at most the limit plus one chunk
is ever held. The limit is `API_MAX_BODY_BYTES`; a route may set its own with
`@max_body_bytes(n)` (a streamed upload such as a bulk import takes more than a JSON
body should).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from starlette.routing import Match

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE = "max_body_bytes"
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


def max_body_bytes(limit: int) -> Callable[[F], F]:
    """Give one endpoint its own body limit (bytes) instead of `API_MAX_BODY_BYTES`."""
    if limit < 0:
        raise ValueError("a body limit is a number of bytes >= 0")

    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTRIBUTE, limit)
        return endpoint

    return mark


class _TooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, default: int, setting: str = "API_MAX_BODY_BYTES") -> None:
        self.app = app
        self.default = default
        self.setting = setting

    def limit_for(self, scope: Scope) -> tuple[int, Any]:
        """The limit of the route the request goes to (the default when none sets one),
        and that route."""
        router = getattr(scope.get("app"), "router", None)
        route = _matching_route(getattr(router, "routes", ()), scope)
        limit = getattr(getattr(route, "endpoint", None), _ATTRIBUTE, None)
        return (self.default if limit is None else int(limit)), route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        limit, route = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if route is not None:  # the metrics label the 413 with its route
                scope["route"] = route
            await self._refuse(send, limit, declared)
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # The app turned the cut-off into an error response of its own (a
                # framework catches what `receive` raised): the answer is the 413.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send, limit, None)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if started:
                raise
            started = True
            await self._refuse(send, limit, None)

    async def _refuse(self, send: Send, limit: int, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "the body"
        body = orjson.dumps(
            {
                "detail": f"request body too large: {size} over the limit of {limit} bytes "
                f"({self.setting})",
                "limit_bytes": limit,
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the body is not read: the connection cannot be reused.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _matching_route(routes: Any, scope: Scope) -> Any:
    """The endpoint route a request goes to. An `APIRouter` included in the app may
    stand in the app's routes as one router object (FastAPI >= 0.165 includes routers
    lazily): its own routes are searched in turn."""
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.FULL:
            continue
        if getattr(route, "endpoint", None) is not None:
            return route
        inner = getattr(route, "routes", None)
        if inner is None:
            inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is None:
            return route
        return _matching_route(inner, scope) or route
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
