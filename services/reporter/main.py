"""Composition root of the reporter: statistics, metrics and the daily email."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from services.reporter.counters import Counters
from services.reporter.handlers import subscribe
from shared.logging import get_logger
from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.service import Runtime
    from shared.settings import Settings

log = get_logger(__name__)

DESCRIPTION = """
Aggregates message statuses per mailing and emails the daily statistics.

Consumes `message.status`: keeps the per-mailing counts by status that the API's
statistics read, and exports them as Prometheus gauges.
"""

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


def create_app(settings: Settings) -> FastAPI:
    parts: list[Counters] = []

    def wire(runtime: Runtime) -> None:
        counters = Counters(runtime.sessions)
        parts.append(counters)
        subscribe(runtime, counters)

    async def start(runtime: Runtime, app: FastAPI) -> None:
        runtime.spawn(
            _maintain(parts[-1], settings, runtime.broker_started), name="counter-maintenance"
        )

    return create_service_app(
        service="reporter",
        settings=settings,
        title="Notifications: reporter",
        description=DESCRIPTION,
        subscribe=wire,
        setup=start,
    )
