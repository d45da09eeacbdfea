"""/docs, /redoc and /asyncapi of every service name only assets the service serves.

(The pages rendered in Chromium with no other host reachable:
tests/integration/test_docs_offline.py.)"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from shared import docs_pages
from tests.support.service_apps import KAFKA_SERVICES, SERVICES, offline_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


async def http_client(service: str) -> AsyncIterator[AsyncClient]:
    app = SERVICES[service](offline_settings())
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://service") as http,
    ):
        yield http


@pytest.fixture(params=list(SERVICES))
def service(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def client(service: str) -> AsyncIterator[AsyncClient]:
    async for http in http_client(service):
        yield http


async def test_every_page_and_asset_comes_from_the_service(
    service: str, client: AsyncClient
) -> None:
    pages = ["/docs", "/redoc"] + (["/asyncapi"] if service in KAFKA_SERVICES else [])
    for page in pages:
        response = await client.get(page)
        assert response.status_code == 200, page
        assert response.headers["content-type"].startswith("text/html")
        references = [a or b for a, b in REFERENCE.findall(response.text)]
        assert references, page
        for reference in references:
            assert reference.startswith(("/", "data:")), f"{page} names {reference}"
            if reference.startswith("/"):
                asset = await client.get(reference)
                assert asset.status_code == 200, f"{page}: {reference}"
        if page != "/asyncapi":  # that page embeds the document, which may name URLs
            assert not re.search(r"https?://", response.text), page


async def test_swagger_ui_has_no_validator_badge(client: AsyncClient) -> None:
    """Swagger UI's default validator badge is an image from a public host."""
    page = (await client.get("/docs")).text
    assert '"validatorUrl": null' in page


async def test_redoc_loads_images_from_the_service_only(client: AsyncClient) -> None:
    """ReDoc's bundle shows Redocly's logo from their CDN; the policy keeps it out."""
    response = await client.get("/redoc")
    assert response.headers["content-security-policy"] == "img-src 'self' data:"


@pytest.mark.parametrize("service", list(KAFKA_SERVICES))
async def test_asyncapi_page_renders_with_the_local_bundle(service: str) -> None:
    async for http in http_client(service):
        page = (await http.get("/asyncapi")).text
        assert '<script src="/assets/asyncapi/asyncapi-standalone.js"></script>' in page
        assert '<link rel="stylesheet" href="/assets/asyncapi/asyncapi.min.css">' in page
        script = await http.get("/assets/asyncapi/asyncapi-standalone.js")
        assert "AsyncApiStandalone" in script.text
        assert script.headers["content-type"].startswith(
            ("text/javascript", "application/javascript")
        )


def test_the_document_cannot_close_the_script_it_is_embedded_in() -> None:
    document = '{"info": {"title": "t", "description": "</script><script>alert(1)</script>"}}'
    page = docs_pages.asyncapi_html(document, "t")
    assert page.count("</script>") == 2  # the bundle's and the render call's
    assert "\\u003c/script>\\u003cscript>alert(1)\\u003c/script>" in page


async def test_without_the_renderer_the_page_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docs_pages, "ASYNCAPI_ASSETS", tmp_path)
    async for http in http_client("api"):
        page = await http.get("/asyncapi")
        assert page.status_code == 503
        assert "python -m tools.web_assets" in page.text
        assert (await http.get("/asyncapi.json")).status_code == 200
