"""Composition root of the scheduler: consumes mailing and client events, expands
audiences and fires due messages (PostgreSQL is the timer store)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.settings import Settings

DESCRIPTION = """
Turns mailings into per-client timed send commands.

Consumes `mailing.events` and `client.events`; publishes `message.send`.
"""


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        service="scheduler",
        settings=settings,
        title="Notifications: scheduler",
        description=DESCRIPTION,
    )
