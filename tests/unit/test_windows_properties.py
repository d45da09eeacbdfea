"""Properties of shared.windows against oracles, for random zones, windows and instants.

The oracles work from the definition only (allowed = the window contains the local wall
time) by scanning whole UTC minutes; that is exact for the zones and years used here,
because every window edge (whole local minutes) and every offset transition in them
falls on a whole UTC minute. The explicit cases: tests/unit/test_windows.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

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
from tests.support.windows import BERLIN, utc

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
