"""Shared fixtures' helpers for the admin API tests."""

from __future__ import annotations

import random
from typing import Any

AUTH = {"Authorization": "Bearer test-token"}


def phone() -> str:
    """A telephone no other test uses (random 10 digits after the 7)."""
    return f"7{random.randrange(10**9, 10**10):010d}"


def error_fields(body: dict[str, Any]) -> set[str]:
    detail = body["detail"]
    assert isinstance(detail, list), body
    return {item["field"] for item in detail}
