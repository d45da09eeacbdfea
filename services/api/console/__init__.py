"""The operator console: server-rendered pages at /console/ over the admin API.

The pages are Jinja2 templates; their script (static/console.js, no build step, no
third-party code) calls the REST API (/api/v1/...) with the session cookie sign-in sets
(shared/auth), so every write goes through the API's own routes. Every asset is
served from this package: nothing is loaded from another host.
"""

from fastapi import APIRouter

from services.api.console import provider_login, reports, routes
from services.api.console.pages import STATIC

router = APIRouter()
router.include_router(routes.router)
router.include_router(reports.router)
router.include_router(provider_login.router)

__all__ = ["STATIC", "router"]
