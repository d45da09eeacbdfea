"""The documentation pages of every service, with every asset served by the service.

`/docs` (Swagger UI), `/redoc` (ReDoc) and `/asyncapi` (the AsyncAPI renderer) load their
scripts and stylesheets from `/assets/...` on the same service, never from a public CDN:
operators' networks are often closed, and a page that needs the internet is blank there.

* Swagger UI and ReDoc: the files of the PyPI package `fastapi-offline` (a dependency).
* The AsyncAPI renderer: the standalone bundle of the npm package
  `@asyncapi/react-component`, unpacked into `shared/static/asyncapi/` at install and
  build time by `python -m tools.web_assets` (`make venv`, the Dockerfile). Without it
  `/asyncapi` answers 503 naming that command (`/asyncapi.json` still works).
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # noqa: TC002 (FastAPI reads the routes' signatures)
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse  # noqa: TC002 (the routes' return type, read)
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/assets"
SWAGGER_ASSETS = Path(str(files("fastapi_offline") / "static"))
ASYNCAPI_ASSETS = Path(__file__).resolve().parent / "static" / "asyncapi"
ASYNCAPI_FILES = {"js": "asyncapi-standalone.js", "css": "asyncapi.min.css"}
# No favicon request at all (the browser would otherwise ask for /favicon.ico).
NO_FAVICON = "data:,"

# What the renderer shows (as FastStream's own page configures it).
ASYNCAPI_CONFIG: dict[str, Any] = {
    "show": {
        "sidebar": True,
        "info": True,
        "servers": True,
        "operations": True,
        "messages": True,
        "schemas": True,
        "errors": True,
    },
    "expand": {"messageExamples": True},
    "sidebar": {"showServers": "byDefault", "showOperations": "byDefault"},
}


def install_docs(app: FastAPI) -> None:
    """Serve `/docs`, `/docs/oauth2-redirect`, `/redoc` and the assets of every page.

    The app must be created with `docs_url=None, redoc_url=None` (FastAPI's own pages
    load Swagger UI and ReDoc from a CDN)."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the app with docs_url=None, redoc_url=None")
    app.mount(f"{ASSETS_URL}/docs", StaticFiles(directory=SWAGGER_ASSETS), name="docs-assets")
    app.mount(
        f"{ASSETS_URL}/asyncapi",
        StaticFiles(directory=ASYNCAPI_ASSETS, check_dir=False),
        name="asyncapi-assets",
    )
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{ASSETS_URL}/docs/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/docs/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/docs/favicon.png",
            # Swagger UI's default validator badge is an image from a public host.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/docs/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/docs/favicon.png",
            with_google_fonts=False,
        )
        # ReDoc's sidebar footer shows Redocly's logo from their CDN: images from this
        # service only, so the page never reaches out (the footer link stays).
        page.headers["Content-Security-Policy"] = "img-src 'self' data:"
        return page


def asyncapi_assets_missing() -> list[str]:
    """The renderer's files that are not installed (empty when it can render)."""
    return [name for name in ASYNCAPI_FILES.values() if not (ASYNCAPI_ASSETS / name).is_file()]


def asyncapi_html(document_json: str, title: str, root_path: str = "") -> str:
    """The page rendering an AsyncAPI document (JSON text) with the local renderer."""
    # JSON inside <script>: "<" escaped so no string in the document can close the tag.
    options = json.dumps({"schema": json.loads(document_json), "config": ASYNCAPI_CONFIG})
    options = options.replace("<", "\\u003c")
    assets = f"{root_path}{ASSETS_URL}/asyncapi"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)} AsyncAPI</title>
<link rel="icon" href="{NO_FAVICON}">
<link rel="stylesheet" href="{assets}/{ASYNCAPI_FILES["css"]}">
<style>
html {{ font-family: ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, "Noto Sans", sans-serif; line-height: 1.5; }}
</style>
</head>
<body>
<div id="asyncapi"></div>
<script src="{assets}/{ASYNCAPI_FILES["js"]}"></script>
<script>
window.AsyncApiStandalone.render({options}, document.getElementById("asyncapi"));
</script>
</body>
</html>"""


def asyncapi_unavailable_html() -> str:
    missing = ", ".join(asyncapi_assets_missing())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>AsyncAPI renderer not installed</title>
<link rel="icon" href="{NO_FAVICON}"></head>
<body><h1>AsyncAPI renderer not installed</h1>
<p>Missing in {html.escape(str(ASYNCAPI_ASSETS))}: {html.escape(missing)}. Install it with
<code>python -m tools.web_assets</code> (<code>make venv</code> does). The document itself:
<a href="asyncapi.json">asyncapi.json</a>.</p></body></html>"""
