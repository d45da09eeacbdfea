"""When the daily report is due: a local wall-clock time in an IANA zone, DST-correct.

* ``report_instant(day)`` is the instant the report for local date ``day`` is due: the
  wall time ``REPORT_TIME`` on that date in ``REPORT_TIMEZONE``. When the clocks skip it
  (a spring-forward gap) it is the first instant after the gap, i.e. the moment the
  clocks jump; when they repeat it (a fall-back overlap) it is its first occurrence.
* ``local_date(now)`` is the report zone's calendar date at ``now``.

Pure functions; every instant is an aware datetime, every result is in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo


def wall_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The first instant whose local wall time in `zone` is at or after `day` `at`."""
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first  # exists (for a repeated time, fold=0 is its first occurrence)
    # In a gap: fold=0 reads it with the offset before the jump, fold=1 with the one
    # after; the jump lies between the two readings. Bisect to the second (tzdata
    # transitions fall on whole seconds).
    other = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = min(first, other), max(first, other)
    after = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = (low + (high - low) / 2).replace(microsecond=0)
        if middle.astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class Schedule:
    """REPORT_TIME in REPORT_TIMEZONE."""

    at: time
    zone: ZoneInfo

    def local_date(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()

    def report_instant(self, day: date) -> datetime:
        return wall_instant(day, self.at, self.zone)

    def local(self, instant: datetime) -> datetime:
        return instant.astimezone(self.zone)
