"""A Kafka handler that fails commits nothing: its records are retried until their
effect is committed, the service stays up and says so in `/ready` and its metrics.

The faults are real: a lock the test holds makes a service's statement wait, and
`pg_terminate_backend` kills the waiting connection mid-statement (what a PostgreSQL
restart does to every connection). The safety nets that would hide a lost record (the
scheduler's re-drive, the reporter's reconciliation) are off here: the records
themselves must be retried.

The mechanism on the real broker alone: tests/integration/test_consumer_failures.py.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from tests.support.databases import libpq
from tests.support.pipeline import Pipeline, fmt, log_lines, metric
from tests.support.polling import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.infra import Infra

NO_SAFETY_NETS = {"REDRIVE_INTERVAL_S": "0", "REPORTER_RECONCILE_INTERVAL_S": "0"}


def handler_failures(pipe: Pipeline, service: str) -> list[dict[str, Any]]:
    """Lines saying a Kafka handler of `service` failed: ours, or FastStream's own."""
    return [
        line
        for line in log_lines(pipe, service)
        if line.get("event") == "consumer_failing"
        or (line.get("level") == "error" and str(line.get("logger", "")).startswith("faststream"))
    ]


class HeldLock:
    """A lock held by the test's own transaction, and the killing of the connections of
    one service that wait on it."""

    def __init__(self, pipe: Pipeline, statement: str) -> None:
        self.pipe = pipe
        self.statement = statement
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> HeldLock:
        self.conn = await psycopg.AsyncConnection.connect(libpq(self.pipe.database_url))
        await self.conn.execute(self.statement)  # in a transaction, held until exit
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    async def release(self) -> None:
        if self.conn is not None:
            await self.conn.rollback()
            await self.conn.close()
            self.conn = None

    async def kill_waiters(self, service: str) -> int:
        async with await psycopg.AsyncConnection.connect(
            libpq(self.pipe.database_url), autocommit=True
        ) as conn:
            cursor = await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s "
                "AND wait_event_type = 'Lock'",
                (service,),
            )
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

    async def fail_handler(self, service: str) -> None:
        """Kill `service`'s waiting connections until a handler failure is logged."""

        async def kill() -> int:
            await self.kill_waiters(service)
            return len(handler_failures(self.pipe, service))

        await eventually(
            kill, lambda n: n > 0, timeout=120, interval=0.3, what=f"a {service} handler failure"
        )


async def ready(pipe: Pipeline, service: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{pipe.ports[service]}/ready")
        return response.status_code, response.json()


def assert_said_so(pipe: Pipeline, service: str, seen: tuple[int, dict[str, Any]]) -> None:
    """While failing, /ready was 503 naming the consumer; then one warning, one info."""
    code, body = seen
    assert code == 503, body
    failing = [name for name in body["failing"] if name.startswith("consumer:")]
    assert failing, body
    assert "failing on" in body["checks"][failing[0]]
    lines = log_lines(pipe, service)
    assert [line["event"] for line in lines if line.get("event") == "consumer_failing"] == [
        "consumer_failing"
    ]
    recovered = [line for line in lines if line.get("event") == "consumer_recovered"]
    assert len(recovered) == 1, recovered
    assert recovered[0]["failed_attempts"] >= 1, recovered
    # One warning for the episode, not an ERROR line per attempt.
    assert not [
        line for line in lines if line.get("level") == "error" and "faststream" in line["logger"]
    ]


# --- each service, end to end -------------------------------------------------------------


async def test_a_reporter_batch_that_fails_is_applied_once_afterwards(
    infra: Infra, tmp_path: Path
) -> None:
    pipe = Pipeline(infra, tmp_path, env=dict(NO_SAFETY_NETS))
    await pipe.start()
    try:
        tag = f"c{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(150, tag)
        async with HeldLock(pipe, "LOCK TABLE mailing_status_count IN EXCLUSIVE MODE") as lock:
            now = datetime.now(UTC)
            mailing = await pipe.mailing(
                date_time_start=fmt(now - timedelta(minutes=1)),
                date_time_stop=fmt(now + timedelta(minutes=10)),
                text="Counted after a failure",
                tag=[tag],
            )
            await lock.fail_handler("reporter")
            while_failing = await ready(pipe, "reporter")
            failing_gauge = await metric(pipe, "reporter", "notifications_consumer_failing_info")
        counts = await pipe.settled(mailing["id"], timeout=150)  # counters == COUNT(*)
        failures = await metric(pipe, "reporter", "notifications_consumer_handler_failures_total")
        after = await ready(pipe, "reporter")
    finally:
        await pipe.stop()
    assert counts == {"sent": 150}
    assert_said_so(pipe, "reporter", while_failing)
    assert failing_gauge == 1
    assert failures >= 1
    assert after[0] == 200, after


async def test_a_dispatcher_batch_whose_claim_fails_loses_no_command(
    infra: Infra, tmp_path: Path
) -> None:
    pipe = Pipeline(
        infra, tmp_path, env=dict(NO_SAFETY_NETS), services=("api", "scheduler", "reporter")
    )
    await pipe.start()
    try:
        tag = f"d{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(120, tag)
        now = datetime.now(UTC)
        mailing = await pipe.mailing(
            date_time_start=fmt(now - timedelta(minutes=1)),
            date_time_stop=fmt(now + timedelta(minutes=10)),
            text="Claimed after a failure",
            tag=[tag],
        )
        await eventually(
            lambda: pipe.statuses(mailing["id"]),
            lambda counts: counts == {"queued": 120},
            timeout=60,
            what="every command published",
        )
        async with HeldLock(pipe, "LOCK TABLE message IN EXCLUSIVE MODE") as lock:
            pipe.launch("dispatcher")
            await pipe.wait_ready("dispatcher")
            await lock.fail_handler("dispatcher")
            while_failing = await ready(pipe, "dispatcher")
        counts = await pipe.settled(mailing["id"], timeout=150)
        summary = await pipe.control.summary()
        accepted = [msg_id for msg_id, _ in await pipe.control.accepted()]
    finally:
        await pipe.stop()
    assert counts == {"sent": 120}
    assert summary["unique_accepted"] == 120
    assert [m for m, n in Counter(accepted).items() if n > 1] == []
    assert_said_so(pipe, "dispatcher", while_failing)


async def test_a_scheduler_edit_whose_handler_fails_is_applied_afterwards(
    infra: Infra, tmp_path: Path
) -> None:
    pipe = Pipeline(infra, tmp_path, env=dict(NO_SAFETY_NETS))
    await pipe.start()
    try:
        tag = f"e{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(60, tag)
        now = datetime.now(UTC)
        body = {
            "date_time_start": fmt(now - timedelta(minutes=1)),
            "date_time_stop": fmt(now + timedelta(hours=20)),
            "text": "Edited after a failure",
            "tag": [tag],
        }
        # A window that opens in two hours: the messages wait, `scheduled`.
        window = {
            "time_interval_start": (now + timedelta(hours=2)).strftime("%H:%M"),
            "time_interval_end": (now + timedelta(hours=3)).strftime("%H:%M"),
        }
        mailing = await pipe.mailing(**body, **window)
        mailing_id = mailing["id"]
        await eventually(
            lambda: pipe.statuses(mailing_id),
            lambda counts: counts == {"scheduled": 60},
            timeout=60,
            what="the messages planned for the window",
        )
        # The edit's handler waits for this mailing's advisory lock, which we hold.
        statement = f"SELECT pg_advisory_xact_lock({0x6D61696C}, {mailing_id})"
        async with HeldLock(pipe, statement) as lock:
            response = await pipe.api.put(f"/api/v1/notifications/{mailing_id}/", json=body)
            assert response.status_code == 200, response.text
            await lock.fail_handler("scheduler")
            while_failing = await ready(pipe, "scheduler")
        counts = await pipe.settled(mailing_id, timeout=150)  # no window now: all go out
    finally:
        await pipe.stop()
    assert counts == {"sent": 60}
    assert_said_so(pipe, "scheduler", while_failing)
