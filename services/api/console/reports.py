"""The console's Reports page: the daily report previewed as HTML and sent now.

The report is the reporter's: the console calls its `GET /reports/preview` and
`POST /reports/send` with the signed-in operator's own credential (kept in the
server-side session), so the reporter applies its own rules (admin to send, its
recipients, its SMTP server) and the browser never holds a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import HTMLResponse
from markupsafe import escape

from services.api.console.pages import form_fields, render, session_or_sign_in
from shared.auth import Role, csrf_ok

if TYPE_CHECKING:
    from shared.auth import Session

router = APIRouter(prefix="/console", include_in_schema=False)

# The preview is the reporter's document shown in a frame: no script, nothing loaded,
# framed by the console only.
PREVIEW_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
TIMEOUT_S = 30.0


def _reporter(request: Request) -> str:
    return str(request.app.state.runtime.settings.reporter_base_url)


async def _call(
    request: Request, session: Session, method: str, path: str, **kwargs: Any
) -> httpx.Response | str:
    """The reporter's answer, or why there is none (a sentence for the page)."""
    url = f"{_reporter(request)}{path}"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            return await client.request(
                method, url, headers={"Authorization": f"Bearer {session.credential}"}, **kwargs
            )
    except httpx.HTTPError as exc:
        return f"The reporter at {_reporter(request)} did not answer ({type(exc).__name__})."


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:200]
    if isinstance(detail, list):
        return "; ".join(str(item.get("message", item)) for item in detail)
    return str(detail)


async def _page(request: Request, session: Session, code: int = 200, **result: Any) -> Response:
    return render(
        request,
        "reports.html",
        code,
        page="reports",
        title="Reports",
        session=session,
        reporter=_reporter(request),
        may_send=session.principal.may(Role.ADMIN),
        **result,
    )


@router.get("/reports")
async def reports_page(request: Request) -> Response:
    session = await session_or_sign_in(request)
    if isinstance(session, Response):
        return session
    return await _page(request, session)


@router.get("/reports/preview")
async def report_preview(request: Request) -> Response:
    session = await session_or_sign_in(request)
    if isinstance(session, Response):
        return session
    answer = await _call(request, session, "GET", "/reports/preview")
    if isinstance(answer, str) or answer.status_code != 200:
        why = answer if isinstance(answer, str) else f"{answer.status_code}: {_detail(answer)}"
        return HTMLResponse(
            f"<!doctype html><p>No preview: {escape(why)}</p>",
            status_code=status.HTTP_502_BAD_GATEWAY,
            headers=PREVIEW_HEADERS,
        )
    return HTMLResponse(answer.text, headers=PREVIEW_HEADERS)


@router.post("/reports/send")
async def report_send(request: Request) -> Response:
    session = await session_or_sign_in(request)
    if isinstance(session, Response):
        return session
    form = await form_fields(request)
    if not csrf_ok(session, form.get("csrf")):
        return await _page(
            request,
            session,
            status.HTTP_403_FORBIDDEN,
            error="The form came without its CSRF token: use the button.",
        )
    if not session.principal.may(Role.ADMIN):
        return await _page(
            request,
            session,
            status.HTTP_403_FORBIDDEN,
            error=f"Sending the report needs the admin role (you are {session.principal.role}).",
        )
    to = form.get("to", "").strip()
    answer = await _call(
        request, session, "POST", "/reports/send", params={"to": to} if to else None
    )
    if isinstance(answer, str):
        return await _page(request, session, status.HTTP_502_BAD_GATEWAY, error=answer, to=to)
    if answer.status_code != 200:
        return await _page(request, session, answer.status_code, error=_detail(answer), to=to)
    return await _page(request, session, sent=answer.json())
