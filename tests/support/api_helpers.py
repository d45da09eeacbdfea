"""The admin API tests' helpers: the in-process client the `api` fixture yields, fresh
telephone numbers, the fields a 422 names."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from shared.db import create_engine

if TYPE_CHECKING:
    from shared.settings import Settings

AUTH = {"Authorization": "Bearer test-token"}


@dataclass
class ApiClient:
    http: Any
    settings: Settings
    app: Any

    async def table_counts(self) -> dict[str, int]:
        engine = create_engine(self.settings, application_name="tests")
        try:
            async with engine.connect() as conn:
                counts = {}
                for table in ("client", "tag", "client_tag", "mailing", "message", "outbox"):
                    counts[table] = (
                        await conn.execute(text(f"SELECT count(*) FROM {table}"))
                    ).scalar_one()
                return counts
        finally:
            await engine.dispose()


def phone() -> str:
    """A telephone no other test uses (random 10 digits after the 7)."""
    return f"7{random.randrange(10**9, 10**10):010d}"


def error_fields(body: dict[str, Any]) -> set[str]:
    detail = body["detail"]
    assert isinstance(detail, list), body
    return {item["field"] for item in detail}
