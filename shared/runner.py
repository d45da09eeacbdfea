"""Run one service process: settings, logging, then uvicorn with graceful shutdown."""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

import uvicorn

from shared.logging import configure_logging, get_logger
from shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from shared.settings import Settings


# The exit status when the app refuses to start (e.g. no credential could be used).
EXIT_START_FAILED = 3


class ExitRequest:
    """Lets the app stop its own process with an exit status (`app.state.request_exit`).

    The server shuts down gracefully, as on SIGTERM, and the process then exits with the
    status asked for. A graceful shutdown that hangs (a wedged Kafka client) is cut
    short after `backstop_s`.
    """

    def __init__(self, server: uvicorn.Server, backstop_s: float) -> None:
        self.server = server
        self.backstop_s = backstop_s
        self.code: int | None = None

    def __call__(self, code: int) -> None:
        if self.code is not None:
            return
        self.code = code
        self.server.should_exit = True
        backstop = threading.Timer(self.backstop_s, os._exit, args=(code,))
        backstop.daemon = True
        backstop.start()


def run_service(service: str, build: Callable[[Settings], FastAPI]) -> None:
    """Entry point of `python -m services.<service>`; SIGTERM/SIGINT stop it cleanly."""
    settings = load_settings()
    configure_logging(settings, service)
    port = getattr(settings, f"{service}_port")
    get_logger(__name__).info("service_starting", host=settings.http_host, port=port)
    app = build(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        server_header=False,
    )
    server = uvicorn.Server(config)
    # HTTP connections, then the consumers, each get the grace period; then a margin.
    app.state.request_exit = exit_request = ExitRequest(server, settings.shutdown_grace_s * 2 + 10)
    server.run()
    if not server.started and exit_request.code is None:
        # The lifespan refused to start (its reason is logged): not a clean exit.
        sys.exit(EXIT_START_FAILED)
    if exit_request.code is not None:
        sys.exit(exit_request.code)
