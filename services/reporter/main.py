"""Composition root of the reporter: statistics, metrics and the daily email."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.reporter import daily
from services.reporter.routes import reports
from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from services.reporter.daily import Clock
    from shared.settings import Settings

DESCRIPTION = """
Aggregates message statuses per mailing and emails the daily statistics.

Consumes `message.status`. Sends the daily report at `REPORT_TIME` in
`REPORT_TIMEZONE` to `REPORT_RECIPIENTS`; `POST /reports/send` sends one now
(`Authorization: Bearer <token>`, the admin API's tokens).
"""

TAGS = [{"name": "reports", "description": "The email report, on request."}]


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    return create_service_app(
        service="reporter",
        settings=settings,
        title="Notifications: reporter",
        description=DESCRIPTION,
        routers=[reports.router],
        setup=daily.start(clock),
        openapi_tags=TAGS,
    )
