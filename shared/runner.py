"""Run one service process: settings, logging, then uvicorn with graceful shutdown."""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvicorn

from shared.logging import configure_logging, get_logger
from shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from shared.settings import Settings


def run_service(service: str, build: Callable[[Settings], FastAPI]) -> None:
    """Entry point of `python -m services.<service>`; SIGTERM/SIGINT stop it cleanly."""
    settings = load_settings()
    configure_logging(settings, service)
    port = getattr(settings, f"{service}_port")
    get_logger(__name__).info("service_starting", host=settings.http_host, port=port)
    config = uvicorn.Config(
        build(settings),
        host=settings.http_host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        server_header=False,
    )
    uvicorn.Server(config).run()
