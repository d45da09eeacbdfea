"""The dispatcher's rules (`services/dispatcher/decisions.py`) and its outcome recorder,
table by table: no database, no Kafka, no gateway."""

from __future__ import annotations

import asyncio
import math
from datetime import time, timedelta

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from services.dispatcher.decisions import (
    LEASE_SPENT,
    Claimed,
    Decision,
    Rules,
    decide,
    give_back,
    on_error,
    request_deadline,
    retry,
    too_late,
)
from services.dispatcher.gateway import MAX_RETRY_AFTER_S, Outcome, Result, classify
from services.dispatcher.recorder import OutcomeRecorder
from shared.models import MessageStatus as S
from shared.windows import Window
from tests.support.dispatcher import NO_DEDUP, NOW, RULES, message


def brief(decision: Decision) -> tuple[S, int, bool, float | None]:
    """(status, tier, dlq, seconds until due)"""
    due = None if decision.due is None else (decision.due - NOW).total_seconds()
    return decision.status, decision.tier, decision.dlq, due


# --- decide: one gateway answer -------------------------------------------------------

T = Outcome.TRANSIENT


@pytest.mark.parametrize(
    ("result", "claimed", "rules", "expected"),
    [
        pytest.param(Result(Outcome.OK, 200), message(), RULES, (S.SENT, 0, False, None), id="ok"),
        pytest.param(
            Result(Outcome.PERMANENT, 400), message(), RULES, (S.FAILED, 0, True, None), id="400"
        ),
        pytest.param(Result(T, 503), message(), RULES, (S.RETRYING, 1, False, 5.0), id="5xx"),
        pytest.param(
            Result(T, 503), message(tier=1), RULES, (S.RETRYING, 2, False, 30.0), id="next tier"
        ),
        pytest.param(
            Result(T, 503), message(tier=3), RULES, (S.RETRYING, 3, False, 120.0), id="last repeats"
        ),
        pytest.param(
            Result(T, 429, retry_after=300.0),
            message(),
            RULES,
            (S.RETRYING, 1, False, 300.0),
            id="retry-after honoured",
        ),
        pytest.param(
            Result(T, 429, retry_after=math.inf),
            message(),
            RULES,
            (S.RETRYING, 1, False, MAX_RETRY_AFTER_S),
            id="retry-after inf clamped",
        ),
        pytest.param(
            Result(T, 429, retry_after=1e12),
            message(),
            RULES,
            (S.RETRYING, 1, False, MAX_RETRY_AFTER_S),
            id="retry-after 1e12 clamped",
        ),
        pytest.param(
            Result(T, 429, retry_after=math.nan),
            message(),
            RULES,
            (S.RETRYING, 1, False, 5.0),
            id="retry-after nan ignored",
        ),
        pytest.param(
            Result(T, 429, retry_after=1e12),
            message(stop_at=NOW + timedelta(minutes=10)),
            RULES,
            (S.EXPIRED, 0, False, None),
            id="retry-after past stop",
        ),
        pytest.param(
            Result(T, 503, ambiguous=True),
            message(),
            NO_DEDUP,
            (S.FAILED, 0, True, None),
            id="ambiguous, no dedup",
        ),
        pytest.param(
            Result(T, None),
            message(),
            NO_DEDUP,
            (S.RETRYING, 1, False, 5.0),
            id="refused, no dedup",
        ),
        pytest.param(
            Result(Outcome.AUTH, 401),
            message(tier=2),
            RULES,
            (S.RETRYING, 2, False, 30.0),
            id="401 held in its tier",
        ),
        pytest.param(
            Result(Outcome.CONFIG, 404),
            message(),
            RULES,
            (S.RETRYING, 1, False, 7.0),
            id="404 held, breaker wait",
        ),
        pytest.param(
            Result(Outcome.CONFIG, 405),
            message(failures=4),
            RULES,
            (S.RETRYING, 1, False, 7.0),
            id="405 held, not counted",
        ),
        pytest.param(
            Result(T, 503),
            message(failures=4),
            RULES,
            (S.FAILED, 0, True, None),
            id="attempts cap",
        ),
        pytest.param(
            Result(T, 503),
            message(due_at=NOW - timedelta(hours=2)),
            RULES,
            (S.FAILED, 0, True, None),
            id="age cap",
        ),
        pytest.param(
            Result(T, 503),
            message(due_at=None),
            RULES,
            (S.RETRYING, 1, False, 5.0),
            id="no due time, no age cap",
        ),
    ],
)
def test_decide(
    result: Result, claimed: Claimed, rules: Rules, expected: tuple[S, int, bool, float | None]
) -> None:
    assert brief(decide(claimed, result, NOW, 7.0, rules)) == expected


