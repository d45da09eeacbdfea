"""The per-zone plan (services/api/outlook.py) equals planning every client on its own,
for random audiences over many zones, windows (crossing midnight, in DST gaps and
overlaps) and stop times."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, time, timedelta

import pytest

from services.api.outlook import Schedule, plan_zones
from services.api.schemas import format_utc
from tests.support.forecast_reference import per_client

ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "America/Santiago",
    "America/St_Johns",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
]

# Around Europe's and North America's DST changes, and an ordinary day.
STARTS = [
    datetime(2031, 3, 29, 12, tzinfo=UTC),
    datetime(2031, 10, 25, 23, 30, tzinfo=UTC),
    datetime(2031, 11, 2, 4, tzinfo=UTC),
    datetime(2031, 6, 1, 10, 15, tzinfo=UTC),
]


def _case(seed: int) -> tuple[Schedule, list[tuple[int, str]], datetime]:
    rng = random.Random(seed)
    start = rng.choice(STARTS) + timedelta(minutes=rng.randrange(0, 24 * 60, 15))
    stop = start + timedelta(minutes=rng.choice([1, 30, 61, 6 * 60, 26 * 60, 7 * 24 * 60]))
    window = None
    if rng.random() < 0.8:
        edges = rng.sample(range(0, 24 * 60, 30), 2)
        window = (time(edges[0] // 60, edges[0] % 60), time(edges[1] // 60, edges[1] % 60))
    clients = [(ident, rng.choice(ZONES)) for ident in range(1, rng.randrange(1, 400))]
    # Now is before the start, or after it (then planning starts from now).
    now = start + timedelta(minutes=rng.choice([-600, 0, 45]))
    schedule = Schedule(start, stop, *(window if window else (None, None)))
    return schedule, clients, now


@pytest.mark.parametrize("seed", range(300))
def test_per_zone_plan_equals_planning_each_client(seed: int) -> None:
    schedule, clients, now = _case(seed)
    window = (
        (schedule.window_start, schedule.window_end)
        if schedule.window_start is not None and schedule.window_end is not None
        else None
    )
    expected = per_client(clients, schedule.start_at, schedule.stop_at, window, now)
    counts = Counter(zone for _, zone in clients)
    outlook = plan_zones(schedule, now, counts.items())
    assert outlook.audience == expected.audience
    assert outlook.by_hour == expected.by_hour
    assert outlook.unreachable == expected.unreachable
    first = outlook.first_send_at
    last = outlook.last_send_at
    assert (format_utc(first) if first else None) == expected.first_send_at
    assert (format_utc(last) if last else None) == expected.last_send_at
    for client_id, zone in clients:
        due, reason = outlook.zones[zone]
        assert (client_id, format_utc(due) if due else None, reason) in expected.items


def test_a_zone_given_twice_is_counted_twice_and_planned_once() -> None:
    schedule = Schedule(
        datetime(2031, 6, 1, 10, tzinfo=UTC), datetime(2031, 6, 2, tzinfo=UTC), None, None
    )
    outlook = plan_zones(schedule, schedule.start_at, [("UTC", 2), ("Asia/Tokyo", 1), ("UTC", 3)])
    assert outlook.audience == 6
    assert outlook.by_hour == {"2031-06-01 10:00:00": 6}
    assert set(outlook.zones) == {"UTC", "Asia/Tokyo"}


def test_nothing_before_stop_counts_as_unreachable_and_leaves_no_send_times() -> None:
    # 12:00-13:00 UTC; the window opens at 22:00 local: UTC waits, Tokyo opens at stop.
    schedule = Schedule(
        datetime(2031, 3, 29, 12, tzinfo=UTC),
        datetime(2031, 3, 29, 13, tzinfo=UTC),
        time(22),
        time(6),
    )
    outlook = plan_zones(schedule, schedule.start_at, [("UTC", 4), ("Asia/Tokyo", 1)])
    assert (outlook.audience, outlook.unreachable, outlook.by_hour) == (5, 5, {})
    assert outlook.first_send_at is None
    assert outlook.last_send_at is None
