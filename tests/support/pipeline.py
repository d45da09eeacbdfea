"""The whole pipeline for end-to-end tests: API, scheduler and dispatcher (and the
reporter, when asked for) as real processes, the gateway sandbox over HTTP, a database
of the test's own (cloned from a migrated template) and a Kafka topic prefix of its own.
Every service logs JSON lines to `<workdir>/statistic.log`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
from sqlalchemy.engine import make_url

from services.sandbox.client import SandboxControl
from services.sandbox.process import SandboxProcess
from tests.support.databases import libpq
from tests.support.infra import REPO
from tests.support.polling import eventually
from tools.infra import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.infra import Infra

TOKEN = "e2e-token"
SERVICES = ("api", "scheduler", "dispatcher", "reporter")
TEMPLATE = "notifications_template"


def ensure_template(database_url: str) -> None:
    """A migrated database nobody connects to, so CREATE DATABASE ... TEMPLATE works."""
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,)
        ).fetchone()
        if exists:
            return
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    from tools.infra import run_migrations

    run_migrations(make_url(database_url).set(database=TEMPLATE).render_as_string(False))


@dataclass
class Pipeline:
    infra: Infra
    workdir: Path
    faults: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES

    def __post_init__(self) -> None:
        self.name = f"e2e_{uuid.uuid4().hex[:10]}"
        self.database_url = (
            make_url(self.infra.database_url).set(database=self.name).render_as_string(False)
        )
        self.sandbox = SandboxProcess(log_path=self.workdir / "sandbox.log")
        self.log_file = self.workdir / "statistic.log"

    async def start(self) -> None:
        await asyncio.to_thread(ensure_template, self.infra.database_url)
        with psycopg.connect(libpq(self.infra.database_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}" TEMPLATE "{TEMPLATE}"')
        base_url = await asyncio.to_thread(self.sandbox.start, None, self.faults or None)
        self.control = SandboxControl(self.sandbox.control_url)
        # Ports known before any start: the API's console reaches the reporter by its URL.
        first_ports = {service: free_port() for service in self.services}
        self.base_env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP": self.infra.kafka_bootstrap,
            "KAFKA_TOPIC_PREFIX": f"{self.name}.",
            "KAFKA_PARTITIONS": "3",
            "DEV_MODE": "true",
            "API_TOKENS": TOKEN,
            "PROVIDER_URL": f"{base_url}/v1",
            "PROVIDER_TOKEN": "sandbox-token",
            "PROVIDER_TIMEOUT_S": "1.5",
            "RETRY_DELAYS_S": "0.3,0.6,1.2",
            "SCHEDULER_POLL_INTERVAL_S": "0.1",
            "SENDING_LEASE_S": "4",
            "BREAKER_FAILURES": "10",
            "BREAKER_OPEN_S": "1",
            "BREAKER_OPEN_MAX_S": "4",
            "LOG_FILE": str(self.log_file),
            "LOG_LEVEL": "INFO",
            "REPORTER_URL": f"http://127.0.0.1:{first_ports.get('reporter', 9)}",
            **self.env,
        }
        for service in self.services:
            self.launch(service, port=first_ports[service])
        await asyncio.gather(*(self.wait_ready(service) for service in self.services))
        self.api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.ports['api']}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )

    def launch(self, service: str, name: str | None = None, port: int | None = None) -> None:
        name = name or service
        running = self.processes.get(name)
        if running is not None and running.poll() is None:
            # Replacing it in `processes` would leave it running after stop().
            raise RuntimeError(f"{name} is already running; kill it first or use another name")
        port = port or free_port()
        self.ports[name] = port
        env = {**self.base_env, f"{service.upper()}_PORT": str(port)}
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"{name}.stderr").open("ab"),
            start_new_session=True,
        )

    async def wait_ready(self, name: str) -> None:
        async def ready() -> int:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://127.0.0.1:{self.ports[name]}/ready")
                return response.status_code

        await eventually(ready, lambda code: code == 200, timeout=60, what=f"{name} ready")

    def kill(self, name: str) -> None:
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()
        if hasattr(self, "api"):
            await self.api.aclose()
        await asyncio.to_thread(self.sandbox.stop)
        with psycopg.connect(libpq(self.infra.database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    # --- helpers for assertions ----------------------------------------------------

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq(self.database_url)) as conn:
            return conn.execute(sql, params).fetchall()

    def fail_sent(self, mailing_id: int, client_id: int | None = None) -> list[int]:
        """Turn the mailing's sent messages (one client's, if given) into `failed`, as a
        permanent gateway error would have left them, adjusting the reporter's counters
        the same way (this shortcut emits no status event). Returns the message ids."""
        with psycopg.connect(libpq(self.database_url)) as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "UPDATE message SET status = 'failed', sent_at = NULL, "
                    "last_error = 'rejected (400)' WHERE mailing_id = %s AND status = 'sent' "
                    "AND (%s::bigint IS NULL OR client_id = %s) RETURNING id",
                    (mailing_id, client_id, client_id),
                ).fetchall()
            ]
            for status, delta in (("sent", -len(ids)), ("failed", len(ids))):
                conn.execute(
                    "INSERT INTO mailing_status_count (mailing_id, status, count) "
                    "VALUES (%s, %s, %s) ON CONFLICT (mailing_id, status) "
                    "DO UPDATE SET count = mailing_status_count.count + EXCLUDED.count",
                    (mailing_id, status, delta),
                )
        return ids

    async def statuses(self, mailing_id: int) -> dict[str, int]:
        rows = await asyncio.to_thread(
            self.query,
            "SELECT status, count(*) FROM message WHERE mailing_id = %s GROUP BY status",
            mailing_id,
        )
        return {status: count for status, count in rows}

    async def counters(self, mailing_id: int) -> dict[str, int]:
        """The reporter's counters for the mailing (zero counts left out)."""
        rows = await asyncio.to_thread(
            self.query,
            "SELECT status, count FROM mailing_status_count WHERE mailing_id = %s",
            mailing_id,
        )
        return {status: count for status, count in rows if count}

    async def settled(self, mailing_id: int, timeout: float = 60) -> dict[str, int]:
        """Wait until no message of the mailing is pending and the reporter's counters
        have caught up with the rows; return counts by status."""
        pending = {"scheduled", "queued", "sending", "retrying"}
        counts = await eventually(
            lambda: self.statuses(mailing_id),
            lambda counts: bool(counts) and not pending & set(counts),
            timeout=timeout,
            interval=0.3,
            what=f"mailing {mailing_id} settled",
        )
        await self.reconciled(mailing_id, counts)
        return counts

    async def reconciled(self, mailing_id: int, expected: dict[str, int]) -> None:
        """The counters equal `expected` (a fresh GROUP BY), within the reporter's lag."""
        await eventually(
            lambda: self.counters(mailing_id),
            lambda counters: counters == expected,
            timeout=30,
            interval=0.3,
            what=f"mailing {mailing_id} counters == {expected}",
        )

    async def outbox_drained(self, topic: str, timeout: float = 30) -> None:
        """Wait until the outbox has no row for `topic` left to publish: every record the
        services wrote for it is in Kafka then (read_topic sees them all)."""

        def unpublished() -> int:
            rows = self.query(
                "SELECT count(*) FROM outbox WHERE topic = %s AND published_at IS NULL", topic
            )
            return int(rows[0][0])

        await eventually(
            lambda: asyncio.to_thread(unpublished),
            lambda count: count == 0,
            timeout=timeout,
            what=f"the outbox's {topic} rows published",
        )

    async def clients(self, count: int, **body: Any) -> list[dict[str, Any]]:
        created = []
        for _ in range(count):
            number = f"79{uuid.uuid4().int % 10**9:09d}"
            response = await self.api.post("/api/v1/clients/", json={"telephone": number, **body})
            assert response.status_code == 201, response.text
            created.append(response.json())
        return created

    async def bulk_clients(self, count: int, tag: str, timezone: str = "UTC") -> None:
        """Many clients at once, straight into the table (tags included)."""

        def load() -> None:
            with psycopg.connect(libpq(self.database_url)) as conn:
                conn.execute("INSERT INTO tag (name) VALUES (%s) ON CONFLICT DO NOTHING", (tag,))
                conn.execute(
                    """
                    WITH new AS (
                        INSERT INTO client (phone, timezone)
                        SELECT '79' || lpad((floor(random() * 1e9))::bigint::text, 9, '0'), %s
                        FROM generate_series(1, %s)
                        ON CONFLICT DO NOTHING
                        RETURNING id
                    )
                    INSERT INTO client_tag (client_id, tag_id)
                    SELECT new.id, tag.id FROM new, tag WHERE tag.name = %s
                    """,
                    (timezone, count, tag),
                )

        await asyncio.to_thread(load)

    async def mailing(self, **body: Any) -> dict[str, Any]:
        response = await self.api.post("/api/v1/notifications/", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


# --- reading what the services said -------------------------------------------------


def fmt(moment: datetime) -> str:
    """The log files' time format (UTC), for `make logs`-style comparisons."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def running_now(stop_in: timedelta = timedelta(hours=1), **extra: Any) -> dict[str, Any]:
    """A mailing body's times: started a minute ago, stopping `stop_in` from now."""
    now = datetime.now(UTC)
    return {
        "date_time_start": fmt(now - timedelta(minutes=1)),
        "date_time_stop": fmt(now + stop_in),
        **extra,
    }


def log_lines(pipe: Pipeline, service: str) -> list[dict[str, Any]]:
    """The JSON lines `service` wrote to the pipeline's log file."""
    lines: list[dict[str, Any]] = []
    if not pipe.log_file.exists():
        return lines
    for raw in pipe.log_file.read_text().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("service") == service:
            lines.append(line)
    return lines


async def metric(pipe: Pipeline, service: str, name: str) -> float:
    """The sum of one metric's samples on `service`'s /metrics."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{pipe.ports[service]}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )
