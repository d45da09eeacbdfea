"""How many sends per second the sandbox answers on its own (its ceiling).

    python -m services.sandbox.ceiling [--requests 20000] [--concurrency 64]
                                       [--no-ledger-text] [--base-url URL] [--json]

Starts the sandbox in a child process (zero faults), then sends N valid requests from
this process over C keep-alive connections and reports requests/s and latency
percentiles. The client is a minimal HTTP/1.1 client on asyncio protocols (aiohttp is
not a dependency; httpx's pool would measure itself, not the sandbox): one request in
flight per connection, responses framed by Content-Length.

From code: ``await measure_ceiling(...)`` (or `measure_ceiling_sync` outside a loop);
``await run_load(base_url, ...)`` measures a sandbox that is already running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from services.sandbox.client import SandboxControl
from services.sandbox.process import DEFAULT_TOKEN, SandboxProcess

if TYPE_CHECKING:
    from collections.abc import Sequence

_TEXT = "Your code is 123456. Do not tell it to anyone."
_PHONE0 = 79_000_000_000


class RawHttpError(ConnectionError):
    pass


class RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time, Content-Length framing."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end])
        marker = head.lower().find(b"\r\ncontent-length:")
        if marker < 0:
            self._fail(RawHttpError("response without Content-Length"))
            return
        stop = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(buffer) < total:
            return
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((int(head[9:12]), head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RawHttpError(f"connection lost: {exc!r}"))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    async def request(self, data: bytes) -> tuple[int, bytes, bytes]:
        """Send one whole request; return (status, head, body)."""
        if self.closed or self.transport is None:
            raise RawHttpError("connection closed")
        waiter: asyncio.Future[tuple[int, bytes, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiter = waiter
        self.transport.write(data)
        return await waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def send_request(
    msg_id: int, phone: int, text: str, *, host: str, token: str, body_id: int | None = None
) -> bytes:
    body = json.dumps(
        {"id": msg_id if body_id is None else body_id, "phone": phone, "text": text},
        separators=(",", ":"),
    ).encode()
    return (
        f"POST /v1/send/{msg_id} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def send_many(
    base_url: str,
    msg_ids: Sequence[int],
    *,
    token: str = DEFAULT_TOKEN,
    concurrency: int = 16,
    text: str = _TEXT,
    latencies_ns: list[int] | None = None,
) -> list[int]:
    """POST a valid send for each msgId; return the statuses in `msg_ids` order.

    A request whose connection broke gets status 0 (its connection is reopened). With
    `concurrency=1` the arrival order at the sandbox is the order of `msg_ids`.
    """
    url = urlsplit(base_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or 80
    netloc = url.netloc
    statuses = [0] * len(msg_ids)
    clock = time.perf_counter_ns

    async def worker(first: int) -> None:
        connection = await RawConnection.open(host, port)
        try:
            for index in range(first, len(msg_ids), concurrency):
                msg_id = msg_ids[index]
                data = send_request(
                    msg_id, _PHONE0 + msg_id % 1_000_000_000, text, host=netloc, token=token
                )
                started = clock()
                try:
                    statuses[index] = (await connection.request(data))[0]
                except RawHttpError:
                    connection.close()
                    connection = await RawConnection.open(host, port)
                    continue
                if latencies_ns is not None:
                    latencies_ns.append(clock() - started)
        finally:
            connection.close()

    await asyncio.gather(*(worker(i) for i in range(min(concurrency, len(msg_ids)))))
    return statuses


@dataclasses.dataclass(frozen=True)
class Ceiling:
    requests: int
    concurrency: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_200: int
    accepted: int | None  # according to the sandbox's ledger
    ledger_text: bool | None
    client: str = "raw asyncio protocol, keep-alive"

    def describe(self) -> str:
        return (
            f"sandbox ceiling: {self.requests_per_s:,.0f} req/s "
            f"({self.requests} requests, {self.concurrency} in flight, {self.seconds:.2f} s); "
            f"latency p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, "
            f"max {self.max_ms:.1f} ms; non-200: {self.non_200}; "
            f"accepted by ledger: {self.accepted}"
        )


def _percentile(sorted_ns: list[int], share: float) -> float:
    if not sorted_ns:
        return 0.0
    index = min(len(sorted_ns) - 1, max(0, round(share * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1e6


async def run_load(
    base_url: str,
    *,
    requests: int = 20_000,
    concurrency: int = 64,
    token: str = DEFAULT_TOKEN,
    warmup: int = 1_000,
    control_url: str | None = None,
    first_msg_id: int = 1,
) -> Ceiling:
    """Measure a running sandbox: `warmup` sends untimed, then `requests` timed ones."""
    if warmup:
        ids = range(first_msg_id, first_msg_id + warmup)
        await send_many(base_url, ids, token=token, concurrency=concurrency)
    control = SandboxControl(control_url or base_url)
    try:
        before = await control.summary()
        latencies: list[int] = []
        ids = range(first_msg_id + warmup, first_msg_id + warmup + requests)
        started = time.perf_counter()
        statuses = await send_many(
            base_url, ids, token=token, concurrency=concurrency, latencies_ns=latencies
        )
        seconds = time.perf_counter() - started
        after = await control.summary()
    finally:
        await control.aclose()
    latencies.sort()
    return Ceiling(
        requests=requests,
        concurrency=concurrency,
        seconds=seconds,
        requests_per_s=requests / seconds if seconds else 0.0,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        max_ms=latencies[-1] / 1e6 if latencies else 0.0,
        non_200=sum(1 for status in statuses if status != 200),
        accepted=after["accepted"] - before["accepted"],
        ledger_text=after["ledger_text"],
    )


async def measure_ceiling(
    requests: int = 20_000,
    concurrency: int = 64,
    *,
    ledger_text: bool = True,
    warmup: int = 1_000,
    base_url: str | None = None,
    control_url: str | None = None,
    token: str = DEFAULT_TOKEN,
) -> Ceiling:
    """The sandbox's ceiling: a fresh zero-fault child process unless `base_url` is given."""
    if base_url is not None:
        return await run_load(
            base_url,
            requests=requests,
            concurrency=concurrency,
            token=token,
            warmup=warmup,
            control_url=control_url,
        )
    sandbox = SandboxProcess()
    await asyncio.to_thread(sandbox.start, token=token, ledger_text=ledger_text)
    try:
        return await run_load(
            sandbox.base_url,
            requests=requests,
            concurrency=concurrency,
            token=token,
            warmup=warmup,
            control_url=sandbox.control_url,
        )
    finally:
        await asyncio.to_thread(sandbox.stop)


def measure_ceiling_sync(
    requests: int = 20_000,
    concurrency: int = 64,
    *,
    ledger_text: bool = True,
    warmup: int = 1_000,
    base_url: str | None = None,
    control_url: str | None = None,
    token: str = DEFAULT_TOKEN,
) -> Ceiling:
    """`measure_ceiling` on a fresh event loop (uvloop when installed)."""
    coro = measure_ceiling(
        requests,
        concurrency,
        ledger_text=ledger_text,
        warmup=warmup,
        base_url=base_url,
        control_url=control_url,
        token=token,
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.sandbox.ceiling")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--ledger-text", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--base-url", help="measure this running sandbox instead")
    parser.add_argument("--control-url", help="its control URL (default: --base-url)")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = measure_ceiling_sync(
        args.requests,
        args.concurrency,
        ledger_text=args.ledger_text,
        warmup=args.warmup,
        base_url=args.base_url,
        control_url=args.control_url,
        token=args.token,
    )
    with contextlib.suppress(BrokenPipeError):
        if args.json:
            print(json.dumps(dataclasses.asdict(result)))
        else:
            print(result.describe())


if __name__ == "__main__":
    main()
