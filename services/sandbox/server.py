"""uvicorn (httptools, uvloop) on two sockets: the sends port and the control port.

Both serve the same application. A `refuse` outage closes only the sends port's
listening socket (and its open connections), so clients get "connection refused",
while the control port stays up to clear the outage and read the ledger. The outage
ends by binding the same address again.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import socket
from typing import TYPE_CHECKING, Any, Literal

import uvicorn

from shared.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from services.sandbox.app import SandboxApp

log = get_logger(__name__)

BACKLOG = 2048


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def best_loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def best_http() -> Literal["httptools", "h11"]:
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


class SandboxServer(uvicorn.Server):
    """A uvicorn server whose sends listener can stop and start again (a `Listener`)."""

    def __init__(
        self,
        app: SandboxApp,
        *,
        host: str,
        port: int,
        control_port: int,
        keep_alive_s: float = 75.0,
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=best_http(),
            loop=best_loop(),
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            date_header=False,
            # Longer than clients' idle timeouts, so that they, not we, close idle
            # connections (a server-side close races with a reused connection).
            timeout_keep_alive=int(keep_alive_s),
            # Hanging requests must not hold a stop for long.
            timeout_graceful_shutdown=1,
            backlog=BACKLOG,
        )
        super().__init__(config)
        self.app = app
        self.host = host
        self._main = bind_socket(host, port)
        self._control = bind_socket(host, control_port)
        self.port: int = self._main.getsockname()[1]
        self.control_port: int = self._control.getsockname()[1]
        self._accepting = True
        # Run once the sockets listen (e.g. an outage from the start).
        self.on_started: list[Callable[[], Awaitable[None]]] = []

    def run_forever(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        self.app.state.listener = self
        self.run(sockets=[self._main, self._control])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        log.info(
            "sandbox_listening",
            url=f"http://{_netloc(self.host, self.port)}",
            control_url=f"http://{_netloc(self.host, self.control_port)}",
            http=self.config.http,
            loop=self.config.loop,
        )
        for hook in self.on_started:
            await hook()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.app.state.close()
        await super().shutdown(sockets=sockets)

    # --- Listener -----------------------------------------------------------------------

    def stop_accepting(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        self.servers[0].close()
        self._main.close()

    def drop_connections(self) -> int:
        dropped = 0
        for connection in list(self.server_state.connections):
            transport: Any = getattr(connection, "transport", None)
            if transport is None:
                continue
            local = transport.get_extra_info("sockname")
            if local is not None and local[1] == self.port:
                transport.close()
                dropped += 1
        return dropped

    async def resume_accepting(self) -> None:
        if self._accepting:
            return
        sock = bind_socket(self.host, self.port)
        protocol_class: Any = self.config.http_protocol_class
        create_protocol = functools.partial(
            protocol_class,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(create_protocol, sock=sock, backlog=BACKLOG)
        except OSError:
            sock.close()
            raise
        self._main = sock
        self.servers[0] = server
        self._accepting = True
        log.info("sandbox_listening_again", port=self.port)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
