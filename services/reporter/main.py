"""Composition root of the reporter: statistics, metrics and the daily email."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from services.reporter import daily, reconcile
from services.reporter.counters import Counters
from services.reporter.handlers import subscribe
from services.reporter.routes import reports
from shared.auth.checks import install_bearer_checks
from shared.logging import get_logger
from shared.service import create_service_app
from shared.settings import refuse_unsafe_credentials

if TYPE_CHECKING:
    from fastapi import FastAPI

    from services.reporter.daily import Clock
    from shared.service import Runtime, Setup, Start
    from shared.settings import Settings

log = get_logger(__name__)

DESCRIPTION = """
Aggregates message statuses per mailing and emails the daily statistics.

Consumes `message.status`: keeps the per-mailing counts by status that the API's
statistics read, and exports them as Prometheus gauges. Sends the daily report at
`REPORT_TIME` in `REPORT_TIMEZONE` to `REPORT_RECIPIENTS`; `POST /reports/send` sends
one now (`Authorization: Bearer <token>`, the admin API's tokens).
"""

TAGS = [{"name": "reports", "description": "The email report, on request."}]

GAUGE_INTERVAL_S = 10.0
PRUNE_INTERVAL_S = 3600.0


async def _maintain(counters: Counters, settings: Settings, started: asyncio.Event) -> None:
    """Refresh the gauges; now and then forget event ids past the retention."""
    await started.wait()
    retention = timedelta(hours=settings.processed_event_retention_h)
    loop = asyncio.get_running_loop()
    next_prune = loop.time()
    while True:
        try:
            await counters.refresh_gauges(datetime.now(UTC))
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_INTERVAL_S
                if pruned := await counters.prune(retention):
                    log.info("processed_events_pruned", count=pruned)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("reporter_maintenance_failed", error=repr(exc))
        await asyncio.sleep(GAUGE_INTERVAL_S)


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    refuse_unsafe_credentials(settings, signs_sessions=False)
    return create_service_app(
        service="reporter",
        settings=settings,
        title="Notifications: reporter",
        description=DESCRIPTION,
        routers=[reports.router],
        wire=functools.partial(wire, start_reports=daily.start(clock)),
        openapi_tags=TAGS,
    )


def wire(runtime: Runtime, *, start_reports: Setup) -> Start:
    """The reporter's parts and how they connect; returns the step that starts them."""
    settings = runtime.settings
    counters = Counters(runtime.sessions)
    subscribe(runtime, counters)

    async def start(app: FastAPI) -> None:
        install_bearer_checks(app, runtime)
        runtime.spawn(
            _maintain(counters, settings, runtime.broker_started), name="counter-maintenance"
        )
        if settings.reporter_reconcile_interval_s > 0:
            reconciler = reconcile.Reconciler(
                runtime.engine,
                runtime.sessions,
                settings,
                topic=runtime.topics.message_status,
                group=runtime.topics.group("reporter"),
            )
            runtime.spawn(
                reconcile.run(
                    reconciler, settings.reporter_reconcile_interval_s, runtime.broker_started
                ),
                name="counter-reconcile",
            )
        await start_reports(runtime, app)

    return start
