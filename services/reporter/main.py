"""Composition root of the reporter: statistics, metrics and the daily email."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.settings import Settings

DESCRIPTION = """
Aggregates message statuses per mailing and emails the daily statistics.

Consumes `message.status`.
"""


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        service="reporter",
        settings=settings,
        title="Notifications: reporter",
        description=DESCRIPTION,
    )
