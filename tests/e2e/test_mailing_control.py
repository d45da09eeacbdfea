"""Pause, resume, cancel and replay end to end, asserted on the sandbox ledger: what
the gateway really received while a mailing was paused or after it was cancelled.

The dispatcher claims small batches at a limited rate here, so a mailing of a few
hundred messages is mid-run for seconds. "Nothing sent while paused" is observed, not
timed: once the paused mailing has nothing in flight, a marker mailing is delivered
from start to end, and the paused mailing's ledger count has not moved meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from tests.support.pipeline import Pipeline, running_now
from tests.support.polling import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.support.infra import Infra

URL = "/api/v1/notifications/"
AUDIENCE = 300
IN_FLIGHT = {"queued", "sending", "retrying"}
# Small claims at 20 requests a second: the mailing runs for about fifteen seconds.
ENV = {"DISPATCHER_BATCH_SIZE": "5", "PROVIDER_RATE_LIMIT": "20"}
RUN_FOR = timedelta(minutes=10)


@pytest.fixture
async def pipeline(infra: Infra, tmp_path: Path) -> AsyncIterator[Pipeline]:
    pipe = Pipeline(infra, tmp_path, env=ENV)
    await pipe.start()
    try:
        yield pipe
    finally:
        await pipe.stop()


async def delivered(pipe: Pipeline, mailing_id: int) -> list[int]:
    """The mailing's message ids the gateway accepted, one entry per acceptance."""
    ids = {
        row[0]
        for row in await asyncio.to_thread(
            pipe.query, "SELECT id FROM message WHERE mailing_id = %s", mailing_id
        )
    }
    return [msg_id for msg_id, _ in await pipe.control.accepted() if msg_id in ids]


async def started_mailing(pipe: Pipeline, text: str) -> int:
    """A mailing to AUDIENCE clients, returned once part of it has been delivered."""
    tag = f"t{uuid.uuid4().hex[:6]}"
    await pipe.bulk_clients(AUDIENCE, tag)
    mailing = await pipe.mailing(**running_now(RUN_FOR, text=text, tag=[tag]))
    await eventually(
        lambda: delivered(pipe, mailing["id"]),
        lambda ids: len(ids) >= 20,
        timeout=60,
        interval=0.05,
        what="the mailing under way",
    )
    return int(mailing["id"])


async def nothing_in_flight(pipe: Pipeline, mailing_id: int) -> dict[str, int]:
    """Wait until none of the mailing's messages is queued, being sent or retrying."""
    return await eventually(
        lambda: pipe.statuses(mailing_id),
        lambda counts: not IN_FLIGHT & set(counts),
        timeout=60,
        interval=0.1,
        what=f"mailing {mailing_id}: nothing in flight",
    )


async def marker_delivered(pipe: Pipeline) -> None:
    """A one-client mailing sent from start to end: the pipeline kept working."""
    tag = f"m{uuid.uuid4().hex[:6]}"
    await pipe.clients(1, tag=[tag])
    marker = await pipe.mailing(**running_now(RUN_FOR, text="marker", tag=[tag]))
    assert await pipe.settled(marker["id"]) == {"sent": 1}
    assert len(await delivered(pipe, marker["id"])) == 1


async def test_pause_sends_nothing_until_resumed_and_resume_finishes_once(
    pipeline: Pipeline,
) -> None:
    ident = await started_mailing(pipeline, "Paused midway")
    response = await pipeline.api.post(f"{URL}{ident}/pause/")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "paused"

    # Requests in flight finish; commands still in Kafka are given back unsent.
    counts = await nothing_in_flight(pipeline, ident)
    before = await delivered(pipeline, ident)
    assert 0 < len(before) < AUDIENCE
    assert counts == {"sent": len(before), "scheduled": AUDIENCE - len(before)}

    await marker_delivered(pipeline)
    assert await delivered(pipeline, ident) == before  # nothing accepted while paused
    assert await pipeline.statuses(ident) == counts
    body = (await pipeline.api.get(f"{URL}{ident}/")).json()
    assert body["state"] == "paused"
    assert body["messages_by_status"] == counts

    resumed = await pipeline.api.post(f"{URL}{ident}/resume/")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "running"
    assert await pipeline.settled(ident) == {"sent": AUDIENCE}
    after = await delivered(pipeline, ident)
    assert len(after) == AUDIENCE  # every message once: none twice, none lost
    assert len(set(after)) == AUDIENCE
    assert (await pipeline.api.get(f"{URL}{ident}/")).json()["state"] == "running"


async def test_cancel_turns_pending_messages_cancelled_and_sends_nothing_after(
    pipeline: Pipeline,
) -> None:
    ident = await started_mailing(pipeline, "Cancelled midway")
    response = await pipeline.api.post(f"{URL}{ident}/cancel/")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"

    # Settled: nothing pending, and the reporter's counters equal the rows.
    counts = await pipeline.settled(ident)
    sent = await delivered(pipeline, ident)
    assert 0 < len(sent) < AUDIENCE
    assert counts == {"sent": len(sent), "cancelled": AUDIENCE - len(sent)}

    await marker_delivered(pipeline)
    assert await delivered(pipeline, ident) == sent  # nothing sent after the cancel
    assert await pipeline.statuses(ident) == counts
    body = (await pipeline.api.get(f"{URL}{ident}/")).json()
    assert body["state"] == "cancelled"
    assert body["messages_by_status"] == counts  # history and statistics kept
    listed = (await pipeline.api.get(f"{URL}{ident}/messages/?status=cancelled&limit=5")).json()
    assert listed["count"] == AUDIENCE - len(sent)
    assert {m["last_error"] for m in listed["results"]} == {"mailing cancelled"}
    resume = await pipeline.api.post(f"{URL}{ident}/resume/")
    assert resume.status_code == 409, resume.text


async def test_replay_delivers_failed_messages_once(pipeline: Pipeline) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    clients = await pipeline.clients(3, tag=[tag])
    mailing = await pipeline.mailing(**running_now(RUN_FOR, text="Second chance", tag=[tag]))
    ident = mailing["id"]
    assert await pipeline.settled(ident) == {"sent": 3}
    # As a permanent gateway error leaves them: failed, with their reason.
    failed = [
        *pipeline.fail_sent(ident, clients[0]["id"]),
        *pipeline.fail_sent(ident, clients[1]["id"]),
    ]
    await pipeline.control.reset()
    body = (await pipeline.api.get(f"{URL}{ident}/")).json()
    assert body["failure_reasons"] == [{"reason": "rejected (400)", "count": 2}]
    listed = (await pipeline.api.get(f"{URL}{ident}/messages/?status=failed")).json()
    assert {(m["id"], m["last_error"]) for m in listed["results"]} == {
        (msg_id, "rejected (400)") for msg_id in failed
    }

    response = await pipeline.api.post(f"{URL}{ident}/replay/", json={"reason": "rejected (400)"})
    assert response.status_code == 200, response.text
    assert response.json() == {"replayed": 2}
    assert await pipeline.settled(ident) == {"sent": 3}
    assert sorted(await delivered(pipeline, ident)) == sorted(failed)  # each once
    assert (await pipeline.api.post(f"{URL}{ident}/replay/")).json() == {"replayed": 0}
