"""Composition root of the admin API: clients, mailings, statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.settings import Settings

DESCRIPTION = """
Clients and mailings for operators and integrations.
"""


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        service="api",
        settings=settings,
        title="Notifications: admin API",
        description=DESCRIPTION,
    )
