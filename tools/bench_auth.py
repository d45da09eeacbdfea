"""`make bench-auth`: what an API key costs per request, next to a development token.

Starts the API as its own process (DATABASE_URL, KAFKA_BOOTSTRAP: run it under
`python -m tools.infra run`), creates an admin API key through the API, then times the
same cheap read (`GET /api/v1/clients/{id}/` of one client) in alternating batches with
the development token (checked in memory) and with the key (an indexed SELECT on
`api_key`, then trusted for a second by the process). Then times the key's check alone,
in this process, with and without that second's cache: the database lookup each
request would pay without it. Prints medians; asserts nothing (this machine is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from typing import TYPE_CHECKING

from shared.api_keys import ApiKeyCheck
from shared.db import create_engine, create_session_factory
from shared.settings import load_settings
from tools.api_process import TOKEN, api_process

if TYPE_CHECKING:
    import httpx


def batch(client: httpx.Client, path: str, headers: dict[str, str], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        client.get(path, headers=headers).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def check_alone(key: str, n: int) -> dict[str, float]:
    """Median ms of `ApiKeyCheck.principal` with no cache and with the default one."""
    settings = load_settings(database_url=os.environ["DATABASE_URL"], log_file=None)
    engine = create_engine(settings, application_name="bench-auth")
    medians = {}
    try:
        sessions = create_session_factory(engine)
        for name, check in {
            "lookup (no cache)": ApiKeyCheck(sessions, cache_s=0),
            "cached (1 s)": ApiKeyCheck(sessions),
        }.items():
            await check.principal(key)
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                await check.principal(key)
                samples.append((time.perf_counter() - started) * 1000)
            medians[name] = statistics.median(samples)
    finally:
        await engine.dispose()
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per credential")
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    with api_process() as (client, _):
        made = client.post(
            "/api/v1/api-keys/", json={"name": f"bench-{uuid.uuid4().hex[:8]}", "role": "admin"}
        )
        made.raise_for_status()
        phone = f"7{random.randrange(10**9, 10**10):010d}"
        created = client.post("/api/v1/clients/", json={"telephone": phone})
        created.raise_for_status()
        path = f"/api/v1/clients/{created.json()['id']}/"
        credentials = {
            "development token": {"Authorization": f"Bearer {TOKEN}"},
            "API key": {"Authorization": f"Bearer {made.json()['key']}"},
        }
        samples: dict[str, list[float]] = {name: [] for name in credentials}
        for headers in credentials.values():
            batch(client, path, headers, 50)  # warm up
        for _ in range(args.requests // args.batch):
            for name, headers in credentials.items():
                samples[name] += batch(client, path, headers, args.batch)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"GET {path} ({args.requests} requests each, alternating batches of {args.batch})")
    for name, median in medians.items():
        p95 = sorted(samples[name])[int(0.95 * len(samples[name]))]
        print(f"  {name:<18} median {median:6.2f} ms   p95 {p95:6.2f} ms")
    token, key = medians["development token"], medians["API key"]
    print(f"  API key - token: {key - token:+.2f} ms per request (ratio {key / token:.2f})")
    print("ApiKeyCheck.principal alone, in-process:")
    for name, median in asyncio.run(check_alone(made.json()["key"], args.requests)).items():
        print(f"  {name:<18} median {median:6.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
