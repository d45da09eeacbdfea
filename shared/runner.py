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
    from types import FrameType

    from fastapi import FastAPI

    from shared.settings import Settings


# The exit status when the app refuses to start (e.g. no credential could be used).
EXIT_START_FAILED = 3


class ExitRequest:
    """Lets the app stop its own process with an exit status (`app.state.request_exit`).

    The server shuts down gracefully, as on SIGTERM, and the process then exits with the
    status asked for. A graceful shutdown that hangs (a wedged Kafka client) is cut
    short after `backstop_s`, as is one that a signal asked for (`arm`).
    """

    def __init__(self, server: uvicorn.Server, backstop_s: float) -> None:
        self.server = server
        self.backstop_s = backstop_s
        self.code: int | None = None
        self._armed = False

    def __call__(self, code: int) -> None:
        if self.code is not None:
            return
        self.code = code
        self.server.should_exit = True
        self.arm(code)

    def arm(self, code: int) -> None:
        """Exit with `code` if the process is still here `backstop_s` from now."""
        if self._armed:
            return
        self._armed = True
        backstop = threading.Timer(self.backstop_s, self._cut, args=(code,))
        backstop.daemon = True
        backstop.start()

    def _cut(self, code: int) -> None:
        get_logger(__name__).error(
            "shutdown_timed_out",
            seconds=self.backstop_s,
            exit_code=code,
            hint="a step of the shutdown did not finish; the process exits without it",
        )
        os._exit(code)


class _Server(uvicorn.Server):
    """uvicorn's server, whose stop on a signal has the same backstop as `ExitRequest`."""

    exit_request: ExitRequest | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.exit_request is not None:
            self.exit_request.arm(128 + sig)  # the shell's status for "killed by sig"
        super().handle_exit(sig, frame)


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
    server = _Server(config)
    # HTTP connections, then the consumers, each get the grace period; then a margin.
    app.state.request_exit = exit_request = ExitRequest(server, settings.shutdown_grace_s * 2 + 10)
    server.exit_request = exit_request
    server.run()
    if not server.started and exit_request.code is None:
        # The lifespan refused to start (its reason is logged): not a clean exit.
        sys.exit(EXIT_START_FAILED)
    if exit_request.code is not None:
        sys.exit(exit_request.code)
