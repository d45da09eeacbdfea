"""The gateway's HTTP/1.1 transport (`services/dispatcher/http1.py`) against a server
that answers exactly as each test says: what goes on the wire, keep-alive and its end,
the framings of an answer, and every way an exchange can fail (and what that means for
the message: nothing sent, or maybe acted on)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import pytest
import uvloop

from services.dispatcher.gateway import HttpGateway, Outcome
from services.dispatcher.http1 import Http1Transport
from shared.settings import load_settings
from tools.infra import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

HANG = b""  # a reply of nothing: the server keeps the connection and never answers
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"code":0}'


@dataclass
class Server:
    """A TCP server: `answer(request bytes)` gives the bytes to write back (None: write
    nothing and close; HANG: write nothing and keep the connection open)."""

    answer: Callable[[bytes], bytes | None]
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.answer(request)
                if reply == HANG:  # until the client gives up on it
                    await reader.read()
                    break
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(
    answer: Callable[[bytes], bytes | None],
) -> AsyncIterator[Server]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


async def post(transport: Http1Transport, port: int, body: bytes = b'{"id":1}') -> httpx.Response:
    request = httpx.Request(
        "POST",
        f"http://127.0.0.1:{port}/v1/send/1",
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        content=body,
    )
    return await transport.handle_async_request(request)


async def test_the_request_on_the_wire_and_the_answer_read_whole() -> None:
    async with serving(lambda _: OK) as server:
        transport = Http1Transport(max_connections=4)
        response = await post(transport, server.port, b'{"id":1,"text":"hi"}')
        await transport.aclose()
    assert (response.status_code, response.content) == (200, b'{"code":0}')
    assert response.headers["content-type"] == "application/json"
    [request] = server.requests
    head, body = request.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/send/1 HTTP/1.1"
    headers = {k.lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines[1:])}
    assert headers[b"host"] == f"127.0.0.1:{server.port}".encode()
    assert headers[b"authorization"] == b"Bearer t"
    assert headers[b"content-length"] == b"20"
    assert body == b'{"id":1,"text":"hi"}'


async def test_a_connection_is_kept_for_the_next_request() -> None:
    async with serving(lambda _: OK) as server:
        transport = Http1Transport(max_connections=4)
        for _ in range(5):
            assert (await post(transport, server.port)).status_code == 200
        await transport.aclose()
    assert (len(server.requests), server.connections) == (5, 1)


async def test_connection_close_from_the_server_opens_a_new_one() -> None:
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    async with serving(lambda _: closing) as server:
        transport = Http1Transport(max_connections=4)
        for _ in range(3):
            assert (await post(transport, server.port)).content == b'{"code":0}'
        await transport.aclose()
    assert (len(server.requests), server.connections) == (3, 3)


async def test_at_most_max_connections_at_once() -> None:
    gate = asyncio.Event()
    in_flight = 0
    most = 0

    async def slow_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, most
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            await reader.readexactly(int(head.lower().split(b"content-length:")[1].split()[0]))
            in_flight += 1
            most = max(most, in_flight)
            await gate.wait()
            in_flight -= 1
            writer.write(OK)
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(slow_ok, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    transport = Http1Transport(max_connections=3)
    calls = [asyncio.create_task(post(transport, port)) for _ in range(10)]
    await asyncio.sleep(0.3)
    gate.set()
    responses = await asyncio.gather(*calls)
    await transport.aclose()
    listener.close()
    assert [r.status_code for r in responses] == [200] * 10
    assert most == 3


@pytest.mark.parametrize(
    ("reply", "content"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4\r\n{"co\r\n6\r\nde":0}\r\n0\r\n\r\n',
            b'{"code":0}',
        ),
        # No length at all: the body ends with the connection.
        (b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"code":0}', b'{"code":0}'),
        (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n", b""),
    ],
)
async def test_every_framing_of_an_answer(reply: bytes, content: bytes) -> None:
    async with serving(lambda _: reply) as server:
        transport = Http1Transport(max_connections=1)
        response = await post(transport, server.port)
        await transport.aclose()
    assert response.content == content
    if response.status_code == 503:
        assert response.headers["retry-after"] == "7"


@pytest.fixture
def gateway_on() -> Callable[[int], HttpGateway]:
    def make(port: int) -> HttpGateway:
        return HttpGateway(
            load_settings(
                provider_url=f"http://127.0.0.1:{port}/v1", provider_token="t", log_file=None
            )
        )

    return make


async def test_nothing_listening_is_a_failed_connection_not_an_ambiguous_one(
    gateway_on: Callable[[int], HttpGateway],
) -> None:
    gateway = gateway_on(free_port())
    result = await gateway.send(1, "79001234567", "hello", 2.0)
    await gateway.close()
    assert (result.outcome, result.ambiguous) == (Outcome.TRANSIENT, False)
    assert result.error is not None
    assert result.error.startswith("connection failed")


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, "transport error"),  # the request went out, the connection closed unanswered
        (b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"co', "transport error"),  # cut short
        (b"SMTP ready\r\n\r\n", "transport error"),  # not HTTP
    ],
)
async def test_an_exchange_broken_after_the_request_is_ambiguous(
    gateway_on: Callable[[int], HttpGateway], reply: bytes | None, error: str
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(cut, "127.0.0.1", 0)
    gateway = gateway_on(listener.sockets[0].getsockname()[1])
    result = await gateway.send(1, "79001234567", "hello", 2.0)
    await gateway.close()
    listener.close()
    assert (result.outcome, result.ambiguous) == (Outcome.TRANSIENT, True)
    assert result.error is not None
    assert result.error.startswith(error)


async def test_a_hung_request_times_out_and_its_connection_is_not_reused(
    gateway_on: Callable[[int], HttpGateway],
) -> None:
    answers = iter([HANG, OK])
    async with serving(lambda _: next(answers)) as server:
        gateway = gateway_on(server.port)
        hung = await gateway.send(1, "79001234567", "hello", 0.3)
        after = await gateway.send(2, "79001234567", "hello", 2.0)
        await gateway.close()
    assert (hung.outcome, hung.ambiguous) == (Outcome.TRANSIENT, True)
    assert hung.error == "no answer within 0.3 s"
    # The second request did not read the first one's late answer: a new connection.
    assert after.outcome == Outcome.OK
    assert server.connections == 2


async def _a_short_story(transport: Http1Transport) -> list[int]:
    """Three requests on one kept connection, then one the server cuts off."""
    answers = iter([OK, OK, OK, None])
    async with serving(lambda _: next(answers)) as server:
        statuses = [(await post(transport, server.port)).status_code for _ in range(3)]
        with pytest.raises(httpx.ReadError):
            await post(transport, server.port)
        await transport.aclose()
    return [*statuses, server.connections]


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_the_services_event_loop_too(runner: str) -> None:
    """The services run on uvloop (uvicorn's choice when installed), whose transports are
    not `asyncio.Transport` subclasses: the same story on both loops."""
    run = uvloop.run if runner == "uvloop" else asyncio.run
    assert run(_a_short_story(Http1Transport(max_connections=2))) == [200, 200, 200, 1]
