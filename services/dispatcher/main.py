"""Composition root of the dispatcher: sends messages through the SMS gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.dispatcher.breaker import CircuitBreaker
from services.dispatcher.delivery import Delivery
from services.dispatcher.gateway import Gateway, create_gateway
from services.dispatcher.handlers import subscribe
from services.dispatcher.ratelimit import RateLimiter
from shared.asyncapi import Published
from shared.kafka import ensure_topics
from shared.outbox import OutboxRelay
from shared.service import create_service_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.service import Runtime
    from shared.settings import Settings

DESCRIPTION = """
Claims each message, calls the external SMS gateway and records the outcome.

Consumes `message.send` and its retry tiers; publishes retries, `message.send.dlq` and
`message.status` through its outbox.
"""


def create_app(settings: Settings) -> FastAPI:
    parts: list[tuple[Delivery, OutboxRelay, Gateway]] = []

    def wire(runtime: Runtime) -> None:
        relay = OutboxRelay(
            runtime.sessions,
            runtime.broker,
            topics=runtime.topics.all(),
            service="dispatcher",
            recreate_topics=lambda: ensure_topics(settings),
        )
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
        )
        parts.append((delivery, relay, gateway))
        subscribe(runtime, delivery, breaker)

    async def start(runtime: Runtime, app: FastAPI) -> None:
        delivery, relay, gateway = parts[-1]
        app.state.delivery = delivery
        runtime.spawn(relay.run(runtime.broker_started), name="outbox-relay")
        runtime.on_stop(gateway.close)

    return create_service_app(
        service="dispatcher",
        settings=settings,
        title="Notifications: dispatcher",
        description=DESCRIPTION,
        subscribe=wire,
        publishes=[Published.RETRY_COMMANDS, Published.DEAD_LETTERS, Published.STATUS_EVENTS],
        setup=start,
    )
