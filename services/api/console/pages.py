"""What every console page shares: the templates, the security headers, forms, and the
session a page needs (else the browser goes to sign-in)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from zoneinfo import available_timezones

from fastapi import Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shared.auth import request_session

if TYPE_CHECKING:
    from shared.auth import Session

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


def render(
    name: str, code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    html = _templates.get_template(name).render(pages=PAGES, **context)
    return HTMLResponse(html, status_code=code, headers=headers or SECURITY_HEADERS)


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
