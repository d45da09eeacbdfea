"""Composition root of the scheduler: consumes mailing and client events, expands
audiences and fires due messages (PostgreSQL is the timer store)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.scheduler import redrive
from services.scheduler.handlers import subscribe
from services.scheduler.service import Scheduler
from shared.asyncapi import Published
from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.service import Runtime, Start
    from shared.settings import Settings

DESCRIPTION = """
Turns mailings into per-client timed send commands.

Consumes `mailing.events` and `client.events`; publishes `message.send` and, through
its outbox, `message.status`.
"""


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        service="scheduler",
        settings=settings,
        title="Notifications: scheduler",
        description=DESCRIPTION,
        wire=wire,
        publishes=[Published.SEND_COMMANDS, Published.STATUS_EVENTS],
    )


def wire(runtime: Runtime) -> Start:
    """The scheduler's parts and how they connect; returns the step that starts them."""
    settings = runtime.settings
    relay = runtime.outbox_relay()
    scheduler = Scheduler(
        runtime.sessions, runtime.broker, runtime.topics, settings, on_commit=relay.wake
    )
    subscribe(runtime, scheduler)

    async def start(app: FastAPI) -> None:
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

    return start
