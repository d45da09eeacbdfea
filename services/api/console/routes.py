"""Sign-in, sign-out and the console's pages (each needs a session; else to sign-in)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse

from services.api.console.pages import (
    SIGN_IN_CSRF_COOKIE,
    form_fields,
    open_session,
    render,
    sign_in_page,
    to_sign_in,
    zones,
)
from services.api.console.provider_login import end_session_url
from shared.auth import (
    SESSION_COOKIE,
    ConsoleSessions,
    Principal,
    Role,
    Session,
    csrf_ok,
    principal_for,
    request_session,
    unsign_value,
)

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/sign-in", name="sign_in_form")
async def sign_in_form(request: Request) -> Response:
    if await request_session(request) is not None:
        return RedirectResponse("/console/mailings", status_code=status.HTTP_303_SEE_OTHER)
    return sign_in_page(request)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    settings = request.app.state.runtime.settings
    form = await form_fields(request)
    expected = unsign_value(settings, request.cookies.get(SIGN_IN_CSRF_COOKIE, ""))
    given = form.get("csrf", "")
    if expected is None or not secrets.compare_digest(given.encode(), expected.encode()):
        return sign_in_page(
            request,
            status.HTTP_403_FORBIDDEN,
            "The form expired or came from elsewhere: try again.",
        )
    token = form.get("token", "").strip()
    principal = await _token_principal(request, token)
    if principal is None:
        return sign_in_page(request, status.HTTP_401_UNAUTHORIZED, "That token is not valid.")
    return await open_session(request, principal, token)


async def _token_principal(request: Request, token: str) -> Principal | None:
    """Who a pasted credential is (an API key, or a development token in development
    mode), or None when it is refused."""
    if not token:
        return None
    try:
        return await principal_for(request, token)
    except HTTPException:
        return None


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    session = await request_session(request)
    form = await form_fields(request)
    if session is not None and not csrf_ok(session, form.get("csrf")):
        return render(
            request,
            "message.html",
            status.HTTP_403_FORBIDDEN,
            page="error",
            title="Not signed out",
            message="The sign-out form came without its CSRF token: use the button.",
            session=session,
        )
    elsewhere = None
    if session is not None:
        store: ConsoleSessions = request.app.state.console_sessions
        await store.close(request.cookies.get(SESSION_COOKIE, ""))
        elsewhere = await end_session_url(request, session)
    # Signed out here; then at the provider too, which sends the browser back to sign-in.
    response: Response = (
        RedirectResponse(elsewhere, status_code=status.HTTP_303_SEE_OTHER)
        if elsewhere
        else to_sign_in()
    )
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def _page(
    request: Request, template: str, page: str, needs: Role = Role.VIEWER, **context: Any
) -> Response:
    session: Session | None = await request_session(request)
    if session is None:
        return to_sign_in()
    if not session.principal.may(needs):
        return render(
            request,
            "message.html",
            status.HTTP_403_FORBIDDEN,
            page="error",
            title="Not for your role",
            message=f"This page needs the {needs} role; you are {session.principal.role}.",
            session=session,
        )
    return render(request, template, page=page, session=session, **context)


@router.get("/")
async def home(request: Request) -> Response:
    if await request_session(request) is None:
        return to_sign_in()
    return RedirectResponse("/console/mailings", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/mailings")
async def mailings_page(request: Request) -> Response:
    return await _page(request, "mailings.html", "mailings", title="Mailings")


@router.get("/mailings/new")
async def new_mailing_page(request: Request) -> Response:
    return await _page(
        request,
        "mailing_form.html",
        "mailing-form",
        title="New mailing",
        needs=Role.OPERATOR,
        mailing_id=None,
        zones=zones(),
    )


@router.get("/mailings/{mailing_id}")
async def mailing_page(request: Request, mailing_id: int) -> Response:
    return await _page(
        request, "mailing.html", "mailing", title=f"Mailing {mailing_id}", mailing_id=mailing_id
    )


@router.get("/mailings/{mailing_id}/edit")
async def edit_mailing_page(request: Request, mailing_id: int) -> Response:
    return await _page(
        request,
        "mailing_form.html",
        "mailing-form",
        title=f"Edit mailing {mailing_id}",
        needs=Role.OPERATOR,
        mailing_id=mailing_id,
        zones=zones(),
    )


@router.get("/clients")
async def clients_page(request: Request) -> Response:
    return await _page(request, "clients.html", "clients", title="Clients", zones=zones())
