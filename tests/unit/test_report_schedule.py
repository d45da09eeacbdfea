"""When the daily report is due: REPORT_TIME in REPORT_TIMEZONE, DST-correct."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.reporter.schedule import Schedule, wall_instant

BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


LORD_HOWE, NEW_YORK = "Australia/Lord_Howe", "America/New_York"


@pytest.mark.parametrize(
    ("zone", "day", "at", "expected_utc", "expected_local"),
    [
        # Ordinary days follow the zone's offset of that day.
        ("Europe/Berlin", date(2031, 1, 15), time(8, 0), utc(2031, 1, 15, 7), "08:00+01:00"),
        ("Europe/Berlin", date(2031, 7, 15), time(8, 0), utc(2031, 7, 15, 6), "08:00+02:00"),
        # Spring forward 02:00 -> 03:00: 02:30 never happens; due when the clocks jump.
        ("Europe/Berlin", date(2031, 3, 30), time(2, 30), utc(2031, 3, 30, 1), "03:00+02:00"),
        ("Europe/Berlin", date(2031, 3, 30), time(2, 0), utc(2031, 3, 30, 1), "03:00+02:00"),
        # Fall back 03:00 -> 02:00: 02:30 happens twice; due at the first one (CEST).
        ("Europe/Berlin", date(2031, 10, 26), time(2, 30), utc(2031, 10, 26, 0, 30), "02:30+02:00"),
        # The days around the changes are ordinary.
        ("Europe/Berlin", date(2031, 3, 29), time(2, 30), utc(2031, 3, 29, 1, 30), "02:30+01:00"),
        ("Europe/Berlin", date(2031, 10, 27), time(2, 30), utc(2031, 10, 27, 1, 30), "02:30+01:00"),
        # Santiago springs forward at midnight: 00:30 does not exist, the day starts 01:00.
        ("America/Santiago", date(2031, 9, 7), time(0, 30), utc(2031, 9, 7, 4), "01:00-03:00"),
        # Lord Howe moves by half an hour: 02:15 -> the jump at 02:00 -> 02:30.
        (LORD_HOWE, date(2031, 10, 5), time(2, 15), utc(2031, 10, 4, 15, 30), "02:30+11:00"),
        # New York: 02:30 skipped in March, repeated in November.
        ("America/New_York", date(2031, 3, 9), time(2, 30), utc(2031, 3, 9, 7), "03:00-04:00"),
        (NEW_YORK, date(2031, 11, 2), time(1, 30), utc(2031, 11, 2, 5, 30), "01:30-04:00"),
        # Far-future days use the zone's standing rule.
        ("Europe/Berlin", date(9999, 3, 10), time(8, 0), utc(9999, 3, 10, 7), "08:00+01:00"),
    ],
)
def test_report_instant(
    zone: str, day: date, at: time, expected_utc: datetime, expected_local: str
) -> None:
    tz = ZoneInfo(zone)
    instant = wall_instant(day, at, tz)
    assert instant == expected_utc
    assert instant.tzinfo is UTC
    shown = instant.astimezone(tz).isoformat()  # 2031-01-15T08:00:00+01:00
    assert shown[11:16] + shown[-6:] == expected_local


def test_local_date_is_the_zones_calendar_day() -> None:
    schedule = Schedule(time(8, 0), ZoneInfo("Asia/Tokyo"))
    # 20:30 UTC on the 1st is already the 2nd in Tokyo (UTC+9).
    assert schedule.local_date(utc(2031, 1, 1, 20, 30)) == date(2031, 1, 2)
    assert schedule.report_instant(date(2031, 1, 2)) == utc(2031, 1, 1, 23)


ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "UTC",
]


@settings(max_examples=400, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    day=st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)),
    at=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
)
def test_the_due_instant_is_the_first_whose_wall_time_is_at_or_after(
    zone: str, day: date, at: time
) -> None:
    tz = ZoneInfo(zone)
    wanted = datetime.combine(day, at)
    instant = wall_instant(day, at, tz)

    def wall(u: datetime) -> datetime:
        return u.astimezone(tz).replace(tzinfo=None)

    assert wall(instant) >= wanted
    # One second earlier the wall clock had not reached the wanted time yet.
    assert wall(instant - timedelta(seconds=1)) < wanted
    if wall(instant) != wanted:
        # Only when the clocks skipped it: the instant is a jump forward.
        before = (instant - timedelta(seconds=1)).astimezone(tz).utcoffset()
        after = instant.astimezone(tz).utcoffset()
        assert before is not None
        assert after is not None
        assert after > before
