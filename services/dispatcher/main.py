"""Composition root of the dispatcher: sends messages through the SMS gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.dispatcher.breaker import CircuitBreaker
from services.dispatcher.delivery import Delivery
from services.dispatcher.gateway import create_gateway
from services.dispatcher.handlers import subscribe
from services.dispatcher.ratelimit import RateLimiter
from shared.asyncapi import Published
from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.service import Runtime, Start
    from shared.settings import Settings

DESCRIPTION = """
Claims each message, calls the external SMS gateway and records the outcome.

Consumes `message.send` and its retry tiers; publishes retries, `message.send.dlq` and
`message.status` through its outbox.
"""


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        service="dispatcher",
        settings=settings,
        title="Notifications: dispatcher",
        description=DESCRIPTION,
        wire=wire,
        publishes=[Published.RETRY_COMMANDS, Published.DEAD_LETTERS, Published.STATUS_EVENTS],
    )


def wire(runtime: Runtime) -> Start:
    """The dispatcher's parts and how they connect; returns the step that starts them."""
    settings = runtime.settings
    relay = runtime.outbox_relay()
    gateway = create_gateway(settings)
    breaker = CircuitBreaker(
        settings.breaker_failures, settings.breaker_open_s, settings.breaker_open_max_s
    )
    delivery = Delivery(
        sessions=runtime.sessions,
        topics=runtime.topics,
        settings=settings,
        gateway=gateway,
        breaker=breaker,
        limiter=RateLimiter(settings.provider_rate_limit),
        on_commit=relay.wake,
        # Set as the service starts stopping, before its consumers get their grace.
        stopping=runtime.consumers.stopping,
    )
    subscribe(runtime, delivery, breaker)

    async def start(app: FastAPI) -> None:
        app.state.delivery = delivery
        runtime.spawn(relay.run(runtime.broker_started), name="outbox-relay")
        runtime.on_stop(gateway.close)

    return start
