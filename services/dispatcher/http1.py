"""An httpx transport for the gateway: HTTP/1.1 keep-alive connections to one origin,
requests written as bytes, answers parsed by httptools (llhttp, in C).

The dispatcher makes one small POST per message to one host, and the general-purpose
stacks under httpx spend most of the client's CPU on machinery it never uses (cookie
jars, redirects, proxies, streaming bodies, per-request timeout objects). This transport
keeps httpx's request and response models (the product's gateway client is httpx) and
does only what the gateway needs:

* a pool of at most `max_connections` connections (a caller waits for a free one), each
  kept open for the next request while the server allows it (`Connection: keep-alive`,
  HTTP/1.1's default) and closed when it does not, or when a request on it did not end
  cleanly (an error, a timeout: the rest of that answer would be read by the next one);
* the whole answer read before `handle_async_request` returns (gateway answers are a few
  bytes: `Content-Length`, chunked or, at worst, up to the end of the connection);
* errors as httpx's: no connection -> `httpx.ConnectError` (nothing was sent); a
  connection lost or an answer that is not HTTP after the request was written ->
  `httpx.ReadError` / `httpx.RemoteProtocolError` (the gateway may have acted on it).

Timeouts are the caller's (`asyncio.timeout` around the call: one deadline for the
whole request, as the dispatcher needs); cancelling a request closes its connection.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, cast

import httptools
import httpx

if TYPE_CHECKING:
    from collections.abc import Iterable


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: the parser knows where it ends

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"not an HTTP answer: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        self._ended()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        self.closed = True

    # --- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)

    # --- the request -------------------------------------------------------------------

    async def exchange(self, request: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Write `request` and return the answer's status, headers and body."""
        if self.transport is None or self.closed:
            raise httpx.ConnectError("the connection to the gateway closed before the request")
        self._status, self._headers, self._body = 0, [], []
        self._headers_done = self._framed = self.keep_alive = False
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self._answer
        return self._status, self._headers, b"".join(self._body)

    def _ended(self) -> None:
        """The server closed the connection: the end of a body sent without a length,
        otherwise an answer cut short (or none at all)."""
        if self._answer is None or self._answer.done():
            return
        if self._headers_done and not self._framed:
            self.keep_alive = False
            self._answer.set_result(None)
        else:
            self._fail(httpx.ReadError("the gateway closed the connection before answering"))

    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx's transport interface on `_Connection`s to the requests' origin."""

    def __init__(self, max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        data = _serialize(request.method, url.raw_path, request.headers.raw, request.content)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            connection = self._reuse(origin) or await self._connect(origin)
            try:
                status, headers, body = await connection.exchange(data)
            except BaseException:
                # The rest of the answer (if any) must not be read by the next request.
                self._discard(connection)
                raise
            if connection.keep_alive and not connection.closed:
                self._idle.setdefault(origin, []).append(connection)
            else:
                self._discard(connection)
        return httpx.Response(
            status,
            headers=headers,
            content=body,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
            self._open.discard(connection)
        return None

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self.ssl_context or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection, host, port, ssl=context, server_hostname=host if context else None
            )
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise httpx.ConnectError(f"{host}:{port}: {exc}") from exc
        self._open.add(connection)
        return connection

    def _discard(self, connection: _Connection) -> None:
        self._open.discard(connection)
        connection.close()

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()


def _serialize(
    method: str, target: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """The request as it goes on the wire. httpx has set `Host` and `Content-Length`."""
    head = [method.encode("ascii"), b" ", target or b"/", b" HTTP/1.1\r\n"]
    for name, value in headers:
        head += (name, b": ", value, b"\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body
