"""The browser harness: Playwright for Python driving Debian's Chromium, offline.

Fixtures (registered for the whole suite by tests/conftest.py):

* ``browser`` (session): one headless Chromium for the run, found or installed by
  :func:`tools.chromium.ensure_chromium` (``/usr/bin/chromium``; as root a missing one is
  installed with ``apt-get install -y chromium``; never Playwright's browser download).
* ``offline_page``: a fresh context and page in which every request to a host other than
  127.0.0.1 / localhost / ::1 is aborted and recorded (``external_requests``); the test
  fails when any was attempted, so a page that would load a CDN asset cannot pass.

Playwright's async API: the tests are ``async def`` and share the session's event loop
with the other async fixtures (``api``, the services)::

    async def test_docs(offline_page: Page) -> None:
        await offline_page.goto(f"{base}/docs")
        await expect(offline_page.get_by_text("/health")).to_be_visible()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from tests.support.polling import eventually
from tools.chromium import ensure_chromium
from tools.infra import LOCALHOST, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from playwright.async_api import Browser, Page, Request, Route, WebSocketRoute
    from starlette.types import ASGIApp

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# Pages that do not render within this fail at the first assertion, not at the 300 s
# test timeout. Not a measurement: a ceiling for a page on this machine.
DEFAULT_TIMEOUT_MS = 15_000


def is_local(url: str) -> bool:
    """True for URLs that stay on this machine (and for data:/blob:/about: ones)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return (parts.hostname or "") in LOCAL_HOSTS


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    executable = ensure_chromium()
    # Root (containers, CI) cannot use Chromium's user-namespace sandbox.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=args
        )
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
def external_requests() -> list[str]:
    """The non-local URLs the test's ``offline_page`` tried to reach (aborted)."""
    return []


@pytest_asyncio.fixture(loop_scope="session")
async def offline_page(browser: Browser, external_requests: list[str]) -> AsyncIterator[Page]:
    # Service workers could fetch outside the routing below: none are allowed.
    context = await browser.new_context(service_workers="block")
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)

    async def route(route: Route, request: Request) -> None:
        if is_local(request.url):
            await route.continue_()
        else:
            external_requests.append(request.url)
            await route.abort("internetdisconnected")

    async def websocket(socket: WebSocketRoute) -> None:
        if is_local(socket.url):
            socket.connect_to_server()
        else:
            external_requests.append(socket.url)
            await socket.close(code=1008, reason="offline test")

    await context.route("**/*", route)
    await context.route_web_socket("**/*", websocket)
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()
    if external_requests:
        listed = "\n  ".join(dict.fromkeys(external_requests))
        pytest.fail(f"the page tried to reach hosts other than this machine:\n  {listed}")


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, *, lifespan: bool = True) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free port of 127.0.0.1, in this event loop;
    yields its base URL (``http://127.0.0.1:PORT``). For pages a browser must load."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host=LOCALHOST, port=port, lifespan="on" if lifespan else "off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():  # failed to start: raise its error rather than wait
            task.result()
        return server.started

    try:
        await eventually(started, bool, timeout=60, interval=0.05, what=f"uvicorn on {port}")
        yield f"http://{LOCALHOST}:{port}"
    finally:
        server.should_exit = True
        await task
