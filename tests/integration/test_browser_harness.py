"""The browser harness itself: Debian's Chromium runs, local pages load, and a page that
reaches for another host is stopped and fails its test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.support.browser import is_local, serving
from tests.support.infra import REPO

if TYPE_CHECKING:
    from pathlib import Path

    from playwright.async_api import Browser, Page
    from starlette.requests import Request

CDN_SCRIPT = "https://cdn.example.com/lib.js"
PAGE = f"""<!DOCTYPE html>
<html><head><title>harness</title>
<script src="{CDN_SCRIPT}"></script>
<script src="/local.js"></script>
</head><body><h1 id="title">waiting</h1></body></html>"""


async def page(_: Request) -> Response:
    return HTMLResponse(PAGE)


async def local_js(_: Request) -> Response:
    script = "document.addEventListener('DOMContentLoaded', () => {"
    script += " document.getElementById('title').textContent = 'local script ran'; });"
    return Response(script, media_type="text/javascript")


APP = Starlette(routes=[Route("/", page), Route("/local.js", local_js)])


def test_local_urls_are_told_from_the_others() -> None:
    assert is_local("http://127.0.0.1:8000/docs")
    assert is_local("http://localhost/x")
    assert is_local("http://[::1]:9/")
    assert is_local("data:image/png;base64,AAAA")
    assert not is_local("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js")
    assert not is_local("wss://example.com/socket")


async def test_chromium_is_debians_headless_build(browser: Browser) -> None:
    assert browser.is_connected()
    assert int(browser.version.split(".")[0]) >= 100


async def test_local_requests_load_and_external_ones_are_aborted_and_recorded(
    offline_page: Page, external_requests: list[str]
) -> None:
    async with serving(APP) as base:
        await offline_page.goto(base + "/")
        assert await offline_page.inner_text("#title") == "local script ran"
    assert external_requests == [CDN_SCRIPT]
    external_requests.clear()  # seen: this test expects it; the next test shows the failure


def test_a_page_reaching_another_host_fails_its_test(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.support.browser"]\n')
    (tmp_path / "test_cdn.py").write_text(
        textwrap.dedent(
            f"""
            async def test_cdn(offline_page):
                await offline_page.set_content('<img src="{CDN_SCRIPT}">')
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=session",
         "-o", "asyncio_default_test_loop_scope=session", str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 passed, 1 error" in output, output
    assert "the page tried to reach hosts other than this machine" in output, output
    assert CDN_SCRIPT in output, output
