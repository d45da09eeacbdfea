"""Local-time sending windows: whether an instant is allowed, and when a message is due.

Definitions (instants are aware datetimes; every result is an aware UTC datetime):

* ``wall(u)`` is the local wall-clock time of instant ``u`` in the client's IANA zone
  (zoneinfo, with DST), as a naive ``time``.
* A window ``[S, E)`` (minute precision, ``S != E``) contains the wall time ``t`` iff
  ``S <= t < E``; when ``S > E`` it crosses midnight and contains ``t`` iff ``t >= S or
  t < E``. The end is exclusive.
* ``allowed(u)`` holds iff there is no window or the window contains ``wall(u)``. This is
  the only rule; everything below follows from it.
* ``next_allowed(x) = min {u >= x : allowed(u)}``.
* ``due(start_at, stop_at, now) = next_allowed(max(start_at, now))`` if that is strictly
  before ``stop_at``, else ``None`` (stop is exclusive: the message expires at once).

DST choices, all consequences of defining the window on the wall clock:

* Spring forward (a gap, e.g. Europe/Berlin 02:00 -> 03:00): wall times in the gap never
  occur. A window start in the gap therefore opens the window at the jump, i.e. the first
  instant after the gap (02:30 -> 03:00 local); an end in the gap closes it at the jump. A
  window lying wholly inside the gap is empty that day.
* Fall back (an overlap, e.g. Europe/Berlin 03:00 -> 02:00): wall times in the overlap
  occur twice and both occurrences count. The window can thus be split in two that night:
  02:30-04:00 is open 02:30-03:00 (first pass), shut 02:00-02:30 (second pass) and open
  again from 02:30 (second pass); 01:00-02:30 shuts at 02:30 (first pass) and reopens at the
  jump back (02:00, second pass) until 02:30.
* The allowed instants form a union of intervals ``[a, b)`` of the UTC line, and every
  opening ``a`` is an instant whose wall time is exactly ``S`` or a UTC-offset transition.
  Hence ``next_allowed`` always exists, and so does :func:`window_end_after`.

Algorithm, O(1) per call: between two offset transitions the wall clock runs with UTC, so
from a disallowed instant ``u`` the window opens exactly ``(S - wall(u)) mod 24h`` later
unless an offset transition comes first; then restart from that transition. Transitions
are found by probing the UTC offset every 6 h and bisecting to the second (tzdata
transitions fall on whole seconds). This assumes no two transitions that cancel each
other lie within 6 h; in tzdata offset changes are never closer than ~4 days (7 days since
1970). Cost: one zone conversion for an allowed instant, about six otherwise.

Day-based equivalent, for a bulk SQL version and for checking one against this module.
Let ``x`` be the instant and ``d0`` its local date. ``next_allowed(x)`` is the smallest
``u >= x`` with ``allowed(u)`` among:

1. ``x`` itself;
2. for each local date ``d`` in ``d0 - 1 .. d0 + 3`` the opening of date ``d``: the first
   instant whose local wall datetime is ``>= d + S``. That is the ordinary conversion of
   ``d + S`` when it exists once; the instant the clocks jump when ``d + S`` is in a gap
   (not allowed when the whole window lies in the gap, hence the ``allowed`` test); and,
   when it occurs twice, both occurrences (Python ``fold=0`` and ``fold=1``);
3. each UTC-offset transition instant in ``(x, x + 4 days]``. Beyond 2, this only adds the
   fall-back reopening above (the window contains the repeated wall time but not the wall
   time just before the jump back).

``d0 - 1`` is needed because the local date can step back (America/Santiago falls back from
Sunday 00:00 to Saturday 23:00). Dropping the overlap parts (the ``fold=1`` occurrence and
item 3) changes the answer only during a fall-back overlap. Beware when porting: PostgreSQL
resolves a nonexistent local time as standard time (``2031-03-30 02:30`` Europe/Berlin
becomes 03:30 CEST, not the 03:00 jump) and an ambiguous one as its standard-time
occurrence only, so both cases need explicit handling to match this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

__all__ = [
    "NO_ALLOWED_TIME_BEFORE_STOP",
    "Window",
    "due_time",
    "is_allowed",
    "next_allowed",
    "plan",
    "window_end_after",
]

NO_ALLOWED_TIME_BEFORE_STOP: Final = "no allowed local time before stop"

_DAY_US: Final = 86_400_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
# Offset probes are this far apart; see the module docstring.
_PROBE_STEP: Final = timedelta(hours=6)
# Each segment of the walk ends at an offset transition, and those are days apart, so a
# handful of segments always suffice; the bound only guards against a broken tzinfo.
_MAX_SEGMENTS: Final = 16


def _time_us(t: time) -> int:
    """Microseconds since local midnight."""
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


@dataclass(frozen=True, slots=True)
class Window:
    """A daily local-time window ``[start, end)``; crosses midnight when start > end."""

    start: time
    end: time

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, time):
                raise TypeError(f"window {name} must be a datetime.time, got {value!r}")
            if value.tzinfo is not None:
                raise ValueError(f"window {name} must be a naive local time, got {value!r}")
            if value.second or value.microsecond:
                raise ValueError(f"window {name} must be a whole minute, got {value!r}")
        if self.start == self.end:
            raise ValueError(f"window start and end must differ, both are {self.start!r}")

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.end

    def contains_local(self, t: time) -> bool:
        """Whether the local wall time `t` is inside the window (end exclusive)."""
        if t.tzinfo is not None:
            raise ValueError(f"expected a naive local wall time, got {t!r}")
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def _first_change(
    lo: datetime, hi: datetime, base: timedelta | None, zone: ZoneInfo
) -> datetime | None:
    """The first instant in ``(lo, hi]`` whose UTC offset differs from `base`, if any.

    `base` is the offset at `lo`; all instants are UTC.
    """
    prev = lo
    while prev < hi:
        probe = min(prev + _PROBE_STEP, hi)
        if probe.astimezone(zone).utcoffset() != base:
            return _bisect_change(prev, probe, base, zone)
        prev = probe
    return None


def _bisect_change(a: datetime, b: datetime, base: timedelta | None, zone: ZoneInfo) -> datetime:
    """The transition in ``(a, b]``: offset(a) == base != offset(b), found to the second."""
    lo = (a - _EPOCH) // _SECOND  # offset here is still `base`: transitions are whole seconds
    hi = (b - _EPOCH) // _SECOND  # and the transition is at or before this second
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (_EPOCH + timedelta(seconds=mid)).astimezone(zone).utcoffset() == base:
            lo = mid
        else:
            hi = mid
    found = _EPOCH + timedelta(seconds=hi)
    # A tzinfo with sub-second transitions could break the premise; keep making progress.
    return found if found > a else b


def _walk(start: datetime, window: Window, zone: ZoneInfo, *, inside: bool) -> datetime:
    """The earliest UTC instant ``>= start`` at which ``allowed`` equals `inside`.

    Searching for ``inside=True`` the boundary crossed is the window start, otherwise the
    window end: a wall clock moving forward without jumps enters ``[S, E)`` only at ``S``
    and leaves it only at ``E``.
    """
    target_us = _time_us(window.start if inside else window.end)
    lo = start
    for _ in range(_MAX_SEGMENTS):
        local = lo.astimezone(zone)
        wall = local.time()
        if window.contains_local(wall) == inside:
            return lo
        # Positive: the wall time is not the target, else the test above had returned.
        ahead = timedelta(microseconds=(target_us - _time_us(wall)) % _DAY_US)
        candidate = lo + ahead
        change = _first_change(lo, candidate, local.utcoffset(), zone)
        if change is None:
            return candidate
        lo = change
    raise RuntimeError(f"no window boundary found after {start.isoformat()} in {zone}")


def is_allowed(instant: datetime, window: Window | None, zone: ZoneInfo) -> bool:
    """Whether a message may be sent at `instant` to a client in `zone`."""
    utc = _utc(instant, "instant")
    if window is None:
        return True
    return window.contains_local(utc.astimezone(zone).time())


def next_allowed(instant: datetime, window: Window | None, zone: ZoneInfo) -> datetime:
    """The earliest instant ``>= instant`` that is allowed, in UTC."""
    utc = _utc(instant, "instant")
    if window is None:
        return utc
    return _walk(utc, window, zone, inside=True)


def window_end_after(instant: datetime, window: Window, zone: ZoneInfo) -> datetime:
    """The earliest instant ``>= instant`` that is not allowed, in UTC.

    For an allowed instant this is when the current window closes: do not start a request
    at or after it. For an instant outside the window it is the instant itself.
    """
    return _walk(_utc(instant, "instant"), window, zone, inside=False)


def due_time(
    start_at: datetime,
    stop_at: datetime,
    now: datetime,
    window: Window | None,
    zone: ZoneInfo,
) -> datetime | None:
    """When a message of the mailing is due, in UTC; ``None`` if not before `stop_at`."""
    start = _utc(start_at, "start_at")
    stop = _utc(stop_at, "stop_at")
    earliest = max(start, _utc(now, "now"))
    if earliest >= stop:
        return None
    due = next_allowed(earliest, window, zone)
    return due if due < stop else None


def plan(
    start_at: datetime,
    stop_at: datetime,
    now: datetime,
    window: Window | None,
    zone: ZoneInfo,
) -> tuple[datetime | None, str | None]:
    """``(due, None)``, or ``(None, reason)`` when nothing can be sent before `stop_at`."""
    due = due_time(start_at, stop_at, now, window, zone)
    if due is None:
        return None, NO_ALLOWED_TIME_BEFORE_STOP
    return due, None