def test_the_caps_name_their_reason_and_count_only_burnt_attempts() -> None:
    failed = decide(message(failures=4), Result(T, 503, "gateway error (503)"), NOW, 0, RULES)
    assert failed.error == "gave up after 5 attempts: gateway error (503)"
    old = message(due_at=NOW - timedelta(hours=2))
    assert "retrying for 7200 s" in (decide(old, Result(T, 503), NOW, 0, RULES).error or "")
    # Held attempts carry the count unchanged; burnt ones add one.
    assert decide(message(failures=3), Result(Outcome.AUTH, 401), NOW, 1, RULES).failures == 3
    assert decide(message(failures=3), Result(T, 503), NOW, 1, RULES).failures == 4
    assert retry(message(failures=3), NOW, "circuit open", 4, escalate=False, rules=RULES) == (
        Decision(S.RETRYING, "circuit open", due=NOW + timedelta(seconds=5), tier=1, failures=3)
    )


def test_every_gateway_answer_has_a_decision() -> None:
    """No status and header the gateway can send makes the decision raise."""
    for status in range(100, 600):
        for header in (None, "1e12", "inf", "-inf", "nan", "-1", "Fri, 01 Jan 9999 00:00:00 GMT"):
            result = classify(status, b"{}", header)
            for claimed in (message(), message(tier=3, failures=3)):
                assert decide(claimed, result, NOW, 1e12, RULES).status in set(S)


# --- the lease --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease_left_s", "stop_in_s", "deadline"),
    [
        (60.0, 86400.0, 10.0),  # plenty of lease: the full timeout
        (12.0, 86400.0, 10.0),  # timeout + margin just fit
        (11.9, 86400.0, None),  # they do not: not started
        (0.0, 86400.0, None),  # spent
        (-5.0, 86400.0, None),
        (5.0, 2.0, 2.0),  # the stop time shortens the request, which then fits
        (3.9, 2.0, None),
    ],
)
def test_a_request_starts_only_if_it_ends_before_the_lease(
    lease_left_s: float, stop_in_s: float, deadline: float | None
) -> None:
    claimed = message(stop_at=NOW + timedelta(seconds=stop_in_s))
    assert request_deadline(claimed, NOW, lease_left_s, RULES) == deadline


def test_a_message_given_back_waits_in_its_tier_and_burns_nothing() -> None:
    assert give_back(message(tier=0, failures=2), NOW) == Decision(
        S.RETRYING, LEASE_SPENT, due=NOW, tier=1, failures=2
    )
    assert give_back(message(tier=3), NOW).tier == 3


# --- stop time and window ------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_in", "window", "expected"),
    [
        (timedelta(hours=1), None, None),
        (timedelta(0), None, S.EXPIRED),
        (timedelta(days=1), Window(time(9), time(17)), None),  # 12:00 is inside
        (timedelta(days=1), Window(time(13), time(17)), S.SCHEDULED),
        (timedelta(minutes=30), Window(time(13), time(17)), S.EXPIRED),
    ],
)
def test_too_late(stop_in: timedelta, window: Window | None, expected: S | None) -> None:
    decision = too_late(message(stop_at=NOW + stop_in, window=window), NOW)
    assert (decision and decision.status) == expected


