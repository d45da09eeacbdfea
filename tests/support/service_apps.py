"""Every service's FastAPI app, built as its process builds it, on settings whose
PostgreSQL and Kafka are not there: their lifespans start anyway (readiness says
unavailable), so their documentation pages can be served without infrastructure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.api.main import create_app as api_app
from services.dispatcher.main import create_app as dispatcher_app
from services.reporter.main import create_app as reporter_app
from services.sandbox.app import create_control_app
from services.sandbox.faults import Faults
from services.sandbox.state import SandboxState
from services.scheduler.main import create_app as scheduler_app
from shared.settings import load_settings
from tools.infra import free_port

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from shared.settings import Settings


def offline_settings() -> Settings:
    port = free_port()  # nothing listens there
    return load_settings(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere",
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_topic_prefix="docs.",
        retry_delays_s="1,2,3",
        log_file=None,
        dev_mode=True,
    )


def sandbox_control_app(_: Settings) -> FastAPI:
    return create_control_app(SandboxState(token="sandbox-token", faults=Faults()))


# Services with Kafka (and so an /asyncapi page), then the sandbox's control app.
KAFKA_SERVICES: dict[str, Callable[[Settings], FastAPI]] = {
    "api": api_app,
    "scheduler": scheduler_app,
    "dispatcher": dispatcher_app,
    "reporter": reporter_app,
}
SERVICES: dict[str, Callable[[Settings], FastAPI]] = {
    **KAFKA_SERVICES,
    "sandbox": sandbox_control_app,
}
