"""A route's own body limit (`max_body_bytes`) over the middleware's default, in-process.

Over real HTTP against the admin API: tests/integration/test_api_body_limit.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from fastapi import APIRouter, FastAPI, Request

from services.api.body_limit import BodyLimitMiddleware, max_body_bytes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def _limited_app() -> FastAPI:
    app = FastAPI()

    @app.post("/json")
    async def json_body(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    @app.post("/import")
    @max_body_bytes(10_000)
    async def bulk_import(request: Request) -> dict[str, int]:
        read = 0
        async for chunk in request.stream():
            read += len(chunk)
        return {"read": read}

    router = APIRouter(prefix="/clients")

    @router.post("/import/")
    @max_body_bytes(10_000)
    async def routed_import(request: Request) -> dict[str, int]:
        return await bulk_import(request)

    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, default=100)
    return app


async def test_a_route_can_have_its_own_limit() -> None:
    async def stream(size: int) -> AsyncIterator[bytes]:
        for _ in range(size // 500):
            yield b"x" * 500

    transport = httpx.ASGITransport(app=_limited_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/json", content=b"x" * 100)).json() == {"read": 100}
        assert (await client.post("/json", content=b"x" * 101)).status_code == 413
        assert (await client.post("/json", content=stream(1000))).status_code == 413

        assert (await client.post("/import", content=b"x" * 5000)).json() == {"read": 5000}
        assert (await client.post("/import", content=stream(10_000))).json() == {"read": 10_000}
        too_big = await client.post("/import", content=stream(10_500))
        assert too_big.status_code == 413
        assert too_big.json()["limit_bytes"] == 10_000


async def test_a_route_of_an_included_router_keeps_its_own_limit() -> None:
    transport = httpx.ASGITransport(app=_limited_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/clients/import/", content=b"x" * 5000)).json() == {"read": 5000}
        too_big = await client.post("/clients/import/", content=b"x" * 10_001)
        assert too_big.status_code == 413
        assert too_big.json()["limit_bytes"] == 10_000
