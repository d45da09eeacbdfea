"""The services as their own processes, for tests of what a process does: readiness,
outages, logs, stopping. Each on a port of its own, logging JSON to a file of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx

from tests.support.infra import REPO
from tools.infra import KafkaServer, PostgresServer, free_port, run_migrations

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping
    from pathlib import Path

SERVICES = ("api", "scheduler", "dispatcher", "reporter")


def service_ports(services: Iterable[str] = SERVICES) -> dict[str, int]:
    return {service: free_port() for service in services}


def service_env(
    database_url: str, kafka_bootstrap: str, ports: Mapping[str, int], **extra: str
) -> dict[str, str]:
    """The processes' environment: this one's, the infrastructure, the ports, `extra`."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "LOG_FORMAT": "json",
        **{f"{service.upper()}_PORT": str(port) for service, port in ports.items()},
        **extra,
    }


def launch(env: Mapping[str, str], logs: Mapping[str, Path]) -> dict[str, subprocess.Popen[bytes]]:
    """Start `python -m services.<name>` for each name in `logs`, logging to its file."""
    return {
        service: subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO,
            env={**env, "LOG_FILE": str(log)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for service, log in logs.items()
    }


async def ready_status(port: int) -> int:
    """The status of a service's `GET /ready`."""
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code


@contextlib.asynccontextmanager
async def own_infra(tmp_path: Path) -> AsyncIterator[tuple[KafkaServer, PostgresServer]]:
    """A Kafka broker and a migrated PostgreSQL server of the test's own, to stop and
    start at will; both stopped at the end."""
    kafka = KafkaServer(tmp_path / "kafka")
    postgres = PostgresServer(tmp_path / "postgres")
    try:
        await asyncio.gather(asyncio.to_thread(kafka.start), asyncio.to_thread(postgres.start))
        await asyncio.to_thread(run_migrations, postgres.url)
        yield kafka, postgres
    finally:
        await asyncio.gather(asyncio.to_thread(kafka.stop), asyncio.to_thread(postgres.stop))
