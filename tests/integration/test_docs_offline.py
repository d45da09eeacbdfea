"""Every service's /docs, /redoc and /asyncapi render in Chromium with no other host
reachable: their scripts and styles come from the service itself (shared/docs_pages.py).

Each service's real app is served by uvicorn in-process (its lifespan runs; PostgreSQL
and Kafka are absent, which the pages do not need). `offline_page` aborts every request
to another host and fails the test if one was attempted."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import expect

from tests.support.browser import serving
from tests.support.service_apps import KAFKA_SERVICES, SERVICES, offline_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI
    from playwright.async_api import Page


@pytest.fixture(params=list(SERVICES))
async def service(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, FastAPI, str]]:
    name: str = request.param
    app = SERVICES[name](offline_settings())
    async with serving(app) as base:
        yield name, app, base


@pytest.fixture
def page_errors(offline_page: Page) -> list[str]:
    """Script errors of the page: a renderer that throws has not rendered."""
    errors: list[str] = []
    offline_page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


async def test_swagger_ui_lists_the_operations(
    service: tuple[str, FastAPI, str], offline_page: Page, page_errors: list[str]
) -> None:
    _, app, base = service
    await offline_page.goto(f"{base}/docs")
    await expect(offline_page.locator(".information-container .title")).to_contain_text(app.title)
    await expect(offline_page.locator('.opblock-summary-path[data-path="/health"]')).to_be_visible()
    paths = json.loads(await (await offline_page.request.get(f"{base}/openapi.json")).text())
    rendered = await offline_page.locator(".opblock-summary-path").evaluate_all(
        "nodes => nodes.map(node => node.dataset.path)"
    )
    assert set(rendered) == set(paths["paths"])
    assert page_errors == []


async def test_redoc_shows_the_operations(
    service: tuple[str, FastAPI, str], offline_page: Page, page_errors: list[str]
) -> None:
    _, app, base = service
    await offline_page.goto(f"{base}/redoc")
    await expect(offline_page.locator("h1").first).to_contain_text(app.title)
    await expect(offline_page.get_by_role("button", name="get /health")).to_be_visible()
    assert page_errors == []


async def test_asyncapi_renders_the_channels(
    service: tuple[str, FastAPI, str], offline_page: Page, page_errors: list[str]
) -> None:
    name, app, base = service
    if name not in KAFKA_SERVICES:
        response = await offline_page.goto(f"{base}/asyncapi")
        assert response is not None
        assert response.status == 404  # the sandbox speaks HTTP only: no Kafka, no page
        return
    document = json.loads(await (await offline_page.request.get(f"{base}/asyncapi.json")).text())
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses
    await offline_page.goto(f"{base}/asyncapi")
    await expect(offline_page.locator("#introduction")).to_contain_text(app.title)
    for address in addresses:
        await expect(offline_page.get_by_text(address, exact=True).first).to_be_visible()
    assert page_errors == []
