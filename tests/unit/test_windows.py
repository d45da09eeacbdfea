"""Tests of shared.windows: local-time sending windows across zones and DST transitions.

Pure: no I/O, no conftest fixtures. The Window type and explicit cases here; properties
against oracles from the definition, for random zones and instants:
tests/unit/test_windows_properties.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from shared.windows import (
    NO_ALLOWED_TIME_BEFORE_STOP,
    Window,
    due_time,
    is_allowed,
    next_allowed,
    plan,
    window_end_after,
)
from tests.support.windows import BERLIN, hm, utc, w

# --- Window ------------------------------------------------------------------------------


def test_window_rejects_equal_edges() -> None:
    with pytest.raises(ValueError, match="differ"):
        w("09:00", "09:00")


@pytest.mark.parametrize(
    "edges",
    [
        pytest.param((time(9, 0, 30), time(18)), id="seconds"),
        pytest.param((time(9), time(18, 0, 0, 1)), id="microseconds"),
        pytest.param((time(9, tzinfo=UTC), time(18)), id="aware-start"),
        pytest.param((time(9), time(18, tzinfo=UTC)), id="aware-end"),
    ],
)
def test_window_rejects_non_minute_or_aware_times(edges: tuple[time, time]) -> None:
    with pytest.raises(ValueError, match="window"):
        Window(*edges)


def test_window_rejects_non_times() -> None:
    with pytest.raises(TypeError):
        Window(datetime(2031, 1, 1, 9), time(18))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Window("09:00", "18:00")  # type: ignore[arg-type]


def test_window_is_frozen_and_hashable() -> None:
    window = w("09:00", "18:00")
    with pytest.raises(AttributeError):
        window.start = hm("10:00")  # type: ignore[misc]
    assert window == w("09:00", "18:00")
    assert len({window, w("09:00", "18:00"), w("22:00", "06:00")}) == 2


@pytest.mark.parametrize(
    ("start", "end", "crosses", "inside", "outside"),
    [
        pytest.param(
            "09:00",
            "18:00",
            False,
            ["09:00", "12:00", "17:59:59.999999"],
            ["00:00", "08:59:59.999999", "18:00", "23:59"],
            id="day",
        ),
        pytest.param(
            "22:00",
            "06:00",
            True,
            ["22:00", "23:59:59.999999", "00:00", "03:00", "05:59:59"],
            ["06:00", "12:00", "21:59:59.999999"],
            id="crossing-midnight",
        ),
        pytest.param(
            "00:00", "00:01", False, ["00:00", "00:00:59"], ["00:01", "23:59"], id="first"
        ),
        pytest.param("23:59", "00:00", True, ["23:59", "23:59:59"], ["00:00", "12:00"], id="last"),
        pytest.param(
            "00:01", "00:00", True, ["00:01", "23:59"], ["00:00", "00:00:59"], id="almost-all"
        ),
    ],
)
def test_contains_local(
    start: str, end: str, crosses: bool, inside: list[str], outside: list[str]
) -> None:
    window = w(start, end)
    assert window.crosses_midnight is crosses
    for t in inside:
        assert window.contains_local(hm(t)), t
    for t in outside:
        assert not window.contains_local(hm(t)), t


def test_contains_local_ignores_fold_and_rejects_aware_times() -> None:
    window = w("01:00", "02:00")
    assert window.contains_local(time(1, 30, fold=1))
    with pytest.raises(ValueError, match="naive"):
        window.contains_local(time(1, 30, tzinfo=UTC))


# --- explicit cases ----------------------------------------------------------------------


SUMMER = (utc(2031, 6, 10), utc(2031, 6, 20))  # start_at, stop_at; Berlin is UTC+2 (CEST)

CASES = [
    # (zone, window, start_at, stop_at, now, expected due)
    pytest.param(
        "Europe/Berlin", None, *SUMMER, utc(2031, 6, 9, 7), SUMMER[0], id="no-window-before-start"
    ),
    pytest.param(
        "Europe/Berlin",
        None,
        *SUMMER,
        utc(2031, 6, 10, 9, 15, 30),
        utc(2031, 6, 10, 9, 15, 30),
        id="no-window-now",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        *SUMMER,
        utc(2031, 6, 10, 10),
        utc(2031, 6, 10, 10),
        id="inside-window-now",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        *SUMMER,
        utc(2031, 6, 10, 5),
        utc(2031, 6, 10, 7),
        id="before-window-opening-today",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        *SUMMER,
        utc(2031, 6, 10, 17),
        utc(2031, 6, 11, 7),
        id="after-window-opening-tomorrow",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        *SUMMER,
        utc(2031, 6, 10, 15, 59),
        utc(2031, 6, 10, 15, 59),
        id="last-minute-before-end",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        *SUMMER,
        utc(2031, 6, 10, 16),
        utc(2031, 6, 11, 7),
        id="end-exclusive",
    ),
    pytest.param(
        "Europe/Berlin",
        w("22:00", "06:00"),
        *SUMMER,
        utc(2031, 6, 10, 21),
        utc(2031, 6, 10, 21),
        id="crossing-midnight-23h",
    ),
    pytest.param(
        "Europe/Berlin",
        w("22:00", "06:00"),
        *SUMMER,
        utc(2031, 6, 11, 1),
        utc(2031, 6, 11, 1),
        id="crossing-midnight-03h",
    ),
    pytest.param(
        "Europe/Berlin",
        w("22:00", "06:00"),
        *SUMMER,
        utc(2031, 6, 10, 10),
        utc(2031, 6, 10, 20),
        id="crossing-midnight-12h",
    ),
    pytest.param(
        "Europe/Berlin",
        w("22:00", "06:00"),
        *SUMMER,
        utc(2031, 6, 11, 4),
        utc(2031, 6, 11, 20),
        id="crossing-midnight-end-exclusive",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        utc(2031, 6, 12, 8),
        SUMMER[1],
        utc(2031, 6, 10),
        utc(2031, 6, 12, 8),
        id="start-in-future-inside",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        utc(2031, 6, 12, 4),
        SUMMER[1],
        utc(2031, 6, 10),
        utc(2031, 6, 12, 7),
        id="start-in-future-before-window",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        SUMMER[0],
        utc(2031, 6, 10, 7),
        utc(2031, 6, 10, 5),
        None,
        id="due-equals-stop",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        SUMMER[0],
        utc(2031, 6, 10, 7, 0, 0, 1),
        utc(2031, 6, 10, 5),
        utc(2031, 6, 10, 7),
        id="due-just-before-stop",
    ),
    pytest.param(
        "Europe/Berlin",
        w("09:00", "18:00"),
        SUMMER[0],
        utc(2031, 6, 10, 6),
        utc(2031, 6, 10, 5),
        None,
        id="stop-before-opening",
    ),
    pytest.param(
        "Europe/Berlin",
        None,
        SUMMER[0],
        utc(2031, 6, 10, 5),
        utc(2031, 6, 10, 5),
        None,
        id="now-equals-stop",
    ),
    pytest.param(
        "Europe/Berlin",
        None,
        SUMMER[0],
        utc(2031, 6, 10, 5),
        utc(2031, 6, 11),
        None,
        id="now-after-stop",
    ),
    pytest.param(
        "Europe/Berlin",
        None,
        utc(2031, 6, 10),
        utc(2031, 6, 9),
        utc(2031, 6, 1),
        None,
        id="stop-before-start",
    ),
    # zones east and west of UTC
    pytest.param(
        "Asia/Singapore",
        w("09:00", "21:00"),
        *SUMMER,
        utc(2031, 6, 10, 14),
        utc(2031, 6, 11, 1),
        id="singapore-after-window",
    ),
    pytest.param(
        "Asia/Kolkata",
        w("09:00", "21:00"),
        *SUMMER,
        utc(2031, 6, 10),
        utc(2031, 6, 10, 3, 30),
        id="kolkata-before-window",
    ),
    pytest.param(
        "America/Los_Angeles",
        w("09:00", "21:00"),
        *SUMMER,
        utc(2031, 6, 10, 12),
        utc(2031, 6, 10, 16),
        id="los-angeles-before-window",
    ),
    pytest.param(
        "Pacific/Kiritimati",
        w("09:00", "21:00"),
        *SUMMER,
        utc(2031, 6, 10, 20),
        utc(2031, 6, 10, 20),
        id="kiritimati-inside-next-local-day",
    ),
    pytest.param(
        "Pacific/Kiritimati",
        w("09:00", "21:00"),
        *SUMMER,
        utc(2031, 6, 10, 8),
        utc(2031, 6, 10, 19),
        id="kiritimati-opening-same-utc-day",
    ),
    pytest.param(
        "Pacific/Pago_Pago",
        w("09:00", "21:00"),
        *SUMMER,
        utc(2031, 6, 10, 12),
        utc(2031, 6, 10, 20),
        id="pago-pago-before-window",
    ),
    # spring forward: Berlin 2031-03-30 02:00 CET -> 03:00 CEST at 01:00 UTC
    pytest.param(
        "Europe/Berlin",
        w("02:30", "05:00"),
        utc(2031, 3, 1),
        utc(2031, 4, 1),
        utc(2031, 3, 29, 23),
        utc(2031, 3, 30, 1),
        id="berlin-spring-start-in-gap",
    ),
    pytest.param(
        "Europe/Berlin",
        w("02:10", "02:50"),
        utc(2031, 3, 1),
        utc(2031, 4, 1),
        utc(2031, 3, 29, 23),
        utc(2031, 3, 31, 0, 10),
        id="berlin-spring-window-inside-gap",
    ),
    pytest.param(
        "Europe/Berlin",
        w("01:00", "02:30"),
        utc(2031, 3, 1),
        utc(2031, 4, 1),
        utc(2031, 3, 30, 1),
        utc(2031, 3, 30, 23),
        id="berlin-spring-end-in-gap",
    ),
    pytest.param(
        "America/New_York",
        w("02:15", "08:00"),
        utc(2031, 3, 1),
        utc(2031, 4, 1),
        utc(2031, 3, 9, 5),
        utc(2031, 3, 9, 7),
        id="new-york-spring-start-in-gap",
    ),
    # fall back: Berlin 2031-10-26 03:00 CEST -> 02:00 CET at 01:00 UTC
    pytest.param(
        "Europe/Berlin",
        w("02:30", "04:00"),
        utc(2031, 10, 1),
        utc(2031, 11, 1),
        utc(2031, 10, 26, 0, 45),
        utc(2031, 10, 26, 0, 45),
        id="berlin-fall-first-pass-inside",
    ),
    pytest.param(
        "Europe/Berlin",
        w("02:30", "04:00"),
        utc(2031, 10, 1),
        utc(2031, 11, 1),
        utc(2031, 10, 26, 1),
        utc(2031, 10, 26, 1, 30),
        id="berlin-fall-second-pass-before-start",
    ),
    pytest.param(
        "Europe/Berlin",
        w("01:00", "02:30"),
        utc(2031, 10, 1),
        utc(2031, 11, 1),
        utc(2031, 10, 26, 0, 30),
        utc(2031, 10, 26, 1),
        id="berlin-fall-reopens-at-jump",
    ),
    # New York 2031-11-02 02:00 EDT -> 01:00 EST at 06:00 UTC
    pytest.param(
        "America/New_York",
        w("01:00", "01:30"),
        utc(2031, 10, 1),
        utc(2031, 12, 1),
        utc(2031, 11, 2, 5, 30),
        utc(2031, 11, 2, 6),
        id="new-york-fall-reopens-at-jump",
    ),
    # Lord Howe: 30-minute shifts. 2031-04-05 15:00 UTC: 02:00 +11 -> 01:30 +10:30;
    # 2031-10-04 15:30 UTC: 02:00 +10:30 -> 02:30 +11.
    pytest.param(
        "Australia/Lord_Howe",
        w("01:40", "06:00"),
        utc(2031, 4, 1),
        utc(2031, 5, 1),
        utc(2031, 4, 5, 14, 45),
        utc(2031, 4, 5, 14, 45),
        id="lord-howe-fall-first-pass",
    ),
    pytest.param(
        "Australia/Lord_Howe",
        w("01:40", "06:00"),
        utc(2031, 4, 1),
        utc(2031, 5, 1),
        utc(2031, 4, 5, 15),
        utc(2031, 4, 5, 15, 10),
        id="lord-howe-fall-second-pass",
    ),
    pytest.param(
        "Australia/Lord_Howe",
        w("02:10", "03:00"),
        utc(2031, 10, 1),
        utc(2031, 11, 1),
        utc(2031, 10, 4, 12),
        utc(2031, 10, 4, 15, 30),
        id="lord-howe-spring-start-in-gap",
    ),
    # DST changes at local midnight. Havana 2031-03-09 05:00 UTC: 00:00 -05 -> 01:00 -04.
    pytest.param(
        "America/Havana",
        w("00:15", "08:00"),
        utc(2031, 3, 1),
        utc(2031, 4, 1),
        utc(2031, 3, 9, 1),
        utc(2031, 3, 9, 5),
        id="havana-spring-start-in-midnight-gap",
    ),
    pytest.param(
        "America/Havana",
        w("00:00", "00:30"),
        utc(2031, 3, 1),
        utc(2031, 4, 1),
        utc(2031, 3, 9, 1),
        utc(2031, 3, 10, 4),
        id="havana-spring-window-inside-gap",
    ),
    # Santiago 2031-04-06 03:00 UTC: Saturday 24:00 -03 -> 23:00 -04 (the date steps back).
    pytest.param(
        "America/Santiago",
        w("23:30", "23:45"),
        utc(2031, 4, 1),
        utc(2031, 5, 1),
        utc(2031, 4, 6, 2, 50),
        utc(2031, 4, 6, 3, 30),
        id="santiago-fall-previous-date-again",
    ),
    # Santiago 2031-09-07 04:00 UTC: Saturday 24:00 -04 -> Sunday 01:00 -03.
    pytest.param(
        "America/Santiago",
        w("00:00", "00:30"),
        utc(2031, 9, 1),
        utc(2031, 10, 1),
        utc(2031, 9, 7, 3, 30),
        utc(2031, 9, 8, 3),
        id="santiago-spring-window-inside-gap",
    ),
]


@pytest.mark.parametrize(("key", "window", "start_at", "stop_at", "now", "expected"), CASES)
def test_due_time_cases(
    key: str,
    window: Window | None,
    start_at: datetime,
    stop_at: datetime,
    now: datetime,
    expected: datetime | None,
) -> None:
    zone = ZoneInfo(key)
    due = due_time(start_at, stop_at, now, window, zone)
    assert due == expected
    if due is None:
        assert plan(start_at, stop_at, now, window, zone) == (None, NO_ALLOWED_TIME_BEFORE_STOP)
    else:
        assert due.tzinfo is UTC
        assert plan(start_at, stop_at, now, window, zone) == (due, None)
        assert is_allowed(due, window, zone)


@pytest.mark.parametrize(
    ("key", "window", "instant", "expected"),
    [
        pytest.param(
            "Europe/Berlin",
            w("09:00", "18:00"),
            utc(2031, 6, 10, 10),
            utc(2031, 6, 10, 16),
            id="day",
        ),
        pytest.param(
            "Europe/Berlin",
            w("22:00", "06:00"),
            utc(2031, 6, 10, 21),
            utc(2031, 6, 11, 4),
            id="crossing",
        ),
        pytest.param(
            "Europe/Berlin",
            w("09:00", "18:00"),
            utc(2031, 6, 10, 16),
            utc(2031, 6, 10, 16),
            id="outside-is-itself",
        ),
        pytest.param(
            "Europe/Berlin",
            w("01:00", "02:30"),
            utc(2031, 3, 30, 0, 30),
            utc(2031, 3, 30, 1),
            id="end-in-gap-closes-at-jump",
        ),
        pytest.param(
            "Europe/Berlin",
            w("01:00", "02:30"),
            utc(2031, 10, 26, 0),
            utc(2031, 10, 26, 0, 30),
            id="overlap-first-pass",
        ),
        pytest.param(
            "Europe/Berlin",
            w("01:00", "02:30"),
            utc(2031, 10, 26, 1),
            utc(2031, 10, 26, 1, 30),
            id="overlap-second-pass",
        ),
        pytest.param(
            # 02:30-02:15 excludes only 02:15-02:30, which does not exist on 2031-03-30.
            "Europe/Berlin",
            w("02:30", "02:15"),
            utc(2031, 3, 29, 12),
            utc(2031, 3, 31, 0, 15),
            id="excluded-part-in-gap",
        ),
    ],
)
def test_window_end_after_cases(
    key: str, window: Window, instant: datetime, expected: datetime
) -> None:
    assert window_end_after(instant, window, ZoneInfo(key)) == expected


def test_results_are_utc_for_other_aware_inputs() -> None:
    plus3 = timezone(timedelta(hours=3))
    instant = datetime(2031, 6, 10, 8, tzinfo=plus3)  # 05:00 UTC, 07:00 in Berlin
    window = w("09:00", "18:00")
    assert not is_allowed(instant, window, BERLIN)
    result = next_allowed(instant, window, BERLIN)
    assert result == utc(2031, 6, 10, 7)
    assert result.tzinfo is UTC
    assert next_allowed(instant, None, BERLIN).tzinfo is UTC
    assert window_end_after(result, window, BERLIN).tzinfo is UTC


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2031, 6, 10, 8)
    aware = utc(2031, 6, 10, 8)
    window = w("09:00", "18:00")
    with pytest.raises(ValueError, match="instant"):
        is_allowed(naive, window, BERLIN)
    with pytest.raises(ValueError, match="instant"):
        is_allowed(naive, None, BERLIN)
    with pytest.raises(ValueError, match="instant"):
        next_allowed(naive, None, BERLIN)
    with pytest.raises(ValueError, match="instant"):
        window_end_after(naive, window, BERLIN)
    with pytest.raises(ValueError, match="start_at"):
        due_time(naive, aware, aware, window, BERLIN)
    with pytest.raises(ValueError, match="stop_at"):
        due_time(aware, naive, aware, window, BERLIN)
    with pytest.raises(ValueError, match="now"):
        plan(aware, aware, naive, None, BERLIN)
