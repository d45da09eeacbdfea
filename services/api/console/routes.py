"""Sign-in, sign-out and the console's pages (each needs a session; else to sign-in)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from services.api.console.pages import (
    form_fields,
    is_secure,
    render,
    to_sign_in,
    zones,
)
from shared.auth import (
    SESSION_COOKIE,
    ConsoleSessions,
    Principal,
    Role,
    Session,
    csrf_ok,
    dev_token_is_valid,
    dev_token_principal,
    request_session,
    sign_value,
    unsign_value,
)

SIGN_IN_CSRF_COOKIE = "console_signin_csrf"

router = APIRouter(prefix="/console", include_in_schema=False)


def _sign_in_page(request: Request, code: int = 200, error: str | None = None) -> HTMLResponse:
    """The form with a fresh CSRF value, mirrored in a signed cookie (double submit)."""
    settings = request.app.state.runtime.settings
    csrf = secrets.token_urlsafe(24)
    response = render("sign_in.html", code, csrf=csrf, error=error, page="sign-in", title="Sign in")
    response.set_cookie(
        SIGN_IN_CSRF_COOKIE,
        sign_value(settings, csrf),
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
        path="/console/",
    )
    return response


@router.get("/sign-in")
async def sign_in_form(request: Request) -> Response:
    if await request_session(request) is not None:
        return RedirectResponse("/console/mailings", status_code=status.HTTP_303_SEE_OTHER)
    return _sign_in_page(request)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    settings = request.app.state.runtime.settings
    form = await form_fields(request)
    expected = unsign_value(settings, request.cookies.get(SIGN_IN_CSRF_COOKIE, ""))
    given = form.get("csrf", "")
    if expected is None or not secrets.compare_digest(given.encode(), expected.encode()):
        return _sign_in_page(
            request,
            status.HTTP_403_FORBIDDEN,
            "The form expired or came from elsewhere: try again.",
        )
    token = form.get("token", "")
    if not token or not dev_token_is_valid(settings, token):
        return _sign_in_page(request, status.HTTP_401_UNAUTHORIZED, "That token is not valid.")
    return await _signed_in(request, dev_token_principal(token), token)


async def _signed_in(
    request: Request, principal: Principal, credential: str, **tokens: Any
) -> Response:
    """Open a session for `principal` and send the browser to the mailings."""
    store: ConsoleSessions = request.app.state.console_sessions
    cookie, _ = await store.open(principal, credential, **tokens)
    response = RedirectResponse("/console/mailings", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=request.app.state.runtime.settings.console_session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
        path="/",
    )
    response.delete_cookie(SIGN_IN_CSRF_COOKIE, path="/console/")
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    session = await request_session(request)
    form = await form_fields(request)
    if session is not None and not csrf_ok(session, form.get("csrf")):
        return render(
            "message.html",
            status.HTTP_403_FORBIDDEN,
            page="error",
            title="Not signed out",
            message="The sign-out form came without its CSRF token: use the button.",
            session=session,
        )
    if session is not None:
        store: ConsoleSessions = request.app.state.console_sessions
        await store.close(request.cookies.get(SESSION_COOKIE, ""))
    response = to_sign_in()
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
            "message.html",
            status.HTTP_403_FORBIDDEN,
            page="error",
            title="Not for your role",
            message=f"This page needs the {needs} role; you are {session.principal.role}.",
            session=session,
        )
    return render(template, page=page, session=session, **context)


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
