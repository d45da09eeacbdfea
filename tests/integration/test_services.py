"""Each service process: /health, /ready, /metrics, /docs; readiness through outages."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from services.api.main import create_app as api_app
from services.dispatcher.main import create_app as dispatcher_app
from services.reporter.main import create_app as reporter_app
from services.scheduler.main import create_app as scheduler_app
from tests.support.infra import make_settings
from tests.support.polling import eventually
from tests.support.service_processes import launch, own_infra, service_env, service_ports
from tools.infra import KafkaServer

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from fastapi import FastAPI

    from shared.settings import Settings
    from tests.support.infra import Infra

SERVICES: dict[str, Callable[[Settings], FastAPI]] = {
    "api": api_app,
    "scheduler": scheduler_app,
    "dispatcher": dispatcher_app,
    "reporter": reporter_app,
}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_operational_endpoints(infra: Infra, service: str) -> None:
    app = SERVICES[service](make_settings(infra))
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://svc"
        ) as client,
    ):
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "service": service}

        ready = await eventually(
            lambda: client.get("/ready"), lambda r: r.status_code == 200, what="ready"
        )
        assert ready.json() == {
            "status": "ready",
            "checks": {"postgresql": "ok", "kafka": "ok"},
            "failing": [],
        }

        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "notifications_http_request_duration_seconds_bucket" in metrics.text
        assert f'route="/ready",service="{service}",status="200"' in metrics.text

        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert "swagger-ui" in docs.text
        spec = (await client.get("/openapi.json")).json()
        assert {"/health", "/ready", "/metrics"} <= set(spec["paths"])


def _ready(port: int) -> Callable[[], Any]:
    async def probe() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(f"http://127.0.0.1:{port}/ready")

    return probe


async def test_ready_follows_kafka_and_postgres_outages_and_the_process_survives(
    tmp_path: Path,
) -> None:
    async with own_infra(tmp_path) as (kafka, pg):
        ports = service_ports(["scheduler"])
        log_file = tmp_path / "scheduler.log"
        env = service_env(pg.url, kafka.bootstrap, ports, READY_TIMEOUT_S="2")
        [process] = launch(env, {"scheduler": log_file}).values()
        probe = _ready(ports["scheduler"])
        try:
            await eventually(probe, lambda r: r.status_code == 200, timeout=60, what="ready")

            await asyncio.to_thread(kafka.stop)
            down = await eventually(probe, lambda r: r.status_code == 503, what="503 on kafka down")
            assert down.json()["failing"] == ["kafka"]
            assert down.json()["checks"]["postgresql"] == "ok"
            assert process.poll() is None

            await asyncio.to_thread(kafka.start)
            await eventually(probe, lambda r: r.status_code == 200, timeout=60, what="ready again")
            assert process.poll() is None

            await asyncio.to_thread(pg.stop)
            down = await eventually(probe, lambda r: r.status_code == 503, what="503 on pg down")
            assert down.json()["failing"] == ["postgresql"]
            assert process.poll() is None

            await asyncio.to_thread(pg.start)
            await eventually(probe, lambda r: r.status_code == 200, timeout=60, what="ready again")
            assert process.poll() is None

            process.send_signal(signal.SIGTERM)
            # uvicorn re-raises SIGTERM once its graceful shutdown is done.
            assert await asyncio.to_thread(process.wait, 30) in {0, -signal.SIGTERM}
            events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
            assert events.index("service_stopping") < events.index("service_stopped")
        finally:
            if process.poll() is None:
                process.kill()


async def test_a_service_starts_before_kafka_exists_and_becomes_ready(
    infra: Infra, tmp_path: Path
) -> None:
    kafka = KafkaServer(tmp_path / "kafka")
    settings = make_settings(infra, kafka_bootstrap=kafka.bootstrap)
    app = SERVICES["dispatcher"](settings)
    try:
        async with (
            LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://svc"
            ) as client,
        ):
            early = await client.get("/ready")
            assert early.status_code == 503
            assert early.json()["failing"] == ["kafka"]
            await asyncio.to_thread(kafka.start)
            await eventually(
                lambda: client.get("/ready"), lambda r: r.status_code == 200, timeout=60
            )
    finally:
        await asyncio.to_thread(kafka.stop)
