"""The dispatcher's pure parts: classifying gateway answers, the circuit breaker,
which send commands wait in Kafka, and what a stop does to the requests not started."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from services.dispatcher.breaker import CircuitBreaker, State
from services.dispatcher.decisions import STOPPING, Claimed
from services.dispatcher.delivery import Delivery
from services.dispatcher.gateway import MAX_RETRY_AFTER_S, Outcome, Result, _seconds, classify
from services.dispatcher.handlers import split_ready
from services.dispatcher.ratelimit import RateLimiter
from shared.events import SendData, SendMessage
from shared.kafka import topics_from
from shared.models import MessageStatus
from shared.settings import load_settings


@pytest.mark.parametrize(
    ("status", "body", "outcome", "ambiguous"),
    [
        (200, b'{"code": 0, "message": "OK"}', Outcome.OK, False),
        (200, b'{"code": 0}', Outcome.OK, False),
        (200, b'{"code": "0", "message": "OK"}', Outcome.TRANSIENT, True),
        (200, b'{"code": false}', Outcome.TRANSIENT, True),
        (200, b"OK", Outcome.TRANSIENT, True),
        (200, b"<html>hi</html>", Outcome.TRANSIENT, True),
        (200, b"[0]", Outcome.TRANSIENT, True),
        (400, b'{"detail": "id mismatch"}', Outcome.PERMANENT, False),
        (404, b"", Outcome.CONFIG, False),
        (405, b"", Outcome.CONFIG, False),
        (410, b"", Outcome.PERMANENT, False),
        (401, b"", Outcome.AUTH, False),
        (403, b"", Outcome.AUTH, False),
        (408, b"", Outcome.TRANSIENT, True),
        (429, b"", Outcome.TRANSIENT, False),
        (500, b"", Outcome.TRANSIENT, True),
        (503, b"", Outcome.TRANSIENT, True),
    ],
)
def test_classify(status: int, body: bytes, outcome: Outcome, ambiguous: bool) -> None:
    result = classify(status, body)
    assert result.outcome == outcome
    assert result.ambiguous == ambiguous
    assert result.status == status


def test_retry_after_is_read_from_429() -> None:
    assert classify(429, b"", "7").retry_after == 7.0
    assert classify(429, b"", "soon").retry_after is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        ("-5", 0.0),
        ("1e12", MAX_RETRY_AFTER_S),
        ("inf", MAX_RETRY_AFTER_S),
        ("-inf", 0.0),
        ("nan", None),
        ("soon", None),
        ("", None),
        # An HTTP date (RFC 9110): seconds from now, clamped.
        ("Thu, 01 Jan 2026 00:01:40 GMT", 100.0),
        ("Thu, 01 Jan 2026 00:00:00 GMT", 0.0),
        ("Fri, 01 Jan 2100 00:00:00 GMT", MAX_RETRY_AFTER_S),
        ("Thu, 01 Jan 2026 00:01:40", None),  # no zone: not an HTTP date
    ],
)
def test_retry_after_is_clamped_or_ignored(header: str, seconds: float | None) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert _seconds(header, now) == seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_probes_and_backs_off() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, open_s=5, open_max_s=12, clock=clock)
    for _ in range(2):
        breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == State.OPEN
    assert not breaker.allow()
    assert breaker.wait_s() == 5
    clock.now = 5
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # nobody else meanwhile
    breaker.failure()  # the probe failed: open twice as long
    assert breaker.state == State.OPEN
    assert breaker.wait_s() == 10
    clock.now = 15
    assert breaker.allow()
    breaker.failure()
    assert breaker.wait_s() == 12  # capped
    clock.now = 27
    assert breaker.allow()
    breaker.success()
    assert breaker.state.name == "CLOSED"
    assert breaker.allow()
    assert breaker.opened_count == 3


def test_a_success_resets_the_count_of_failures() -> None:
    breaker = CircuitBreaker(failures=3, open_s=5, open_max_s=60, clock=Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state == State.CLOSED


def record(partition: int, offset: int, not_before: datetime | None) -> Any:
    command = SendMessage(
        payload=SendData(message_id=offset, mailing_id=1, client_id=1, not_before=not_before)
    )
    return ConsumerRecord(
        "retry.1",
        partition,
        offset,
        0,
        0,
        None,
        command.model_dump_json().encode(),
        None,
        0,
        0,
        [],
    )


def test_split_ready_holds_each_partition_from_its_first_early_record() -> None:
    now = datetime(2031, 1, 1, tzinfo=UTC)
    past, future = now - timedelta(seconds=1), now + timedelta(seconds=30)
    records = (
        record(0, 10, past),
        record(0, 11, future),
        record(0, 12, past),  # after a held record: waits with it
        record(1, 20, None),
        record(1, 21, past),
    )
    ready, hold = split_ready(records, now, breaker_wait_s=0)
    assert [command.message_id for command in ready] == [10, 20, 21]
    assert hold == {TopicPartition("retry.1", 0): (11, 30.0)}


def test_an_open_breaker_holds_everything() -> None:
    now = datetime(2031, 1, 1, tzinfo=UTC)
    ready, hold = split_ready((record(0, 5, None), record(1, 7, None)), now, breaker_wait_s=4)
    assert ready == []
    assert hold == {
        TopicPartition("retry.1", 0): (5, 4),
        TopicPartition("retry.1", 1): (7, 4),
    }


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
async def test_a_refused_connection_is_retryable_and_not_ambiguous(client: str) -> None:
    """Nothing was sent: even for a gateway that does not de-duplicate, it may be retried
    (an ambiguous outcome would be marked failed there)."""
    from services.dispatcher.gateway import create_gateway
    from shared.settings import load_settings
    from tools.infra import free_port

    settings = load_settings(
        provider_url=f"http://127.0.0.1:{free_port()}/v1",  # nothing listens there
        provider_client=client,
        provider_deduplicates=False,
        log_file=None,
    )
    gateway = create_gateway(settings)
    try:
        result = await gateway.send(1, "79001234567", "hello", 2.0)
    finally:
        await gateway.close()
    assert result.outcome == Outcome.TRANSIENT
    assert result.ambiguous is False
    assert result.error is not None
    assert result.error.startswith("connection failed")


# --- stopping ------------------------------------------------------------------------


async def test_a_stop_ends_the_wait_for_the_rate_limit_without_a_token() -> None:
    limiter = RateLimiter(0.001)  # one token now, the next in 1,000 s
    stop = asyncio.Event()
    assert await limiter.acquire(stop)
    waiting = [asyncio.create_task(limiter.acquire(stop)) for _ in range(3)]
    await asyncio.sleep(0)
    stop.set()
    # Every caller queued for the next token returns, none with a token.
    assert await asyncio.wait_for(asyncio.gather(*waiting), 30) == [False, False, False]


class CountingGateway:
    def __init__(self) -> None:
        self.sent: list[int] = []

    async def send(self, message_id: int, phone: str, text: str, deadline_s: float) -> Result:
        self.sent.append(message_id)
        return Result(Outcome.OK, 200)

    async def close(self) -> None:
        return None


def _claimed(message_id: int) -> Claimed:
    return Claimed(
        message_id=message_id,
        mailing_id=1,
        client_id=message_id,
        attempt=1,
        previous="queued",
        text="hello",
        stop_at=datetime.now(UTC) + timedelta(hours=1),
        window=None,
        phone="79001234567",
        zone=ZoneInfo("UTC"),
        tier=0,
        lease_ends=time.monotonic() + 60,
    )


async def test_once_the_dispatcher_stops_no_request_starts_and_the_rest_are_given_back() -> None:
    """Requests not started when the process stops go back to their retry tier, unsent
    and not counted, instead of staying in `sending` until the lease recovery (which,
    for a gateway that does not de-duplicate, would fail them as unknown outcomes)."""
    settings = load_settings(provider_rate_limit=0.001, log_file=None)
    gateway = CountingGateway()
    delivery = Delivery(
        sessions=cast("Any", None),
        topics=topics_from(settings),
        settings=settings,
        gateway=gateway,
        breaker=CircuitBreaker(5, 1, 1),
        limiter=RateLimiter(settings.provider_rate_limit),
    )
    first = await delivery.deliver(_claimed(1))  # the one token of the rate limit
    waiting = [asyncio.create_task(delivery.deliver(_claimed(n))) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    delivery.stopping.set()
    rest = await asyncio.wait_for(asyncio.gather(*waiting), 30)
    after = await delivery.deliver(_claimed(5))
    assert first.status == MessageStatus.SENT
    assert gateway.sent == [1]
    for decision in [*rest, after]:
        assert decision.status == MessageStatus.RETRYING
        assert decision.error == STOPPING
        assert decision.tier == 1
        assert decision.failures == 0
