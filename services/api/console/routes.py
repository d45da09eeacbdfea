"""Sign-in, sign-out and the console's pages (each needs a session; else to sign-in)."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import available_timezones

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shared.auth import (
    SESSION_COOKIE,
    Role,
    Session,
    csrf_ok,
    dev_token_is_valid,
    dev_token_principal,
    new_session,
    request_session,
    sign_value,
    unsign_value,
)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
SIGN_IN_CSRF_COOKIE = "console_signin_csrf"
# The form carrying a token is small; anything larger is not ours.
FORM_MAX_BYTES = 8192
# No script, style or image from anywhere but this service; no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

router = APIRouter(prefix="/console", include_in_schema=False)

PAGES = {
    "mailings": "Mailings",
    "clients": "Clients",
    "reports": "Reports",
    "audit": "Audit",
    "api-keys": "API keys",
}
# Pages a role below this cannot use: not in its navigation, and a 403 page saying so.
PAGE_ROLES = {"audit": Role.OPERATOR, "api-keys": Role.ADMIN}


def _pages(session: Session | None) -> dict[str, str]:
    if session is None:
        return PAGES
    return {
        key: label
        for key, label in PAGES.items()
        if key not in PAGE_ROLES or session.principal.may(PAGE_ROLES[key])
    }


@lru_cache(maxsize=1)
def zones() -> list[str]:
    return sorted(available_timezones())


def _render(name: str, code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(pages=_pages(context.get("session")), **context)
    return HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        return {}
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {key: values[0] for key, values in parsed.items()}


def _sign_in_page(request: Request, code: int = 200, error: str | None = None) -> HTMLResponse:
    """The form with a fresh CSRF value, mirrored in a signed cookie (double submit)."""
    settings = request.app.state.runtime.settings
    csrf = secrets.token_urlsafe(24)
    response = _render(
        "sign_in.html", code, csrf=csrf, error=error, page="sign-in", title="Sign in"
    )
    response.set_cookie(
        SIGN_IN_CSRF_COOKIE,
        sign_value(settings, csrf),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/console/",
    )
    return response


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse("/console/sign-in", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/sign-in")
async def sign_in_form(request: Request) -> Response:
    if request_session(request) is not None:
        return RedirectResponse("/console/mailings", status_code=status.HTTP_303_SEE_OTHER)
    return _sign_in_page(request)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    settings = request.app.state.runtime.settings
    form = await _form(request)
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
    cookie, _ = new_session(settings, dev_token_principal(token), token=token)
    response = RedirectResponse("/console/mailings", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=settings.console_session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(SIGN_IN_CSRF_COOKIE, path="/console/")
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    session = request_session(request)
    form = await _form(request)
    if session is not None and not csrf_ok(session, form.get("csrf")):
        return _render(
            "message.html",
            status.HTTP_403_FORBIDDEN,
            page="error",
            title="Not signed out",
            message="The sign-out form came without its CSRF token: use the button.",
            session=session,
        )
    response = _to_sign_in()
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _page(request: Request, template: str, page: str, **context: Any) -> Response:
    session: Session | None = request_session(request)
    if session is None:
        return _to_sign_in()
    needed = PAGE_ROLES.get(page)
    if needed is not None and not session.principal.may(needed):
        return _render(
            "message.html",
            status.HTTP_403_FORBIDDEN,
            page=page,
            title=context.get("title", "Not allowed"),
            message=f"This page needs the {needed} role; you are signed in as "
            f"{session.principal.actor} with the {session.principal.role} role.",
            session=session,
        )
    return _render(template, page=page, session=session, **context)


@router.get("/")
async def home(request: Request) -> Response:
    if request_session(request) is None:
        return _to_sign_in()
    return RedirectResponse("/console/mailings", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/mailings")
async def mailings_page(request: Request) -> Response:
    return _page(request, "mailings.html", "mailings", title="Mailings")


@router.get("/mailings/new")
async def new_mailing_page(request: Request) -> Response:
    return _page(
        request,
        "mailing_form.html",
        "mailing-form",
        title="New mailing",
        mailing_id=None,
        zones=zones(),
    )


@router.get("/mailings/{mailing_id}")
async def mailing_page(request: Request, mailing_id: int) -> Response:
    return _page(
        request, "mailing.html", "mailing", title=f"Mailing {mailing_id}", mailing_id=mailing_id
    )


@router.get("/mailings/{mailing_id}/edit")
async def edit_mailing_page(request: Request, mailing_id: int) -> Response:
    return _page(
        request,
        "mailing_form.html",
        "mailing-form",
        title=f"Edit mailing {mailing_id}",
        mailing_id=mailing_id,
        zones=zones(),
    )


@router.get("/clients")
async def clients_page(request: Request) -> Response:
    return _page(request, "clients.html", "clients", title="Clients", zones=zones())


@router.get("/reports")
async def reports_page(request: Request) -> Response:
    return _page(request, "reports.html", "reports", title="Reports")


@router.get("/audit")
async def audit_page(request: Request) -> Response:
    return _page(request, "audit.html", "audit", title="Audit")


@router.get("/api-keys")
async def api_keys_page(request: Request) -> Response:
    return _page(request, "api_keys.html", "api-keys", title="API keys")