# --- an unexpected error -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "rules", "status"),
    [
        (False, RULES, S.RETRYING),
        (True, RULES, S.RETRYING),
        (False, NO_DEDUP, S.RETRYING),  # no request went out: safe to retry
        (True, NO_DEDUP, S.FAILED),  # it may have: unknown outcome
    ],
)
def test_an_error_is_the_outcome_of_its_message_alone(
    requested: bool, rules: Rules, status: S
) -> None:
    decision = on_error(message(), NOW, OverflowError("boom"), requested, rules)
    assert decision.status == status
    assert "OverflowError" in (decision.error or "")


# --- the recorder ------------------------------------------------------------------------


class FlakyStore:
    """Writes groups; fails the first `down` writes as an unreachable database would."""

    def __init__(self, down: int = 0, poison: int | None = None) -> None:
        self.down = down
        self.poison = poison
        self.groups: list[list[int]] = []
        self.calls = 0
        self.wrote = asyncio.Event()

    async def write(self, group: list[int]) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down > 0:
            self.down -= 1
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
        if self.poison is not None and self.poison in group:
            raise ProgrammingError("UPDATE", {}, ValueError("bad row"))
        self.groups.append(list(group))
        self.wrote.set()


async def test_outcomes_are_written_in_small_groups_as_they_arrive() -> None:
    store = FlakyStore()
    async with OutcomeRecorder[int](store.write, flush_s=0.01, group_max=4) as recorder:
        for item in range(10):
            recorder.add(item)
            await asyncio.sleep(0)
        # Written while the batch goes on, not at its end.
        await asyncio.wait_for(store.wrote.wait(), 5)
        for item in range(10, 12):
            recorder.add(item)
    assert [item for group in store.groups for item in group] == list(range(12))
    assert max(len(group) for group in store.groups) <= 4


async def test_outcomes_are_held_while_the_database_is_unreachable() -> None:
    store = FlakyStore(down=5)
    async with OutcomeRecorder[int](
        store.write, flush_s=0.001, group_max=100, backoff_max_s=0.01
    ) as recorder:
        for item in range(7):
            recorder.add(item)
    # Leaving the block waited through five failures: all written, once, in order.
    assert [item for group in store.groups for item in group] == list(range(7))
    assert store.calls >= 6
    assert recorder.written == 7


async def test_one_bad_outcome_does_not_keep_the_others_from_being_written() -> None:
    store = FlakyStore(poison=3)
    async with OutcomeRecorder[int](store.write, flush_s=0.001, group_max=10) as recorder:
        for item in range(6):
            recorder.add(item)
    assert sorted(item for group in store.groups for item in group) == [0, 1, 2, 4, 5]
    assert recorder.dropped == 1


async def test_no_request_starts_while_a_full_group_waits_to_be_written() -> None:
    gate = asyncio.Event()
    written: list[list[int]] = []

    async def slow_write(group: list[int]) -> None:
        await gate.wait()
        written.append(group)

    async with OutcomeRecorder[int](slow_write, flush_s=0.001, group_max=2) as recorder:
        recorder.add(1)
        recorder.add(2)
        waiting = asyncio.create_task(recorder.room())
        for _ in range(5):  # let it run: it blocks, since the write cannot finish yet
            await asyncio.sleep(0)
        assert not waiting.done()
        gate.set()
        await asyncio.wait_for(waiting, 5)
    assert written == [[1, 2]]


async def test_outcomes_still_held_when_the_block_is_left_by_an_exception_are_counted() -> None:
    store = FlakyStore(down=10**6)  # PostgreSQL never comes back
    recorder = OutcomeRecorder[int](
        store.write, flush_s=0.001, backoff_max_s=0.01, describe=lambda n: {"message_id": n}
    )

    async def stop_while_held() -> None:
        async with recorder:
            for item in range(3):
                recorder.add(item)
            await asyncio.sleep(0.05)  # the writes fail meanwhile
            raise RuntimeError("the process stops")

    with pytest.raises(RuntimeError):
        await stop_while_held()
    assert store.groups == []
    assert recorder.abandoned == 3
    assert recorder.written == 0
