"""Imported clients in the pipeline, asserted on the sandbox ledger: they receive
mailings as clients added one by one do, and an upsert that moves a client's time zone
re-plans its waiting message as a PUT does (the `clients.imported` event)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.pipeline import Pipeline
from tests.support.polling import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.support.infra import Infra

CSV = {"Content-Type": "text/csv"}


def now() -> datetime:
    return datetime.now(UTC)


def fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def gmt_zone(local_hour: int) -> str:
    """An Etc/GMT zone whose local hour is `local_hour` right now."""
    offset = (local_hour - now().hour) % 24
    if offset > 14:
        offset -= 24
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def number() -> str:
    return f"79{uuid.uuid4().int % 10**9:09d}"


@pytest.fixture
async def pipeline(infra: Infra, tmp_path: Path) -> AsyncIterator[Pipeline]:
    pipe = Pipeline(infra, tmp_path)
    await pipe.start()
    try:
        yield pipe
    finally:
        await pipe.stop()


async def _import(pipe: Pipeline, rows: list[str], mode: str = "create") -> dict[str, Any]:
    body = "telephone,tag,timezone\n" + "".join(f"{row}\n" for row in rows)
    response = await pipe.api.post(
        "/api/v1/clients/import/", params={"mode": mode}, content=body.encode(), headers=CSV
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _phones(pipe: Pipeline) -> list[int]:
    entries = await pipe.control.entries()
    return sorted(int(entry["phone"] or 0) for entry in entries if entry["answer"] == "ok")


async def test_imported_clients_receive_mailings_as_posted_ones_do(pipeline: Pipeline) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    first = [number() for _ in range(3)]
    result = await _import(pipeline, [f"{n},{tag}|other,UTC" for n in first] + ["8000,x,UTC"])
    assert (result["created"], result["rejected_count"]) == (3, 1)
    posted = await pipeline.clients(1, tag=[tag])
    body = {
        "date_time_start": fmt(now() - timedelta(minutes=1)),
        "date_time_stop": fmt(now() + timedelta(minutes=10)),
        "text": "Imported hello",
        "tag": [tag],
    }
    mailing = await pipeline.mailing(**body)
    assert await pipeline.settled(mailing["id"]) == {"sent": 4}
    expected = sorted([int(n) for n in first] + [int(posted[0]["telephone"])])
    assert await _phones(pipeline) == expected

    # Imported while the mailing runs: it joins as a POSTed client does, when the
    # mailing is edited (the audience is fixed at activation, delivery rule 1).
    late = number()
    assert (await _import(pipeline, [f"{late},{tag},Europe/Moscow"]))["created"] == 1
    edited = await pipeline.api.put(
        f"/api/v1/notifications/{mailing['id']}/", json={**body, "text": "Imported again"}
    )
    assert edited.status_code == 200, edited.text
    await eventually(
        lambda: pipeline.statuses(mailing["id"]),
        lambda counts: counts == {"sent": 5},
        timeout=30,
        what="the late client's message sent",
    )
    assert await _phones(pipeline) == sorted([*expected, int(late)])
    entries = await pipeline.control.entries()
    assert [e["text"] for e in entries if e["phone"] == int(late)] == ["Imported again"]


async def test_an_upsert_that_moves_a_time_zone_replans_the_waiting_message(
    pipeline: Pipeline,
) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    waiting = number()
    # Local noon: outside the 22:00-04:00 window, so its message waits for the evening.
    assert (await _import(pipeline, [f"{waiting},{tag},{gmt_zone(12)}"]))["created"] == 1
    mailing = await pipeline.mailing(
        date_time_start=fmt(now() - timedelta(minutes=1)),
        date_time_stop=fmt(now() + timedelta(days=2)),
        text="Night",
        tag=[tag],
        time_interval_start="22:00",
        time_interval_end="04:00",
    )
    await eventually(
        lambda: pipeline.statuses(mailing["id"]),
        lambda counts: counts == {"scheduled": 1},
        timeout=30,
        what="the message planned for the evening",
    )
    moved = await _import(pipeline, [f"{waiting},{tag},{gmt_zone(23)}"], mode="upsert")
    assert (moved["created"], moved["updated"], moved["unchanged"]) == (0, 1, 0)
    assert await pipeline.settled(mailing["id"], timeout=30) == {"sent": 1}
    assert await _phones(pipeline) == [int(waiting)]
