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
import signal
import time
import uuid
from typing import TYPE_CHECKING

from tests.support.polling import eventually
from tests.support.service_processes import (
    SERVICES,
    launch,
    own_infra,
    ready_status,
    service_env,
    service_ports,
)

if TYPE_CHECKING:
    from pathlib import Path

GRACE_S = 2
# HTTP connections, then the consumers, each get the grace; then the backstop's margin
# (shared/runner.py), and room for a loaded machine.
BOUND_S = GRACE_S * 2 + 10 + 20


async def test_every_service_stops_on_sigterm_with_its_broker_and_database_gone(
    tmp_path: Path,
) -> None:
    async with own_infra(tmp_path) as (kafka, postgres):
        ports = service_ports()
        logs = {service: tmp_path / f"{service}.log" for service in SERVICES}
        env = service_env(
            postgres.url,
            kafka.bootstrap,
            ports,
            KAFKA_TOPIC_PREFIX=f"t{uuid.uuid4().hex[:10]}.",
            KAFKA_PARTITIONS="3",
            SHUTDOWN_GRACE_S=str(GRACE_S),
            READY_TIMEOUT_S="2",
            DEV_MODE="true",
            API_TOKENS="stop-token",
        )
        processes = launch(env, logs)
        try:

            async def all_ready() -> list[int]:
                return [await ready_status(port) for port in ports.values()]

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
            assert set(stopped) == set(SERVICES), f"still running after {BOUND_S} s: " + (
                ", ".join(sorted(set(SERVICES) - set(stopped)))
            )
            for service, process in processes.items():
                events = [
                    json.loads(line).get("event")
                    for line in logs[service].read_text().splitlines()
                    if line.startswith("{")
                ]
                # A clean stop (uvicorn re-raises the signal after it), or the
                # backstop's cut, said in the log.
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
