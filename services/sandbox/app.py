"""The sandbox's ASGI application: a bare hot path for sends, FastAPI for the rest.

`POST /v1/send/{msgId}` is answered by `SandboxApp` itself (no routing, no pydantic, a
few array appends into the ledger); every other path goes to the FastAPI control app
(`/health`, `/ledger...`, `/control/...`, `/docs`).

Decisions for a send, in this order (each request gets exactly one ledger entry,
recorded when it is decided, before any delay):

1. method other than POST            -> 405, kind ``bad_request``;
2. an outage is on                   -> 503, kind ``outage`` (no delay);
3. token missing or wrong            -> 401, kind ``unauthorized``;
4. body not the contract's shape, or ``id`` != msgId -> 400, kind ``bad_request``;
5. the fault draws (see `services.sandbox.faults`): 5xx, 429, malformed 200, hang;
6. otherwise 200 ``{"code":0,"message":"OK"}``, kind ``ok`` (the only "accepted" one).

The latency setting delays every answer of steps 1 and 3-6 (a hanging request hangs
instead). An accepted entry stays accepted even if the client gave up during the delay:
like a real gateway, the sandbox took the message.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from services.sandbox.faults import (
    BAD_REQUEST,
    ERROR_5XX,
    HANG,
    MALFORMED,
    OK,
    OUTAGE,
    RATE_LIMITED,
    UNAUTHORIZED,
)
from services.sandbox.routes import control
from shared.docs_pages import install_docs

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp, Receive, Scope, Send

    from services.sandbox.state import SandboxState

SEND_PREFIX = "/v1/send/"
_PREFIX_LEN = len(SEND_PREFIX)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

JSON = b"application/json"
OK_BODY = b'{"code":0,"message":"OK"}'
# Constant ASGI messages of the accepted answer (uvicorn copies the header list).
_OK_START: dict[str, Any] = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", JSON), (b"content-length", str(len(OK_BODY)).encode())],
}
_OK_END: dict[str, Any] = {"type": "http.response.body", "body": OK_BODY}

_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
# 200 answers that are not the documented body: each is a failure for a careful client.
MALFORMED_BODIES: tuple[tuple[bytes, bytes], ...] = (
    (JSON, b'{"code":"OK"}'),
    (JSON, b'{"code":1,"message":"queue is full"}'),
    (b"text/plain", b"OK"),
    (b"text/html", b"<html><body><h1>Service is under maintenance</h1></body></html>"),
    (JSON, b""),
    (JSON, b'{"code":0,"mess'),
)
_5XX_BODIES: dict[int, tuple[bytes, bytes]] = {
    500: (JSON, b'{"code":500,"message":"Internal Server Error"}'),
    502: (b"text/html", _HTML_502),
    503: (JSON, b'{"code":503,"message":"Service Unavailable"}'),
}


def create_app(state: SandboxState) -> SandboxApp:
    return SandboxApp(state, create_control_app(state))


def create_control_app(state: SandboxState) -> FastAPI:
    app = FastAPI(
        title="SMS gateway sandbox: control",
        description=control.DESCRIPTION,
        version="1",
        openapi_tags=control.TAGS,
        docs_url=None,  # /docs and /redoc with local assets: install_docs
        redoc_url=None,
    )
    install_docs(app)
    app.state.sandbox = state
    app.include_router(control.router)
    return app


class SandboxApp:
    """Dispatch by path prefix: sends on the hot path, everything else to FastAPI."""

    def __init__(self, state: SandboxState, control_app: ASGIApp) -> None:
        self.state = state
        self.control_app = control_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(SEND_PREFIX):
            await self.handle_send(scope, receive, send)
        else:
            await self.control_app(scope, receive, send)

    async def handle_send(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            rest = await _read_rest(receive, body)
            if rest is None:
                return  # the client left before sending the whole body
            body = rest
        state = self.state
        at = state.clock.now()
        record = state.ledger.record
        msg_id, phone, text, problem = parse_send(scope["path"][_PREFIX_LEN:], body)

        if scope["method"] != "POST":
            record(msg_id, phone, text, BAD_REQUEST, 405, at)
            await _delay(state)
            await _answer(send, 405, _error(405, "use POST"), extra=((b"allow", b"POST"),))
            return
        outage = state.outage_mode
        if outage is not None:
            record(msg_id, phone, text, OUTAGE, 503, at)
            # Only reached in `refuse` mode through the control listener, or when the
            # server cannot stop listening: close the connection too.
            extra = ((b"connection", b"close"),) if outage == "refuse" else ()
            await _answer(send, 503, _error(503, "gateway outage"), extra=extra)
            return

        auth: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
                break
        if auth != state.auth_header and not state.token_ok(auth):
            record(msg_id, phone, text, UNAUTHORIZED, 401, at)
            await _delay(state)
            await _answer(
                send,
                401,
                _error(401, "missing or invalid bearer token"),
                extra=((b"www-authenticate", b"Bearer"),),
            )
            return
        if problem is not None:
            record(msg_id, phone, text, BAD_REQUEST, 400, at)
            await _delay(state)
            await _answer(send, 400, _error(400, problem))
            return

        plan = state.plan
        kind = plan.draw()
        if kind == OK:
            record(msg_id, phone, text, OK, 200, at)
            if plan.latency_high_s:
                await asyncio.sleep(plan.latency())
            await send(_OK_START)
            await send(_OK_END)
            return
        if kind == HANG:
            record(msg_id, phone, text, HANG, 0, at)
            if await _wait_for_disconnect(receive, plan.hang_s):
                await _answer(send, 504, _error(504, "gave up after hanging"))
            return
        if kind == ERROR_5XX:
            status = plan.status_5xx()
            record(msg_id, phone, text, ERROR_5XX, status, at)
            await _delay(state)
            content_type, payload = _5XX_BODIES[status]
            await _answer(send, status, payload, content_type=content_type)
        elif kind == RATE_LIMITED:
            record(msg_id, phone, text, RATE_LIMITED, 429, at)
            await _delay(state)
            await _answer(
                send,
                429,
                _error(429, "Too Many Requests"),
                extra=((b"retry-after", plan.retry_after),),
            )
        else:
            record(msg_id, phone, text, MALFORMED, 200, at)
            await _delay(state)
            content_type, payload = MALFORMED_BODIES[plan.malformed_variant(len(MALFORMED_BODIES))]
            await _answer(send, 200, payload, content_type=content_type)


def parse_send(raw_id: str, body: bytes) -> tuple[int | None, int | None, str | None, str | None]:
    """(msgId, phone, text, problem): what could be read, and why it is a 400 if it is."""
    msg_id: int | None = None
    if raw_id.isascii() and (raw_id.isdigit() or (raw_id[:1] == "-" and raw_id[1:].isdigit())):
        value = int(raw_id)
        if INT64_MIN <= value <= INT64_MAX:
            msg_id = value
    try:
        payload = _loads(body)
    except (ValueError, RecursionError):
        return msg_id, None, None, "body is not JSON"
    if type(payload) is not dict:
        return msg_id, None, None, "body is not a JSON object"
    given_id = payload.get("id")
    phone = payload.get("phone")
    text = payload.get("text")
    phone_ok = type(phone) is int and 0 < phone <= INT64_MAX
    text_ok = type(text) is str
    if msg_id is None:
        problem: str | None = "msgId in the path is not an int64"
    elif type(given_id) is not int:
        problem = "id must be an integer"
    elif given_id != msg_id:
        problem = "id in the body differs from msgId in the path"
    elif not phone_ok:
        problem = "phone must be a positive int64"
    elif not text_ok:
        problem = "text must be a string"
    else:
        problem = None
    return msg_id, phone if phone_ok else None, text if text_ok else None, problem


_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\r\n"


def _loads(body: bytes) -> Any:
    """`json.loads` for UTF-8 bodies at a third of its cost (the C scanner directly)."""
    text = body.decode()
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        return json.loads(text)  # leading whitespace, or invalid: its ValueError
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise ValueError("extra data after the JSON value")
    return value


async def _read_rest(receive: Receive, first: bytes) -> bytes | None:
    chunks = [first]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_for_disconnect(receive: Receive, seconds: float) -> bool:
    """Wait until the client leaves or `seconds` pass; True if it is still there."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return True
    return False


async def _delay(state: SandboxState) -> None:
    plan = state.plan
    if plan.latency_high_s:
        await asyncio.sleep(plan.latency())


def _error(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = JSON,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
