"""Building blocks of the sending-window tests (shared.windows): UTC instants, local
times and windows from short text."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from shared.windows import Window

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
