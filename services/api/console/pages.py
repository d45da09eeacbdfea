"""What every console page shares: the templates, the security headers, forms, and the
session a page needs (else the browser goes to sign-in)."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import available_timezones

from fastapi import Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shared.auth import (
    SESSION_COOKIE,
    ConsoleSessions,
    Principal,
    request_session,
    sign_value,
)

if TYPE_CHECKING:
    from shared.auth import Session

SIGN_IN_CSRF_COOKIE = "console_signin_csrf"
HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
# The console's forms are small; anything larger is not ours.
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

PAGES = {
    "mailings": "Mailings",
    "clients": "Clients",
    "reports": "Reports",
}


@lru_cache(maxsize=1)
def zones() -> list[str]:
    return sorted(available_timezones())


def security_headers(request: Request) -> dict[str, str]:
    """SECURITY_HEADERS; forms may also lead to the identity provider (sign-out there)."""
    verifier = getattr(request.app.state, "oidc", None)
    if verifier is None:
        return SECURITY_HEADERS
    parts = urlsplit(verifier.issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    policy = SECURITY_HEADERS["Content-Security-Policy"].replace(
        "form-action 'self'", f"form-action 'self' {origin}"
    )
    return {**SECURITY_HEADERS, "Content-Security-Policy": policy}


def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(pages=PAGES, **context)
    return HTMLResponse(html, status_code=code, headers=security_headers(request))


def is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def form_fields(request: Request) -> dict[str, str]:
    """A small urlencoded form's fields (first value each); {} for anything else."""
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        return {}
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {key: values[0] for key, values in parsed.items()}


def to_sign_in() -> RedirectResponse:
    return RedirectResponse("/console/sign-in", status_code=status.HTTP_303_SEE_OTHER)


async def session_or_sign_in(request: Request) -> Session | Response:
    """The page's session, or the redirect to sign-in to answer with."""
    session = await request_session(request)
    return session if session is not None else to_sign_in()


def sign_in_page(request: Request, code: int = 200, error: str | None = None) -> HTMLResponse:
    """The form with a fresh CSRF value, mirrored in a signed cookie (double submit)."""
    settings = request.app.state.runtime.settings
    csrf = secrets.token_urlsafe(24)
    response = render(
        request,
        "sign_in.html",
        code,
        csrf=csrf,
        error=error,
        page="sign-in",
        title="Sign in",
        provider=settings.oidc_enabled,
        tokens=settings.dev_mode,
    )
    response.set_cookie(
        SIGN_IN_CSRF_COOKIE,
        sign_value(settings, csrf),
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
        path="/console/",
    )
    return response


async def open_session(
    request: Request,
    principal: Principal,
    credential: str,
    *,
    from_elsewhere: bool = False,
    **tokens: Any,
) -> Response:
    """Open a session for `principal` and send the browser to the mailings.

    `from_elsewhere`: the request came by the identity provider's redirect. The next
    page is then reached from a page of ours (a meta refresh), so the browser sends the
    SameSite=Strict cookie with it whatever site the provider is on."""
    store: ConsoleSessions = request.app.state.console_sessions
    cookie, _ = await store.open(principal, credential, **tokens)
    response: Response
    if from_elsewhere:
        response = render(
            request, "signed_in.html", page="signed-in", title="Signed in", actor=principal.actor
        )
    else:
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
