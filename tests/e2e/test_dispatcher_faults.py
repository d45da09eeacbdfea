"""The dispatcher against its own failures: a lease outlived by a slow batch, PostgreSQL
unreachable while requests are in flight, a gateway header that breaks the arithmetic,
retries that would never end, and a gateway URL that is wrong."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.engine import make_url

from tests.support.kafka_helpers import read_topic
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually
from tests.support.tcp_proxy import CuttableProxy

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.infra import Infra


def fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def body(tag: str, stop_in: timedelta) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "date_time_start": fmt(now - timedelta(minutes=1)),
        "date_time_stop": fmt(now + stop_in),
        "text": "Dispatcher faults",
        "tag": [tag],
    }


def log_events(pipe: Pipeline, event: str) -> list[dict[str, Any]]:
    if not pipe.log_file.exists():
        return []
    found = []
    for line in pipe.log_file.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            found.append(entry)
    return found


def why_twice(pipe: Pipeline, duplicates: list[int]) -> str:
    """For a failure message: what the dispatcher saw of each message sent twice."""
    wanted = set(duplicates[:5])
    seen = [
        (e.get("message_id"), e["event"], e.get("outcome") or e.get("count"), e.get("error"))
        for event in ("gateway_response", "messages_recovered", "requests_given_back")
        for e in log_events(pipe, event)
        if e.get("message_id") in wanted or event != "gateway_response"
    ]
    return f"sent twice: {duplicates}; dispatcher saw: {seen[:40]}"


async def test_a_batch_that_outlives_its_lease_sends_nothing_twice(
    infra: Infra, tmp_path: Path
) -> None:
    # One request at a time, 300 ms each: a claimed batch of 30 needs 9 s, the lease is 4 s.
    # (A timeout well above the latency: a request that times out after the gateway
    # took it would be re-sent, legitimately, and this test is not about that.)
    env = {
        "SENDING_LEASE_S": "4",
        "SENDING_LEASE_MARGIN_S": "1",
        "PROVIDER_TIMEOUT_S": "2",
        "PROVIDER_CONCURRENCY": "1",
    }
    pipe = Pipeline(infra, tmp_path, faults={"latency_ms": 300}, env=env)
    await pipe.start()
    try:
        tag = f"l{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(30, tag)
        mailing = await pipe.mailing(**body(tag, timedelta(minutes=10)))
        counts = await pipe.settled(mailing["id"], timeout=180)
        summary = await pipe.control.summary()
        given_back = log_events(pipe, "requests_given_back")
    finally:
        await pipe.stop()
    assert summary["duplicates"] == [], why_twice(pipe, summary["duplicates"])
    assert counts == {"sent": 30}
    assert summary["unique_accepted"] == 30
    assert given_back, "the batch never outlived its lease: the test proves nothing"


@pytest.mark.parametrize(
    ("deduplicates", "outage_s"),
    [
        # Shorter than the lease: the held outcomes are written, nothing is recovered.
        pytest.param("true", 3, id="outage shorter than the lease"),
        # Longer: the scheduler recovers the messages as unknown outcomes (no re-send
        # without de-duplication); the held outcomes then correct them.
        pytest.param("false", 14, id="outage past the lease, no deduplication"),
    ],
)
async def test_outcomes_are_held_while_postgres_is_unreachable_and_nothing_is_sent_twice(
    infra: Infra, tmp_path: Path, deduplicates: str, outage_s: float
) -> None:
    # Requests take 1 s; PostgreSQL is cut for the dispatcher alone while they are in flight.
    env = {
        "PROVIDER_TIMEOUT_S": "5",
        "SENDING_LEASE_S": "10",
        "REQUEUE_AFTER_S": "5",
        "PROVIDER_DEDUPLICATES": deduplicates,
    }
    pipe = Pipeline(
        infra,
        tmp_path,
        faults={"latency_ms": 1000},
        env=env,
        services=("api", "scheduler", "reporter"),
    )
    url = make_url(infra.database_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    await pipe.start()
    try:
        port = await proxy.start()
        pipe.base_env = {
            **pipe.base_env,
            "DATABASE_URL": make_url(pipe.database_url)
            .set(host="127.0.0.1", port=port)
            .render_as_string(False),
        }
        pipe.launch("dispatcher")
        await pipe.wait_ready("dispatcher")
        tag = f"p{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(150, tag)
        mailing = await pipe.mailing(**body(tag, timedelta(minutes=10)))
        # Requests reach the gateway (and are answered a second later): cut now.
        await eventually(
            lambda: pipe.control.entries(limit=1),
            lambda entries: bool(entries),
            timeout=60,
            interval=0.05,
            what="first request",
        )
        await proxy.cut()
        # The requests in flight are answered during the outage; their outcomes cannot
        # be written until it ends.
        await asyncio.sleep(outage_s)
        await proxy.restore()
        counts = await pipe.settled(mailing["id"], timeout=180)
        summary = await pipe.control.summary()
        held = log_events(pipe, "outcomes_held")
        written = log_events(pipe, "outcomes_written_after_outage")
        recovered = log_events(pipe, "messages_recovered")
    finally:
        await pipe.stop()
        await proxy.close()
    assert summary["duplicates"] == [], why_twice(pipe, summary["duplicates"])
    assert counts == {"sent": 150}
    assert summary["unique_accepted"] == 150
    assert held, "no outcome was held"
    assert written, "held outcomes were never written"
    if deduplicates == "false":
        assert {line["status"] for line in recovered} == {"failed"}, recovered


@pytest.mark.parametrize("retry_after", ["1e12", "inf"])
async def test_an_absurd_retry_after_costs_only_its_own_message(
    infra: Infra, tmp_path: Path, retry_after: str
) -> None:
    faults = {"error_429": 0.1, "retry_after": retry_after, "seed": 11}
    env = {"PROVIDER_TIMEOUT_S": "5", "SENDING_LEASE_S": "12"}
    pipe = Pipeline(infra, tmp_path, faults=faults, env=env)
    await pipe.start()
    try:
        tag = f"r{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(100, tag)
        mailing = await pipe.mailing(**body(tag, timedelta(minutes=10)))
        await eventually(
            pipe.control.summary,
            lambda s: s["by_answer"].get("429", 0) > 0 and s["unique_accepted"] > 0,
            timeout=60,
            what="some 429 and some accepted",
        )
        # Every message gets its own outcome: sent, or (a 429 asking for longer than
        # the stop time allows) expired.
        counts = await pipe.settled(mailing["id"], timeout=120)
        limited = await asyncio.to_thread(
            pipe.query,
            "SELECT status, last_error FROM message WHERE mailing_id = %s AND status <> 'sent'",
            mailing["id"],
        )
        summary = await pipe.control.summary()
    finally:
        await pipe.stop()
    assert summary["duplicates"] == [], why_twice(pipe, summary["duplicates"])
    assert counts["sent"] == summary["unique_accepted"]
    assert counts["sent"] + counts.get("expired", 0) == 100
    assert limited, "no message was rate limited"
    assert all(
        status == "expired" and "rate limited (429)" in (error or "") for status, error in limited
    ), limited


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [("RETRY_MAX_ATTEMPTS", "3", "3 attempts"), ("RETRY_MAX_AGE_S", "3", "retrying for")],
)
async def test_retries_end_at_the_caps_with_failed_and_a_dead_letter(
    infra: Infra, tmp_path: Path, setting: str, value: str, reason: str
) -> None:
    env = {setting: value, "BREAKER_FAILURES": "100000"}
    pipe = Pipeline(infra, tmp_path, faults={"error_5xx": 1.0}, env=env)
    await pipe.start()
    try:
        tag = f"c{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(10, tag)
        mailing = await pipe.mailing(**body(tag, timedelta(seconds=40)))
        counts = await pipe.settled(mailing["id"], timeout=120)
        rows = await asyncio.to_thread(
            pipe.query,
            "SELECT id, last_error FROM message WHERE mailing_id = %s",
            mailing["id"],
        )
        await pipe.outbox_drained(f"{pipe.name}.message.send.dlq")
        dead = await read_topic(
            infra.kafka_bootstrap, f"{pipe.name}.message.send.dlq", expect=10, timeout=30
        )
        requests = Counter(entry["msg_id"] for entry in await pipe.control.entries(limit=1000))
    finally:
        await pipe.stop()
    assert counts == {"failed": 10}
    assert all(reason in (error or "") for _, error in rows), rows
    assert sorted(int(key) for key, _ in dead) == sorted(message_id for message_id, _ in rows)
    if setting == "RETRY_MAX_ATTEMPTS":
        assert set(requests.values()) == {3}, requests


async def test_a_wrong_gateway_url_holds_messages_until_it_is_fixed(
    infra: Infra, tmp_path: Path
) -> None:
    # The breaker would space the refusals out; every message is to meet one soon.
    env = {"BREAKER_FAILURES": "100000"}
    pipe = Pipeline(infra, tmp_path, env=env, services=("api", "scheduler", "reporter"))
    await pipe.start()
    try:
        right = pipe.base_env["PROVIDER_URL"]
        pipe.base_env = {**pipe.base_env, "PROVIDER_URL": right.removesuffix("/v1") + "/wrong"}
        pipe.launch("dispatcher")
        await pipe.wait_ready("dispatcher")
        tag = f"u{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(20, tag)
        mailing = await pipe.mailing(**body(tag, timedelta(minutes=10)))

        def held() -> set[int]:
            return {e["message_id"] for e in log_events(pipe, "gateway_config_failed")}

        async def probe() -> tuple[dict[str, int], set[int]]:
            return await pipe.statuses(mailing["id"]), await asyncio.to_thread(held)

        during, logged = await eventually(
            probe,
            lambda r: "failed" in r[0] or len(r[1]) == 20,
            timeout=60,
            what="every message refused once",
        )
        assert "failed" not in during, during
        assert len(logged) == 20
        [line] = log_events(pipe, "gateway_config_failed")[:1]
        assert "PROVIDER_URL" in line["hint"]
        # The operator fixes the URL and restarts the dispatcher.
        pipe.kill("dispatcher")
        pipe.base_env = {**pipe.base_env, "PROVIDER_URL": right}
        pipe.launch("dispatcher")
        await pipe.wait_ready("dispatcher")
        counts = await pipe.settled(mailing["id"], timeout=120)
        summary = await pipe.control.summary()
    finally:
        await pipe.stop()
    assert counts == {"sent": 20}
    assert summary["unique_accepted"] == 20
    assert summary["duplicates"] == [], why_twice(pipe, summary["duplicates"])


async def test_a_dispatcher_stopped_mid_batch_leaves_no_unknown_outcome(
    infra: Infra, tmp_path: Path
) -> None:
    # A batch of 200 at 20 requests a second lasts 10 s; SIGTERM lands a second into it
    # and the process has 3 s to stop. With a gateway that does not de-duplicate, a
    # message left in `sending` becomes `failed` ("unknown outcome") at the lease
    # recovery; so the requests not started are given back at the stop, unsent.
    env = {
        "PROVIDER_DEDUPLICATES": "false",
        "PROVIDER_RATE_LIMIT": "20",
        "DISPATCHER_BATCH_SIZE": "200",
        "PROVIDER_TIMEOUT_S": "3",
        "SENDING_LEASE_S": "15",
        "SHUTDOWN_GRACE_S": "3",
    }
    pipe = Pipeline(infra, tmp_path, env=env)
    await pipe.start()
    try:
        tag = f"s{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(200, tag)
        mailing = await pipe.mailing(**body(tag, timedelta(minutes=10)))
        await eventually(
            pipe.control.summary,
            lambda s: s["accepted"] >= 10,
            timeout=60,
            interval=0.05,
            what="the batch under way",
        )
        stopping = pipe.processes["dispatcher"]
        stopping.terminate()
        await asyncio.to_thread(stopping.wait, 60)
        pipe.launch("dispatcher")
        await pipe.wait_ready("dispatcher")
        counts = await pipe.settled(mailing["id"], timeout=180)
        summary = await pipe.control.summary()
        given_back = log_events(pipe, "requests_given_back_at_stop")
    finally:
        await pipe.stop()
    assert summary["duplicates"] == [], why_twice(pipe, summary["duplicates"])
    assert counts == {"sent": 200}
    assert summary["unique_accepted"] == 200
    assert given_back, "the stop did not land mid-batch: the test proves nothing"
