"""API keys in the integration tests: apps served in-process, keys created through the
API (as an admin would), a client acting with a key."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import httpx
from asgi_lifespan import LifespanManager

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

DEV_ADMIN = {"Authorization": "Bearer test-token"}


@contextlib.asynccontextmanager
async def served(
    app: FastAPI, base_url: str = "http://testserver"
) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan run and an HTTP client on it (no credential by default)."""
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url=base_url
        ) as http,
    ):
        yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_key(
    http: httpx.AsyncClient, role: str, *, name: str | None = None, as_: dict[str, str] = DEV_ADMIN
) -> dict[str, Any]:
    response = await http.post(
        "/api/v1/api-keys/", json={"name": name or unique(role), "role": role}, headers=as_
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
