"""Delivery rules end to end (docs/architecture.md#delivery-rules), asserted on the sandbox ledger:
what the gateway really received, when, and how many times."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from services.scheduler.convergence import MAILING_LOCK
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.support.infra import Infra


def fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def now() -> datetime:
    return datetime.now(UTC)


def window_body(start: datetime, stop: datetime, **extra: Any) -> dict[str, Any]:
    return {"date_time_start": fmt(start), "date_time_stop": fmt(stop), **extra}


def gmt_zone(local_hour: int) -> str:
    """An Etc/GMT zone whose local hour is `local_hour` right now."""
    offset = (local_hour - now().hour) % 24
    if offset > 14:
        offset -= 24
    if offset == 0:
        return "UTC"
    # POSIX sign: Etc/GMT-3 is three hours ahead of UTC.
    return f"Etc/GMT{-offset:+d}"


@pytest.fixture
async def pipeline(infra: Infra, tmp_path: Path) -> AsyncIterator[Pipeline]:
    pipe = Pipeline(infra, tmp_path)
    await pipe.start()
    try:
        yield pipe
    finally:
        await pipe.stop()


async def accepted_ids(pipe: Pipeline) -> list[int]:
    return [msg_id for msg_id, _ in await pipe.control.accepted()]


async def test_audience_is_tags_and_operator_codes_and_each_gets_one_message(
    pipeline: Pipeline,
) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    matching = []
    for code in ("900", "901"):
        for tags in ([tag], [tag, "other"]):
            number = f"7{code}{uuid.uuid4().int % 10**7:07d}"
            body = {"telephone": number, "tag": tags}
            response = await pipeline.api.post("/api/v1/clients/", json=body)
            matching.append((code, response.json()))
    await pipeline.clients(2, tag=["other"])  # no tag match
    mailing = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), now() + timedelta(minutes=5)),
        text="Hello, VIP",
        tag=[tag],
        mobile_code=[900],
    )
    counts = await pipeline.settled(mailing["id"])
    assert counts == {"sent": 2}
    summary = await pipeline.control.summary()
    assert summary["unique_accepted"] == 2
    assert summary["duplicates"] == []
    entries = await pipeline.control.entries()
    phones = {entry["phone"] for entry in entries}
    assert phones == {int(c["telephone"]) for code, c in matching if code == "900"}
    assert {entry["text"] for entry in entries} == {"Hello, VIP"}
    body = (await pipeline.api.get(f"/api/v1/notifications/{mailing['id']}/")).json()
    assert body["number_of_messages"] == {"Created, waiting": 0, "Sent": 2, "Unable to deliver": 0}
    assert body["state"] == "running"


async def test_a_future_mailing_starts_by_itself(pipeline: Pipeline) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    await pipeline.clients(3, tag=[tag])
    start = (now() + timedelta(seconds=4)).replace(microsecond=0)  # API precision
    mailing = await pipeline.mailing(
        **window_body(start, start + timedelta(minutes=5)), text="Later", tag=[tag]
    )
    assert await pipeline.control.accepted() == []
    assert await pipeline.statuses(mailing["id"]) == {}  # audience not fixed yet
    assert await pipeline.settled(mailing["id"], timeout=30) == {"sent": 3}
    arrivals = [at for _, at in await pipeline.control.accepted()]
    assert min(arrivals) >= start.timestamp()
    # The audience was fixed at the start, not when the mailing was created.
    [(activated_at,)] = pipeline.query(
        "SELECT activated_at FROM mailing WHERE id = %s", mailing["id"]
    )
    assert activated_at >= start


async def test_window_holds_and_crossing_midnight(pipeline: Pipeline) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    hour = now().hour
    # Window 22:00-04:00 local (crosses midnight).
    inside_late = await pipeline.clients(1, tag=[tag], timezone=gmt_zone(23))
    inside_early = await pipeline.clients(1, tag=[tag], timezone=gmt_zone(1))
    outside = await pipeline.clients(1, tag=[tag], timezone=gmt_zone(12))
    mailing = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), now() + timedelta(days=2)),
        text="Night",
        tag=[tag],
        time_interval_start="22:00",
        time_interval_end="04:00",
    )
    await eventually(
        lambda: accepted_ids(pipeline), lambda ids: len(ids) == 2, timeout=30, what="2 sent"
    )
    # The two sends recorded as sent; the third planned for its window, not sent.
    await eventually(
        lambda: pipeline.statuses(mailing["id"]),
        lambda counts: counts == {"sent": 2, "scheduled": 1},
        what="2 sent, 1 scheduled",
    )
    rows = pipeline.query(
        "SELECT client_id, status, due_at FROM message WHERE mailing_id = %s", mailing["id"]
    )
    by_client = {client: (status, due) for client, status, due in rows}
    assert by_client[inside_late[0]["id"]][0] == "sent"
    assert by_client[inside_early[0]["id"]][0] == "sent"
    status, due = by_client[outside[0]["id"]]
    assert status == "scheduled"
    # Local noon now: the window opens at 22:00 local, ten hours from this hour.
    expected = now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=(22 - 12))
    if now().hour != hour:  # the hour turned during the test
        expected -= timedelta(hours=1)
    assert abs((due - expected).total_seconds()) < 3600
    assert due.minute == 0
    assert len(await accepted_ids(pipeline)) == 2


async def test_no_allowed_time_before_stop_expires_at_once(pipeline: Pipeline) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    await pipeline.clients(2, tag=[tag], timezone=gmt_zone(12))
    mailing = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), now() + timedelta(minutes=30)),
        text="Never",
        tag=[tag],
        time_interval_start="20:00",
        time_interval_end="21:00",
    )
    assert await pipeline.settled(mailing["id"]) == {"expired": 2}
    body = (await pipeline.api.get(f"/api/v1/notifications/{mailing['id']}/")).json()
    assert body["number_of_messages"]["Unable to deliver"] == 2
    assert await pipeline.control.accepted() == []


async def test_nothing_is_sent_at_or_after_stop_time(pipeline: Pipeline) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    await pipeline.clients(20, tag=[tag])
    await pipeline.control.set_faults(error_5xx=1.0)  # nothing gets through
    stop = now() + timedelta(seconds=4)
    mailing = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), stop), text="Doomed", tag=[tag]
    )
    counts = await pipeline.settled(mailing["id"], timeout=40)
    assert counts == {"expired": 20}
    entries = await pipeline.control.entries()
    assert entries, "the gateway was tried before the stop time"
    assert max(entry["at_epoch"] for entry in entries) < stop.timestamp()
    assert (await pipeline.control.summary())["accepted"] == 0


async def test_edit_keeps_sent_messages_adds_new_clients_and_retries_failures(
    pipeline: Pipeline,
) -> None:
    tag, extra = f"t{uuid.uuid4().hex[:6]}", f"x{uuid.uuid4().hex[:6]}"
    early = await pipeline.clients(3, tag=[tag])
    mailing = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), now() + timedelta(minutes=10)),
        text="Version 1",
        tag=[tag],
    )
    assert await pipeline.settled(mailing["id"]) == {"sent": 3}
    # One of them failed for good in the first round (as a gateway 4xx would leave it).
    failed_client = early[0]["id"]
    assert len(pipeline.fail_sent(mailing["id"], failed_client)) == 1
    newcomers = await pipeline.clients(2, tag=[extra])
    edited = await pipeline.api.put(
        f"/api/v1/notifications/{mailing['id']}/",
        json=window_body(
            now() - timedelta(minutes=1),
            now() + timedelta(minutes=10),
            text="Version 2",
            tag=[tag, extra],
        ),
    )
    assert edited.status_code == 200
    assert edited.json()["version"] == 2

    async def texts() -> dict[int, list[str]]:
        result: dict[int, list[str]] = {}
        for entry in await pipeline.control.entries():
            if entry["answer"] == "ok":
                assert entry["phone"] is not None
                assert entry["text"] is not None
                result.setdefault(entry["phone"], []).append(entry["text"])
        return result

    received = await eventually(
        texts, lambda got: sum(len(v) for v in got.values()) == 6, timeout=30, what="6 sends"
    )
    assert await pipeline.settled(mailing["id"]) == {"sent": 5}  # 5 clients, 6 sends
    by_phone = {int(c["telephone"]): c["id"] for c in early + newcomers}
    for phone, got in received.items():
        client = by_phone[phone]
        if client == failed_client:
            assert got == ["Version 1", "Version 2"]  # the failed one got a new chance
        elif client in {c["id"] for c in newcomers}:
            assert got == ["Version 2"]
        else:
            assert got == ["Version 1"]  # already received: no resend


async def test_edit_cancels_clients_that_no_longer_match(pipeline: Pipeline) -> None:
    keep, drop = f"k{uuid.uuid4().hex[:6]}", f"d{uuid.uuid4().hex[:6]}"
    await pipeline.clients(2, tag=[keep], timezone=gmt_zone(12))
    await pipeline.clients(2, tag=[drop], timezone=gmt_zone(12))
    body = window_body(
        now() - timedelta(minutes=1),
        now() + timedelta(days=1),
        text="Held",
        tag=[keep, drop],
        time_interval_start="20:00",
        time_interval_end="21:00",
    )
    mailing = await pipeline.mailing(**body)
    await eventually(lambda: pipeline.statuses(mailing["id"]), lambda c: c == {"scheduled": 4})
    # Activation released its per-mailing lock (a leaked one would block the edit).
    held = pipeline.query(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = %s "
        "AND d.datname = %s",
        MAILING_LOCK,
        pipeline.name,
    )
    assert held == [(0,)]
    await pipeline.api.put(f"/api/v1/notifications/{mailing['id']}/", json={**body, "tag": [keep]})
    counts = await eventually(
        lambda: pipeline.statuses(mailing["id"]),
        lambda c: c == {"scheduled": 2, "cancelled": 2},
        what="two cancelled",
    )
    assert counts == {"scheduled": 2, "cancelled": 2}


async def test_deleted_mailing_sends_nothing_more(pipeline: Pipeline) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    await pipeline.clients(3, tag=[tag], timezone=gmt_zone(12))
    mailing = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), now() + timedelta(days=1)),
        text="Held",
        tag=[tag],
        time_interval_start="20:00",
        time_interval_end="21:00",
    )
    await eventually(lambda: pipeline.statuses(mailing["id"]), lambda c: c == {"scheduled": 3})
    # Make them due right now, then delete the mailing at once.
    [(due_at,), *_] = pipeline.query(
        "UPDATE message SET due_at = now() + interval '2 seconds' "
        "WHERE mailing_id = %s RETURNING due_at",
        mailing["id"],
    )
    assert (await pipeline.api.delete(f"/api/v1/notifications/{mailing['id']}/")).status_code == 204
    # A later event to wait for: another mailing (no window, so its message goes out)
    # starting a second or more after they were due.
    marker_tag = f"t{uuid.uuid4().hex[:6]}"
    await pipeline.clients(1, tag=[marker_tag])
    start = (due_at + timedelta(seconds=2)).replace(microsecond=0)  # API precision
    marker = await pipeline.mailing(
        **window_body(start, start + timedelta(minutes=5)), text="Marker", tag=[marker_tag]
    )
    assert await pipeline.settled(marker["id"], timeout=30) == {"sent": 1}
    [(marker_message,)] = pipeline.query(
        "SELECT id FROM message WHERE mailing_id = %s", marker["id"]
    )
    # Past their due time the gateway received the marker alone.
    assert await accepted_ids(pipeline) == [marker_message]
    assert await pipeline.statuses(mailing["id"]) == {}


async def test_deleted_client_is_cancelled_and_history_stays(pipeline: Pipeline) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    [sent_client] = await pipeline.clients(1, tag=[tag])
    first = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), now() + timedelta(days=1)),
        text="Sent before",
        tag=[tag],
    )
    assert await pipeline.settled(first["id"]) == {"sent": 1}
    await pipeline.api.patch(
        f"/api/v1/clients/{sent_client['id']}/", json={"timezone": gmt_zone(12)}
    )
    second = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), now() + timedelta(days=1)),
        text="Held",
        tag=[tag],
        time_interval_start="20:00",
        time_interval_end="21:00",
    )
    await eventually(lambda: pipeline.statuses(second["id"]), lambda c: c == {"scheduled": 1})
    assert (await pipeline.api.delete(f"/api/v1/clients/{sent_client['id']}/")).status_code == 204
    assert await pipeline.statuses(second["id"]) == {"cancelled": 1}
    assert await pipeline.statuses(first["id"]) == {"sent": 1}  # history stays
    assert len(await pipeline.control.accepted()) == 1


async def test_dead_letters_can_be_replayed(pipeline: Pipeline) -> None:
    import os
    import subprocess
    import sys

    from aiokafka import AIOKafkaProducer

    from shared.events import SendData, SendMessage
    from tests.support.infra import REPO

    tag = f"t{uuid.uuid4().hex[:6]}"
    [client] = await pipeline.clients(1, tag=[tag])
    mailing = await pipeline.mailing(
        **window_body(now() - timedelta(minutes=1), now() + timedelta(minutes=10)),
        text="Second chance",
        tag=[tag],
    )
    assert await pipeline.settled(mailing["id"]) == {"sent": 1}
    # As a permanent gateway error leaves it: failed, and its command in the DLQ.
    [message_id] = pipeline.fail_sent(mailing["id"])
    await pipeline.control.reset()
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.infra.kafka_bootstrap)
    await producer.start()
    try:
        dead = SendMessage(
            payload=SendData(
                message_id=message_id,
                mailing_id=mailing["id"],
                client_id=client["id"],
                last_error="rejected (400)",
            )
        )
        await producer.send_and_wait(
            f"{pipeline.name}.message.send.dlq",
            dead.model_dump_json().encode(),
            key=str(message_id).encode(),
        )
    finally:
        await producer.stop()

    def replay(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "services.dispatcher.replay_dlq", *args],
            cwd=REPO,
            env={**pipeline.base_env, "LOG_FILE": ""},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    assert replay("--dry-run") == "records=1 selected=1 replayed=0 skipped=0 unreadable=0"
    assert await pipeline.statuses(mailing["id"]) == {"failed": 1}
    assert replay() == "records=1 selected=1 replayed=1 skipped=0 unreadable=0"
    assert await pipeline.settled(mailing["id"]) == {"sent": 1}
    assert [msg_id for msg_id, _ in await pipeline.control.accepted()] == [message_id]
    assert replay() == "records=0 selected=0 replayed=0 skipped=0 unreadable=0"
    assert os.environ  # the replay used the pipeline's own settings
