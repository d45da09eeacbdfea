"""Tests of shared.windows: local-time sending windows across zones and DST transitions.

Pure: no I/O, no conftest fixtures. The oracles below work from the definition only
(allowed = the window contains the local wall time) by scanning whole UTC minutes; that is
exact for the zones and years used here, because every window edge (whole local minutes)
and every offset transition in them falls on a whole UTC minute.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.windows import (
    NO_ALLOWED_TIME_BEFORE_STOP,
    Window,
    due_time,
    is_allowed,
    next_allowed,
    plan,
    window_end_after,
)

ZONE_KEYS = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Dublin",  # negative DST in tzdata: winter is the "DST" period
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",  # -03:30 / -02:30
    "America/Santiago",  # DST changes at local midnight
    "America/Havana",  # DST changes at local midnight
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Asia/Singapore",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Australia/Sydney",
    "Pacific/Chatham",  # +12:45 / +13:45
    "Pacific/Kiritimati",  # +14
    "Pacific/Pago_Pago",  # -11
)

MINUTE = timedelta(minutes=1)
MICROSECOND = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Random instants stay within these years, in which the zones above change offsets only at
# whole minutes and never skip a whole date.
FIRST_YEAR, LAST_YEAR = 2005, 2040
BERLIN = ZoneInfo("Europe/Berlin")


def utc(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def hm(text: str) -> time:
    return time.fromisoformat(text)


def w(start: str, end: str) -> Window:
    return Window(hm(start), hm(end))


# --- oracles, straight from the definition ----------------------------------------------


def allowed(u: datetime, window: Window | None, zone: ZoneInfo) -> bool:
    return window is None or window.contains_local(u.astimezone(zone).time())


def _whole_minutes_after(x: datetime) -> datetime:
    """The first whole UTC minute strictly after `x`."""
    return x.replace(second=0, microsecond=0) + MINUTE


def brute_next_allowed(x: datetime, window: Window, zone: ZoneInfo) -> datetime:
    if allowed(x, window, zone):
        return x
    u = _whole_minutes_after(x)
    while not allowed(u, window, zone):
        u += MINUTE
        assert u - x < timedelta(days=4), "oracle found no opening"
    return u


def brute_window_end(x: datetime, window: Window, zone: ZoneInfo) -> datetime:
    if not allowed(x, window, zone):
        return x
    u = _whole_minutes_after(x)
    while allowed(u, window, zone):
        u += MINUTE
        assert u - x < timedelta(days=4), "oracle found no closing"
    return u


def _offset(u: datetime, zone: ZoneInfo) -> timedelta | None:
    return u.astimezone(zone).utcoffset()


def first_true_second(lo: int, hi: int, pred: Callable[[datetime], bool]) -> int:
    """The smallest second in (lo, hi] at which `pred` holds; false at lo, true at hi."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(EPOCH + timedelta(seconds=mid)):
            hi = mid
        else:
            lo = mid
    return hi


def _offset_differs(zone: ZoneInfo, base: timedelta | None) -> Callable[[datetime], bool]:
    return lambda u: _offset(u, zone) != base


def transitions_between(
    zone: ZoneInfo, a: datetime, b: datetime, step: timedelta
) -> list[datetime]:
    """Offset transitions in (a, b], found by probing every `step` and bisecting."""
    found = []
    prev = a
    while prev < b:
        probe = min(prev + step, b)
        before = _offset(prev, zone)
        if _offset(probe, zone) != before:
            lo = (prev - EPOCH) // timedelta(seconds=1)
            hi = (probe - EPOCH) // timedelta(seconds=1)
            second = first_true_second(lo, hi, _offset_differs(zone, before))
            found.append(EPOCH + timedelta(seconds=second))
        prev = probe
    return found


# Probing every 3 days finds every transition: in these zones and years, offset changes are
# at least a week apart.
TRANSITIONS = {
    key: transitions_between(
        ZoneInfo(key), utc(FIRST_YEAR, 1, 1), utc(LAST_YEAR, 12, 31), timedelta(days=3)
    )
    for key in ZONE_KEYS
}


