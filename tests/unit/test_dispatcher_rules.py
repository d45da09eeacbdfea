"""The dispatcher's decision rules (`services/dispatcher/decisions.py`), table by table,
with their reasons: what `too_late`, `retry` and `decide` return at each boundary, the
fallback of `on_error`, and the rules read from the settings. (The gateway answers and
the recorder are in tests/unit/test_dispatcher_decisions.py.)"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, time, timedelta
from types import SimpleNamespace
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest

from services.dispatcher.decisions import (
    Claimed,
    Decision,
    Rules,
    decide,
    on_error,
    retry,
    too_late,
)
from services.dispatcher.gateway import MAX_RETRY_AFTER_S, Outcome, Result
from shared.models import MessageStatus as S
from shared.statuses import STOP_REACHED
from shared.windows import NO_ALLOWED_TIME_BEFORE_STOP, Window
from tests.support.dispatcher import NO_DEDUP, NOW, RULES, message

OUTSIDE = "outside the client's window"


def at(hours: float) -> datetime:
    return NOW + timedelta(hours=hours)


# --- too_late: the stop time and the window, right before a request -------------------


@pytest.mark.parametrize(
    ("stop_at", "window", "zone", "expected"),
    [
        pytest.param(at(1), None, "UTC", None, id="before stop, no window"),
        pytest.param(NOW, None, "UTC", Decision(S.EXPIRED, STOP_REACHED), id="stop is exclusive"),
        pytest.param(at(-1), None, "UTC", Decision(S.EXPIRED, STOP_REACHED), id="past stop"),
        pytest.param(
            at(-1),
            Window(time(9), time(17)),
            "UTC",
            Decision(S.EXPIRED, STOP_REACHED),
            id="stop before window",
        ),
        pytest.param(at(24), Window(time(9), time(17)), "UTC", None, id="inside window"),
        pytest.param(at(24), Window(time(12), time(13)), "UTC", None, id="window start inclusive"),
        pytest.param(
            at(24),
            Window(time(9), time(12)),
            "UTC",
            Decision(S.SCHEDULED, OUTSIDE, due=at(21)),
            id="window end exclusive: next day",
        ),
        pytest.param(
            at(24),
            Window(time(14), time(16)),
            "UTC",
            Decision(S.SCHEDULED, OUTSIDE, due=at(2)),
            id="window later today",
        ),
        pytest.param(
            at(24),
            Window(time(22), time(6)),
            "UTC",
            Decision(S.SCHEDULED, OUTSIDE, due=at(10)),
            id="window across midnight",
        ),
        pytest.param(
            at(24),
            Window(time(9), time(17)),
            "Asia/Tokyo",
            Decision(S.SCHEDULED, OUTSIDE, due=at(12)),
            id="client's zone: 21:00 in Tokyo, opens at 09:00 there",
        ),
        pytest.param(
            at(2),
            Window(time(14), time(16)),
            "UTC",
            Decision(S.EXPIRED, NO_ALLOWED_TIME_BEFORE_STOP),
            id="window opens at the stop",
        ),
        pytest.param(
            at(1),
            Window(time(14), time(16)),
            "UTC",
            Decision(S.EXPIRED, NO_ALLOWED_TIME_BEFORE_STOP),
            id="window opens after the stop",
        ),
    ],
)
def test_too_late(
    stop_at: datetime, window: Window | None, zone: str, expected: Decision | None
) -> None:
    assert too_late(message(stop_at=stop_at, window=window, zone=ZoneInfo(zone)), NOW) == expected


# --- retry: the tiers and the caps ---------------------------------------------------------


@pytest.mark.parametrize(
    ("claimed", "at_least", "escalate", "expected"),
    [
        pytest.param(
            message(),
            0.0,
            True,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=5), tier=1, failures=1),
            id="first failure",
        ),
        pytest.param(
            message(tier=1, failures=1),
            0.0,
            True,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=30), tier=2, failures=2),
            id="next tier",
        ),
        pytest.param(
            message(tier=3, failures=3),
            0.0,
            True,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=120), tier=3, failures=4),
            id="last tier repeats",
        ),
        pytest.param(
            message(),
            0.0,
            False,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=5), tier=1, failures=0),
            id="held from tier 0: tier 1, not counted",
        ),
        pytest.param(
            message(tier=2, failures=2),
            0.0,
            False,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=30), tier=2, failures=2),
            id="held in its tier",
        ),
        pytest.param(
            message(),
            60.0,
            True,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=60), tier=1, failures=1),
            id="at least longer than the tier",
        ),
        pytest.param(
            message(),
            -60.0,
            True,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=5), tier=1, failures=1),
            id="negative at least ignored",
        ),
        pytest.param(
            message(),
            math.nan,
            True,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=5), tier=1, failures=1),
            id="nan ignored",
        ),
        pytest.param(
            message(),
            math.inf,
            True,
            Decision(
                S.RETRYING, "e", due=NOW + timedelta(seconds=MAX_RETRY_AFTER_S), tier=1, failures=1
            ),
            id="inf capped",
        ),
        pytest.param(
            message(failures=4),
            0.0,
            True,
            Decision(S.FAILED, "gave up after 5 attempts: e", dlq=True, failures=5),
            id="attempts cap",
        ),
        pytest.param(
            message(failures=4),
            0.0,
            False,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=5), tier=1, failures=4),
            id="held: no cap",
        ),
        pytest.param(
            message(due_at=NOW - timedelta(seconds=3600)),
            0.0,
            True,
            Decision(S.FAILED, "gave up: retrying for 3600 s: e", dlq=True, failures=1),
            id="age cap reached",
        ),
        pytest.param(
            message(due_at=NOW - timedelta(seconds=3599)),
            0.0,
            True,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=5), tier=1, failures=1),
            id="age cap not yet",
        ),
        pytest.param(
            message(stop_at=NOW + timedelta(seconds=5)),
            0.0,
            True,
            Decision(S.EXPIRED, "no retry before stop time: e"),
            id="retry at the stop",
        ),
        pytest.param(
            message(stop_at=NOW + timedelta(seconds=6)),
            0.0,
            True,
            Decision(S.RETRYING, "e", due=NOW + timedelta(seconds=5), tier=1, failures=1),
            id="retry just before the stop",
        ),
    ],
)
def test_retry(claimed: Claimed, at_least: float, escalate: bool, expected: Decision) -> None:
    assert retry(claimed, NOW, "e", at_least, escalate=escalate, rules=RULES) == expected


# --- decide: the reasons -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "rules", "expected"),
    [
        pytest.param(Result(Outcome.OK, 200), RULES, Decision(S.SENT), id="ok"),
        pytest.param(
            Result(Outcome.PERMANENT, 400, "bad number"),
            RULES,
            Decision(S.FAILED, "bad number", dlq=True),
            id="permanent: the gateway's error",
        ),
        pytest.param(
            Result(Outcome.TRANSIENT, None, "timeout", ambiguous=True),
            NO_DEDUP,
            Decision(S.FAILED, "unknown outcome: timeout", dlq=True),
            id="ambiguous without de-duplication",
        ),
        pytest.param(
            Result(Outcome.TRANSIENT, None, "timeout", ambiguous=True),
            RULES,
            Decision(S.RETRYING, "timeout", due=NOW + timedelta(seconds=5), tier=1, failures=1),
            id="ambiguous with de-duplication: retried",
        ),
        pytest.param(
            Result(Outcome.AUTH, 401, "unauthorized"),
            RULES,
            Decision(S.RETRYING, "unauthorized", due=NOW + timedelta(seconds=7), tier=1),
            id="auth: held for the breaker's wait",
        ),
    ],
)
def test_decide(result: Result, rules: Rules, expected: Decision) -> None:
    assert decide(message(), result, NOW, 7.0, rules) == expected


# --- on_error and the rules from settings ---------------------------------------------------


def test_an_error_that_even_the_retry_rule_cannot_place_is_still_an_outcome() -> None:
    broken = replace(RULES, retry_delays_s=())  # retry() itself fails: no tier to wait in
    with pytest.raises(IndexError):
        retry(message(), NOW, "e", 0.0, escalate=True, rules=broken)
    decision = on_error(message(tier=2, failures=1), NOW, RuntimeError("x"), False, broken)
    assert decision == Decision(
        S.RETRYING, "dispatcher error: RuntimeError('x')", due=NOW, tier=2, failures=2
    )


def test_the_rules_come_from_the_settings() -> None:
    settings = SimpleNamespace(
        retry_delays_s=[1.0, 2.0],
        provider_timeout_s=3.0,
        provider_deduplicates=False,
        sending_lease_margin_s=4.0,
        retry_max_attempts=5,
        retry_max_age_s=6.0,
    )
    assert Rules.from_settings(cast("Any", settings)) == Rules(
        retry_delays_s=(1.0, 2.0),
        provider_timeout_s=3.0,
        provider_deduplicates=False,
        lease_margin_s=4.0,
        max_attempts=5,
        max_age_s=6.0,
    )
