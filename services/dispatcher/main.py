"""Composition root of the dispatcher: sends messages through the SMS gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.settings import Settings

DESCRIPTION = """
Claims each message, calls the external SMS gateway and records the outcome.

Consumes `message.send` and its retry tiers; publishes retries, `message.send.dlq` and
`message.status`.
"""


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        service="dispatcher",
        settings=settings,
        title="Notifications: dispatcher",
        description=DESCRIPTION,
    )
