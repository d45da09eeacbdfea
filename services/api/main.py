"""Composition root of the admin API: clients, mailings, statistics, forecast."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.middleware import Middleware
from starlette.staticfiles import StaticFiles

from services.api import console, errors
from services.api.body_limit import BodyLimitMiddleware
from services.api.console.provider_login import TokenRefresh
from services.api.routes import clients, control, mailings
from shared.asyncapi import Published
from shared.auth import ConsoleSessions
from shared.auth.checks import install_bearer_checks
from shared.logging import get_logger
from shared.service import create_service_app
from shared.settings import refuse_unsafe_credentials

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.service import Runtime, Start
    from shared.settings import Settings

log = get_logger(__name__)

DESCRIPTION = """
Clients and mailings for operators and integrations.

Authenticate with `Authorization: Bearer <token>` (tokens: `API_TOKENS`; the local
stack accepts `dev-token`), or with the operator console's session cookie (sign in at
`/console/`; unsafe methods then need the `X-CSRF-Token` header). Datetimes in mailing
bodies are UTC `YYYY-MM-DD HH:MM:SS` (ISO 8601 with an offset or `Z` is accepted too).

Every write is committed with an outbox row; a relay publishes the outbox to
`client.events` and `mailing.events`, so writes are accepted while Kafka is down and
their events go out when it is back.
"""

TAGS = [
    {"name": "clients", "description": "The directory of recipients."},
    {"name": "mailings", "description": 'Mailings ("notifications"), their messages and forecast.'},
]


def wire(runtime: Runtime) -> Start:
    """The API's one background part: the outbox relay that publishes its writes."""
    relay = runtime.outbox_relay()

    async def start(app: FastAPI) -> None:
        app.state.relay = relay
        install_bearer_checks(app, runtime)
        oidc = getattr(app.state, "oidc", None)
        app.state.console_sessions = ConsoleSessions(
            runtime.settings,
            runtime.sessions,
            refresher=TokenRefresh(runtime.settings, oidc) if oidc is not None else None,
        )
        runtime.spawn(relay.run(runtime.broker_started), name="outbox-relay")

    return start


def create_app(settings: Settings) -> FastAPI:
    refuse_unsafe_credentials(settings, signs_sessions=True)
    app = create_service_app(
        service="api",
        settings=settings,
        title="Notifications: admin API",
        description=DESCRIPTION,
        routers=[clients.router, mailings.router, control.router, console.router],
        publishes=[Published.MAILING_EVENTS, Published.CLIENT_EVENTS, Published.STATUS_EVENTS],
        wire=wire,
        openapi_tags=TAGS,
    )
    errors.install(app)
    # The console's CSS and script, from the package: no page loads anything from elsewhere.
    app.mount("/console/static", StaticFiles(directory=console.STATIC), name="console-static")
    # Innermost (appended, not add_middleware's outermost): the HTTP metrics count the
    # 413s too.
    app.user_middleware.append(Middleware(BodyLimitMiddleware, default=settings.api_max_body_bytes))
    return app