def first_instant_at_or_after_wall(naive: datetime, zone: ZoneInfo) -> datetime:
    """For a local datetime in a gap: the first instant whose wall datetime is >= it."""
    early = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)  # offset after the jump
    late = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)  # offset before the jump
    lo = (early - EPOCH) // timedelta(seconds=1)
    hi = (late - EPOCH) // timedelta(seconds=1)
    return EPOCH + timedelta(
        seconds=first_true_second(
            lo, hi, lambda u: u.astimezone(zone).replace(tzinfo=None) >= naive
        )
    )


def day_based_next_allowed(x: datetime, window: Window, zone: ZoneInfo) -> datetime:
    """The day-based formulation documented in the module docstring (for SQL ports)."""
    if allowed(x, window, zone):
        return x
    d0 = x.astimezone(zone).date()
    candidates = []
    for k in range(-1, 4):
        naive = datetime.combine(d0 + timedelta(days=k), window.start)
        for fold in (0, 1):
            u = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
            if u.astimezone(zone).replace(tzinfo=None) == naive:
                candidates.append(u)
            else:  # in a gap
                candidates.append(first_instant_at_or_after_wall(naive, zone))
    candidates += transitions_between(zone, x, x + timedelta(days=4), timedelta(hours=1))
    return min(u for u in candidates if u > x and allowed(u, window, zone))


# --- strategies ---------------------------------------------------------------------------


