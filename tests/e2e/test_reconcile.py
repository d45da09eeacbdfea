"""The reporter's counters are reconciled with COUNT(*): a counter that drifted (an event
lost for good) is corrected and said so; events still in flight are never "corrected"."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx

from tests.support.pipeline import Pipeline, fmt, log_lines, metric
from tests.support.polling import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.infra import Infra


PENDING = {"scheduled", "queued", "sending", "retrying"}


def body(tag: str) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "date_time_start": fmt(now - timedelta(minutes=1)),
        "date_time_stop": fmt(now + timedelta(minutes=15)),
        "text": "Reconciled",
        "tag": [tag],
    }


async def exported(pipe: Pipeline, name: str) -> bool:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{pipe.ports['reporter']}/metrics")).text
    return any(line.startswith(name + "{") for line in text.splitlines())


def reconciled_lines(pipe: Pipeline) -> list[dict[str, object]]:
    return [line for line in log_lines(pipe, "reporter") if line["event"] == "counters_reconciled"]


async def test_a_corrupted_counter_is_corrected_and_logged(infra: Infra, tmp_path: Path) -> None:
    pipe = Pipeline(infra, tmp_path, env={"REPORTER_RECONCILE_INTERVAL_S": "1"})
    await pipe.start()
    try:
        tag = f"k{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(50, tag)
        mailing = await pipe.mailing(**body(tag))
        mailing_id = mailing["id"]
        assert await pipe.settled(mailing_id, timeout=120) == {"sent": 50}
        # Lost events, as it were: counts no event will ever fix.
        await asyncio.to_thread(
            pipe.query,
            "UPDATE mailing_status_count SET count = count + 7 "
            "WHERE mailing_id = %s AND status = 'sent' RETURNING count",
            mailing_id,
        )
        await asyncio.to_thread(
            pipe.query,
            "INSERT INTO mailing_status_count (mailing_id, status, count) "
            "VALUES (%s, 'failed', 3) RETURNING count",
            mailing_id,
        )
        assert await pipe.counters(mailing_id) == {"sent": 57, "failed": 3}
        await pipe.reconciled(mailing_id, {"sent": 50})
        corrections = await metric(
            pipe, "reporter", "notifications_reporter_counter_corrections_total"
        )
        api = (await pipe.api.get(f"/api/v1/notifications/{mailing_id}/")).json()
    finally:
        await pipe.stop()
    lines = {(line["mailing_id"], line["status"]): line for line in reconciled_lines(pipe)}
    assert set(lines) == {(mailing_id, "sent"), (mailing_id, "failed")}
    assert (lines[(mailing_id, "sent")]["counter"], lines[(mailing_id, "sent")]["true_value"]) == (
        57,
        50,
    )
    assert (
        lines[(mailing_id, "failed")]["counter"],
        lines[(mailing_id, "failed")]["true_value"],
    ) == (3, 0)
    assert corrections == 2
    assert api["messages_by_status"] == {"sent": 50}


async def test_reconciling_through_a_busy_run_corrects_nothing_and_ends_exact(
    infra: Infra, tmp_path: Path
) -> None:
    """Passes every 0.3 s while thousands of status events are in flight (outbox, Kafka,
    reporter batches; gateway faults make retries): no event is lost, so any correction
    would be a wrong one, and the counters end equal to COUNT(*)."""
    faults = {"error_5xx": 0.25, "latency_ms": 5, "seed": 5}
    pipe = Pipeline(
        infra,
        tmp_path,
        faults=faults,
        env={"REPORTER_RECONCILE_INTERVAL_S": "0.3", "REPORTER_BATCH_SIZE": "50"},
    )
    await pipe.start()
    try:
        tag = f"y{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(400, tag)
        first = await pipe.mailing(**body(tag))
        second = await pipe.mailing(**body(tag))
        # Reconciliation really ran while the counters lagged.
        await eventually(
            lambda: exported(pipe, "notifications_reporter_counter_drift_messages"),
            lambda found: found,
            timeout=60,
            what="the drift gauge exported (a pass ran)",
        )
        busy = await eventually(
            lambda: pipe.statuses(first["id"]),
            lambda counts: counts.get("sent", 0) > 0 and bool(set(counts) & PENDING),
            timeout=60,
            interval=0.1,
            what="the run under way",
        )
        one = await pipe.settled(first["id"], timeout=180)
        two = await pipe.settled(second["id"], timeout=180)
    finally:
        await pipe.stop()
    assert set(busy) & PENDING  # it was busy
    assert one == {"sent": 400}
    assert two == {"sent": 400}
    assert reconciled_lines(pipe) == []
