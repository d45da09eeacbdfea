"""`make bench-gateway`: the dispatcher's gateway clients side by side.

Starts the gateway sandbox (no faults, compact ledger) and sends the same number of
requests through each client, in interleaved rounds so that the machine's noise falls
on all of them alike:

* `httpx client.send`: an `httpx.AsyncClient` on the aiohttp transport, each request
  through `AsyncClient.send` (what the dispatcher did before);
* `httpx on aiohttp`: httpx requests handed straight to the same transport;
* `httpx on http1` (`PROVIDER_CLIENT=httpx`, the default): the same requests on the
  dispatcher's own keep-alive HTTP/1.1 transport (`services/dispatcher/http1.py`);
* `aiohttp` (`PROVIDER_CLIENT=aiohttp`).

Prints, per client, the median over rounds of requests per second and of this
process's CPU microseconds per request (the steadier figure on a shared machine), and
each one's ratio to `httpx client.send`. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import TYPE_CHECKING

import httpx
from httpx_aiohttp import AiohttpTransport

from services.dispatcher.gateway import (
    AiohttpGateway,
    Gateway,
    HttpGateway,
    Outcome,
    Result,
    classify,
)
from services.sandbox.process import SandboxProcess
from shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.settings import Settings


class ClientSendGateway:
    """The baseline: every request through `httpx.AsyncClient.send`."""

    def __init__(self, settings: Settings) -> None:
        self.base = str(settings.provider_url).rstrip("/")
        limits = httpx.Limits(max_connections=settings.provider_concurrency)
        self.client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits),
            headers={
                "Authorization": f"Bearer {settings.provider_token.get_secret_value()}",
                "Content-Type": "application/json",
            },
            timeout=httpx.Timeout(settings.provider_timeout_s),
        )

    async def send(self, message_id: int, phone: str, text: str, deadline_s: float) -> Result:
        body = json.dumps({"id": message_id, "phone": int(phone), "text": text})
        async with asyncio.timeout(deadline_s):
            request = self.client.build_request(
                "POST", f"{self.base}/send/{message_id}", content=body
            )
            response = await self.client.send(request)
            content = await response.aread()
        return classify(response.status_code, content, response.headers.get("retry-after"))

    async def close(self) -> None:
        await self.client.aclose()


class AiohttpTransportGateway(HttpGateway):
    """The same httpx requests on httpx-aiohttp's transport (the default before)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        limits = httpx.Limits(max_connections=settings.provider_concurrency)
        self.transport = AiohttpTransport(limits=limits)  # type: ignore[assignment]


CLIENTS: dict[str, Callable[[Settings], Gateway]] = {
    "httpx client.send": ClientSendGateway,
    "httpx on aiohttp": AiohttpTransportGateway,
    "httpx on http1": HttpGateway,
    "aiohttp": AiohttpGateway,
}


async def one_round(
    make: Callable[[Settings], Gateway], settings: Settings, first_id: int, requests: int
) -> tuple[float, float]:
    """(requests per second, CPU microseconds per request) of one round."""
    gateway = make(settings)
    slots = asyncio.Semaphore(settings.provider_concurrency)
    failures = 0

    async def send(message_id: int) -> None:
        nonlocal failures
        async with slots:
            result = await gateway.send(message_id, "79001234567", "benchmark", 10.0)
        if result.outcome != Outcome.OK:
            failures += 1

    try:
        await asyncio.gather(*(send(first_id + i) for i in range(50)))  # warm the pool
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(send(first_id + 50 + i) for i in range(requests)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await gateway.close()
    if failures:
        raise SystemExit(f"{failures} requests were not accepted: is the sandbox healthy?")
    return requests / wall, cpu / requests * 1e6


async def run(requests: int, rounds: int) -> None:
    sandbox = SandboxProcess()
    base_url = await asyncio.to_thread(sandbox.start, None, None, ledger_text=False)
    try:
        settings = load_settings(provider_url=f"{base_url}/v1", log_file=None)
        rates: dict[str, list[float]] = {name: [] for name in CLIENTS}
        cpus: dict[str, list[float]] = {name: [] for name in CLIENTS}
        next_id = 1
        for index in range(rounds):
            for name, make in CLIENTS.items():
                rate, cpu = await one_round(make, settings, next_id, requests)
                next_id += requests + 100
                rates[name].append(rate)
                cpus[name].append(cpu)
            print(f"round {index + 1}/{rounds} done", flush=True)
    finally:
        await asyncio.to_thread(sandbox.stop)
    base_rate = statistics.median(rates["httpx client.send"])
    base_cpu = statistics.median(cpus["httpx client.send"])
    print(
        f"\n{requests} requests per round, {rounds} rounds, "
        f"{settings.provider_concurrency} in flight; medians over rounds"
    )
    print(f"{'client':<20} {'req/s':>8} {'ratio':>7} {'CPU µs/req':>11} {'ratio':>7}")
    for name in CLIENTS:
        rate, cpu = statistics.median(rates[name]), statistics.median(cpus[name])
        print(f"{name:<20} {rate:8.0f} {rate / base_rate:7.2f} {cpu:11.0f} {cpu / base_cpu:7.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