def minute_time(minutes: int) -> time:
    minutes %= 24 * 60
    return time(minutes // 60, minutes % 60)


def minutes_of(t: time) -> int:
    return t.hour * 60 + t.minute


random_minutes = st.integers(0, 24 * 60 - 1)
random_instants = st.datetimes(
    min_value=datetime(FIRST_YEAR, 1, 2),
    max_value=datetime(LAST_YEAR, 12, 30),
    timezones=st.just(UTC),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ZoneInfo, Window, datetime]:
    """A zone, a window and an instant; often close to a DST transition, with the window
    edges near the wall times just before and after it (so they fall in gaps/overlaps)."""
    key = draw(st.sampled_from(ZONE_KEYS))
    zone = ZoneInfo(key)
    transitions = TRANSITIONS[key]
    near_transition = draw(st.booleans())
    if transitions and near_transition:
        jump = draw(st.sampled_from(transitions))
        x = jump + timedelta(
            seconds=draw(st.integers(-2 * 86_400, 2 * 86_400)),
            microseconds=draw(st.sampled_from([0, 0, 1, 999_999]) | st.integers(0, 999_999)),
        )
        walls = [
            minutes_of((jump - MICROSECOND).astimezone(zone).time()) + 1,
            minutes_of(jump.astimezone(zone).time()),
        ]
        near = st.builds(
            lambda anchor, delta: anchor + delta, st.sampled_from(walls), st.integers(-90, 90)
        )
        start = draw(near)
        end = draw(near | random_minutes)
    else:
        x = draw(random_instants)
        start = draw(random_minutes)
        end = draw(random_minutes)
    if minute_time(start) == minute_time(end):
        end += draw(st.integers(1, 24 * 60 - 1))
    return zone, Window(minute_time(start), minute_time(end)), x


PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


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


# --- properties --------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(scenarios(), st.data())
def test_next_allowed_is_the_first_allowed_instant(
    scenario: tuple[ZoneInfo, Window, datetime], data: st.DataObject
) -> None:
    zone, window, x = scenario
    result = next_allowed(x, window, zone)
    # 1. not before x, and allowed (5. the window is never exceeded: wall time inside it)
    assert result.tzinfo is UTC
    assert result >= x
    assert is_allowed(result, window, zone)
    assert window.contains_local(result.astimezone(zone).time())
    # 2. minimal. On the UTC line there are no gaps: every instant of [x, result) is
    # disallowed. Check the points nearest the result, random samples, and (exact here)
    # the whole-minute scan of the oracle.
    if result > x:
        assert not is_allowed(result - MICROSECOND, window, zone)
        if result - MINUTE >= x:
            assert not is_allowed(result - MINUTE, window, zone)
        span = (result - x) // MICROSECOND
        for fraction in data.draw(st.lists(st.integers(0, span - 1), max_size=5)):
            assert not is_allowed(x + fraction * MICROSECOND, window, zone)
    assert result == brute_next_allowed(x, window, zone)
    # 3. idempotent
    assert next_allowed(result, window, zone) == result


@PROPERTY_SETTINGS
@given(scenarios())
def test_day_based_formulation_agrees(scenario: tuple[ZoneInfo, Window, datetime]) -> None:
    zone, window, x = scenario
    assert next_allowed(x, window, zone) == day_based_next_allowed(x, window, zone)


@PROPERTY_SETTINGS
@given(
    scenarios(),
    st.integers(-3 * 86_400, 3 * 86_400),
    st.integers(1, 4 * 86_400),
    st.booleans(),
)
def test_due_time_follows_next_allowed(
    scenario: tuple[ZoneInfo, Window, datetime],
    now_shift: int,
    length: int,
    with_window: bool,
) -> None:
    zone, drawn_window, start_at = scenario
    window = drawn_window if with_window else None
    now = start_at + timedelta(seconds=now_shift)
    stop_at = start_at + timedelta(seconds=length)
    earliest = max(start_at, now)
    first = next_allowed(earliest, window, zone)
    due = due_time(start_at, stop_at, now, window, zone)
    # 4. None iff the first allowed instant is not before stop; otherwise within [earliest, stop)
    if first >= stop_at:
        assert due is None
        assert plan(start_at, stop_at, now, window, zone) == (None, NO_ALLOWED_TIME_BEFORE_STOP)
    else:
        assert due == first
        assert earliest <= due < stop_at
        assert is_allowed(due, window, zone)
        assert plan(start_at, stop_at, now, window, zone) == (due, None)


@PROPERTY_SETTINGS
@given(scenarios(), st.times())
def test_crossing_window_is_union_of_two_halves(
    scenario: tuple[ZoneInfo, Window, datetime], t: time
) -> None:
    zone, window, x = scenario
    if not window.crosses_midnight:
        window = Window(window.end, window.start)
    midnight = time(0)
    halves = [Window(window.start, midnight)]  # [start, 24:00)
    if window.end != midnight:
        halves.append(Window(midnight, window.end))  # [00:00, end)
    # 6. the same set of wall times, hence of instants, hence the same first instant
    assert window.contains_local(t) == any(half.contains_local(t) for half in halves)
    assert is_allowed(x, window, zone) == any(is_allowed(x, half, zone) for half in halves)
    assert next_allowed(x, window, zone) == min(next_allowed(x, half, zone) for half in halves)


@PROPERTY_SETTINGS
@given(scenarios())
def test_window_end_after_is_the_first_disallowed_instant(
    scenario: tuple[ZoneInfo, Window, datetime],
) -> None:
    zone, window, x = scenario
    opening = next_allowed(x, window, zone)
    for instant in (x, opening):
        end = window_end_after(instant, window, zone)
        assert end.tzinfo is UTC
        assert not is_allowed(end, window, zone)
        assert end == brute_window_end(instant, window, zone)
        if is_allowed(instant, window, zone):
            assert end > instant
            assert is_allowed(end - MICROSECOND, window, zone)
        else:
            assert end == instant
    # the window reopens only after it has closed
    end = window_end_after(opening, window, zone)
    assert next_allowed(end, window, zone) > end


def test_transition_table_covers_the_dst_zones() -> None:
    """Guard the strategies: the near-transition branch needs transitions to sample."""
    for key in ("Europe/Berlin", "America/Santiago", "America/Havana", "Australia/Lord_Howe"):
        assert len(TRANSITIONS[key]) > 2 * (LAST_YEAR - FIRST_YEAR - 5), key
    assert TRANSITIONS["Asia/Kolkata"] == []
    assert utc(2031, 3, 30, 1) in TRANSITIONS["Europe/Berlin"]
    assert date(2031, 3, 30) == utc(2031, 3, 30, 1).astimezone(BERLIN).date()
