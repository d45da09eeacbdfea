"""Request bodies over API_MAX_BODY_BYTES: 413 before the body is read, nothing written.

Over real HTTP against the admin API served by uvicorn: a raw socket sends exactly what
each case needs (a Content-Length the body never follows; a chunked body cut off past
the limit), so the answer shows the server did not wait for, or read, the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

import httpx
import uvicorn

from services.api.main import create_app
from tests.support.api_helpers import ApiClient, phone
from tests.support.infra import make_settings
from tests.support.polling import eventually
from tools.infra import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.infra import Infra

LIMIT = 64 * 1024
TOKEN = "body-token"


@contextlib.asynccontextmanager
async def _served(infra: Infra) -> AsyncIterator[tuple[int, ApiClient]]:
    settings = make_settings(infra, api_tokens=TOKEN, api_max_body_bytes=LIMIT)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        await eventually(
            lambda: asyncio.sleep(0, server.started), bool, timeout=60, what="uvicorn started"
        )
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        ) as http:
            yield port, ApiClient(http, settings, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


async def _raw(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send `head` and `body` as they are, read the response to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 30)) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        content = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 30)
        return int(status_line.split()[1]), headers, content
    finally:
        writer.close()


def _head(port: int, extra: str) -> bytes:
    return (
        f"POST /api/v1/clients/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


async def test_declared_length_over_the_limit_is_413_without_reading_the_body(
    infra: Infra,
) -> None:
    async with _served(infra) as (port, api):
        before = await api.table_counts()
        # 50 MB announced, not one byte of it sent: the answer cannot wait for the body.
        status, headers, content = await _raw(port, _head(port, "Content-Length: 50000000\r\n"))
        assert status == 413
        assert headers["content-type"] == "application/json"
        error = json.loads(content)
        assert error["limit_bytes"] == LIMIT
        assert "API_MAX_BODY_BYTES" in error["detail"]
        assert str(LIMIT) in error["detail"]
        assert await api.table_counts() == before

        # The server goes on serving; a body within the limit is taken.
        created = await api.http.post("/api/v1/clients/", json={"telephone": phone()})
        assert created.status_code == 201, created.text


async def test_chunked_body_is_cut_off_with_413_once_it_passes_the_limit(infra: Infra) -> None:
    async with _served(infra) as (port, api):
        before = await api.table_counts()
        # A JSON body that would be valid, streamed without Content-Length, past the
        # limit, and never finished (no last chunk): the 413 comes while it streams.
        document = b'{"telephone": "%s", "tag": ["%s"]}' % (phone().encode(), b"x" * LIMIT)
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(piece), piece)
            for piece in (document[i : i + 8192] for i in range(0, LIMIT + 8192, 8192))
        )
        status, _, content = await _raw(port, _head(port, "Transfer-Encoding: chunked\r\n"), chunks)
        assert status == 413
        assert json.loads(content)["limit_bytes"] == LIMIT
        assert await api.table_counts() == before
