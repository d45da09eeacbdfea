"""Composition root of the scheduler: consumes mailing and client events, expands
audiences and fires due messages (PostgreSQL is the timer store)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.scheduler import redrive
from services.scheduler.handlers import subscribe
from services.scheduler.service import Scheduler
from shared.asyncapi import Published
from shared.kafka import ensure_topics
from shared.outbox import OutboxRelay
from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.service import Runtime
    from shared.settings import Settings

DESCRIPTION = """
Turns mailings into per-client timed send commands.

Consumes `mailing.events` and `client.events`; publishes `message.send` and, through
its outbox, `message.status`.
"""


def create_app(settings: Settings) -> FastAPI:
    parts: list[tuple[Scheduler, OutboxRelay]] = []

    def wire(runtime: Runtime) -> None:
        relay = OutboxRelay(
            runtime.sessions,
            runtime.broker,
            topics=runtime.topics.all(),
            service="scheduler",
            recreate_topics=lambda: ensure_topics(settings),
        )
        scheduler = Scheduler(
            runtime.sessions, runtime.broker, runtime.topics, settings, on_commit=relay.wake
        )
        parts.append((scheduler, relay))
        subscribe(runtime, scheduler)

    async def start(runtime: Runtime, app: FastAPI) -> None:
        scheduler, relay = parts[-1]
        app.state.scheduler = scheduler
        runtime.spawn(relay.run(runtime.broker_started), name="outbox-relay")
        runtime.spawn(scheduler.run(runtime.broker_started), name="scheduler")
        if settings.redrive_interval_s > 0:
            runtime.spawn(
                redrive.run(
                    redrive.Redrive(runtime.sessions, runtime.broker, runtime.topics, settings),
                    settings.redrive_interval_s,
                    runtime.broker_started,
                ),
                name="redrive",
            )

    return create_service_app(
        service="scheduler",
        settings=settings,
        title="Notifications: scheduler",
        description=DESCRIPTION,
        subscribe=wire,
        publishes=[Published.SEND_COMMANDS, Published.STATUS_EVENTS],
        setup=start,
    )
