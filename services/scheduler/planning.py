"""Due times for a whole audience, computed once per time zone.

Every client in one zone gets the same due time for a mailing, so the scheduler asks
the shared window algebra once per distinct zone and lets PostgreSQL join the answer
onto the clients: the forecast and the scheduler agree by construction, and expanding a
million clients costs a few hundred Python calls plus set-based SQL.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from shared.windows import Window, due_time

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from shared.models import Mailing


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def window_of(mailing: Mailing) -> Window | None:
    if mailing.window_start is None or mailing.window_end is None:
        return None
    return Window(mailing.window_start, mailing.window_end)


def due_by_zone(
    mailing: Mailing, zones: Iterable[str], now: datetime
) -> tuple[list[str], list[datetime | None]]:
    """Parallel arrays (zone names, due times or None) ready for `unnest`."""
    window = window_of(mailing)
    names = sorted(set(zones))
    dues = [due_time(mailing.start_at, mailing.stop_at, now, window, zone(n)) for n in names]
    return names, dues
