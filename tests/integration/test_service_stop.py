"""A service stops when asked (SIGTERM) even with its Kafka broker and its database gone.

A process manager (Kubernetes, compose, systemd, `make dev`) asks a service to stop and
waits; a service whose Kafka clients wait forever for a broker that is not coming back
would hold the stop (and a rollout) until it is killed. Every service runs as its own
process on a broker and a PostgreSQL server of its own; both are stopped, then each
service is sent SIGTERM and must exit within its shutdown grace and the backstop after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import httpx

from tests.support.infra import REPO
from tests.support.polling import eventually
from tools.infra import KafkaServer, PostgresServer, free_port, run_migrations

if TYPE_CHECKING:
    from pathlib import Path


SERVICES = ("api", "scheduler", "dispatcher", "reporter")
GRACE_S = 2
# HTTP connections, then the consumers, each get the grace; then the backstop's margin
# (shared/runner.py), and room for a loaded machine.
BOUND_S = GRACE_S * 2 + 10 + 20


async def _ready(port: int) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code


async def test_every_service_stops_on_sigterm_with_its_broker_and_database_gone(
    tmp_path: Path,
) -> None:
    kafka = KafkaServer(tmp_path / "kafka")
    postgres = PostgresServer(tmp_path / "postgres")
    await asyncio.gather(asyncio.to_thread(kafka.start), asyncio.to_thread(postgres.start))
    await asyncio.to_thread(run_migrations, postgres.url)
    ports = {service: free_port() for service in SERVICES}
    logs = {service: tmp_path / f"{service}.log" for service in SERVICES}
    env = {
        **os.environ,
        "DATABASE_URL": postgres.url,
        "KAFKA_BOOTSTRAP": kafka.bootstrap,
        "KAFKA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
        "KAFKA_PARTITIONS": "3",
        "LOG_FORMAT": "json",
        "SHUTDOWN_GRACE_S": str(GRACE_S),
        "READY_TIMEOUT_S": "2",
        "DEV_MODE": "true",
        "API_TOKENS": "stop-token",
        **{f"{service.upper()}_PORT": str(port) for service, port in ports.items()},
    }
    processes = {
        service: subprocess.Popen(  # noqa: ASYNC220 (a child process for the test, not I/O)
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO,
            env={**env, "LOG_FILE": str(logs[service])},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for service in SERVICES
    }
    try:

        async def all_ready() -> list[int]:
            return [await _ready(port) for port in ports.values()]

        await eventually(all_ready, lambda codes: codes == [200] * 4, timeout=120, what="ready")
        await asyncio.gather(asyncio.to_thread(kafka.stop), asyncio.to_thread(postgres.stop))
        await asyncio.sleep(3)  # the clients notice
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        stopped: dict[str, float] = {}
        while len(stopped) < len(processes) and time.monotonic() - asked < BOUND_S:
            for service, process in processes.items():
                if service not in stopped and process.poll() is not None:
                    stopped[service] = round(time.monotonic() - asked, 1)
            await asyncio.sleep(0.2)
        print("stopped after SIGTERM (s):", stopped)
        assert set(stopped) == set(SERVICES), f"still running after {BOUND_S} s: " + ", ".join(
            sorted(set(SERVICES) - set(stopped))
        )
        for service, process in processes.items():
            events = [
                json.loads(line).get("event")
                for line in logs[service].read_text().splitlines()
                if line.startswith("{")
            ]
            # A clean stop (uvicorn re-raises the signal after it), or the backstop's cut,
            # said in the log.
            clean = process.returncode in (0, -signal.SIGTERM) and "service_stopped" in events
            assert clean or "shutdown_timed_out" in events, (
                service,
                process.returncode,
                events[-5:],
            )
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                await asyncio.to_thread(process.wait, 10)
        await asyncio.gather(asyncio.to_thread(kafka.stop), asyncio.to_thread(postgres.stop))
