"""When a mailing's messages would go out: the forecast and the audience preview.

Every client of one time zone gets the same planned send time (`shared.windows.plan`
depends on the mailing and the zone only), so the clients are counted per zone in SQL
and each zone is planned once: the work in this process grows with the number of zones,
never with the number of clients. Before a mailing is activated (and for the preview)
the counts come from `audience_zone_count` / `audience_tag_count`, the live clients
counted per (zone, operator code, tag set) by triggers (migration 0005): PostgreSQL then
reads thousands of counts instead of a million clients and their tags.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any, TypeVarTuple
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Select, cast, func, select, text, true
from sqlalchemy.dialects.postgresql import ARRAY

from services.api.schemas import ForecastItem, MailingIn, Preview, format_utc
from shared.audience import Audience, resolve_audience
from shared.models import (
    PENDING_STATUSES,
    AudienceTagCount,
    AudienceZoneCount,
    Client,
    Mailing,
    MailingState,
    Message,
    Tag,
)
from shared.windows import Window, plan

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.ext.asyncio import AsyncSession

_Ts = TypeVarTuple("_Ts")


@dataclass(frozen=True)
class Schedule:
    """What the planning reads of a mailing (or of a mailing body not yet created)."""

    start_at: datetime
    stop_at: datetime
    window_start: time | None
    window_end: time | None

    @property
    def window(self) -> Window | None:
        if self.window_start is None or self.window_end is None:
            return None
        return Window(self.window_start, self.window_end)


@dataclass
class Outlook:
    """The per-zone plan summed up: what the forecast and the preview report."""

    audience: int = 0
    by_hour: dict[str, int] = field(default_factory=dict)
    first_send_at: datetime | None = None
    last_send_at: datetime | None = None
    unreachable: int = 0
    # The plan of each zone seen: (due, reason), for a page of per-client items.
    zones: dict[str, tuple[datetime | None, str | None]] = field(default_factory=dict)


def plan_zones(schedule: Schedule, now: datetime, counts: Iterable[tuple[str, int]]) -> Outlook:
    """Plan each zone once and add up its clients: equal to planning every client.

    `counts` is (zone name, number of clients); a zone may come more than once.
    """
    window = schedule.window
    outlook = Outlook()
    by_hour: Counter[str] = Counter()
    for zone_name, count in counts:
        planned = outlook.zones.get(zone_name)
        if planned is None:
            planned = plan(schedule.start_at, schedule.stop_at, now, window, ZoneInfo(zone_name))
            outlook.zones[zone_name] = planned
        due, _reason = planned
        outlook.audience += count
        if due is None:
            outlook.unreachable += count
            continue
        by_hour[format_utc(due.replace(minute=0, second=0, microsecond=0))] += count
        if outlook.first_send_at is None or due < outlook.first_send_at:
            outlook.first_send_at = due
        if outlook.last_send_at is None or due > outlook.last_send_at:
            outlook.last_send_at = due
    outlook.by_hour = dict(sorted(by_hour.items()))
    return outlook


def _schedule(mailing: Mailing) -> Schedule:
    return Schedule(mailing.start_at, mailing.stop_at, mailing.window_start, mailing.window_end)


def _who(mailing: Mailing, audience: Audience | None, query: Select[*_Ts]) -> Select[*_Ts]:
    """`query` over the clients the forecast covers. Before activation (`audience`
    given): every client matching the filter now. After: the clients with a pending
    message."""
    if audience is not None:
        return query.where(audience.condition())
    return query.join(Message, Message.client_id == Client.id).where(
        Message.mailing_id == mailing.id, Message.status.in_(PENDING_STATUSES)
    )


async def forecast(
    session: AsyncSession, mailing: Mailing, limit: int, offset: int, now: datetime
) -> tuple[int, list[ForecastItem], dict[str, int]]:
    """The total, one page of per-client items and `by_hour` over all clients."""
    audience = None
    if mailing.state == MailingState.SCHEDULED:
        audience = await resolve_audience(session, mailing.filter_tags, mailing.filter_codes)
    if audience is not None:  # not activated yet: the counts kept per zone
        rows = await session.execute(zone_counts(audience))
    else:
        rows = await session.execute(
            _who(mailing, audience, select(Client.timezone, func.count())).group_by(Client.timezone)
        )
    outlook = plan_zones(_schedule(mailing), now, [(zone, int(n)) for zone, n in rows])
    page = await session.execute(
        _who(mailing, audience, select(Client.id, Client.timezone))
        .order_by(Client.id)
        .limit(limit)
        .offset(offset)
    )
    schedule = _schedule(mailing)
    items = []
    for client_id, zone_name in page:
        planned = outlook.zones.get(zone_name)
        if planned is None:  # a client that came after the counts were read
            planned = plan(
                schedule.start_at, schedule.stop_at, now, schedule.window, ZoneInfo(zone_name)
            )
        due, reason = planned
        items.append(
            ForecastItem(
                client=client_id,
                send_at=format_utc(due) if due is not None else None,
                reason=reason,
            )
        )
    return outlook.audience, items, outlook.by_hour


def _counted(audience: Audience, table: type[AudienceZoneCount | AudienceTagCount]) -> list[Any]:
    """The audience's filter on a table of counts (keys: operator code, tag ids)."""
    conditions: list[Any] = []
    if audience.tag_ids is not None:
        conditions.append(table.tag_ids.overlap(cast(audience.tag_ids, ARRAY(BigInteger))))
    if audience.codes:
        conditions.append(table.operator_code.in_(audience.codes))
    return conditions


def zone_counts(audience: Audience) -> Select[str, int]:
    """The audience per time zone, from the counts (one row per zone with clients)."""
    clients = func.sum(AudienceZoneCount.clients)
    return (
        select(AudienceZoneCount.timezone, clients)
        .where(*_counted(audience, AudienceZoneCount))
        .group_by(AudienceZoneCount.timezone)
        .having(clients != 0)
    )


def preview_queries(
    audience: Audience,
) -> tuple[Select[str, int, int], Select[str, int]]:
    """The preview's two aggregates: the audience per (zone, operator code), and per tag
    its clients carry. Both read the live-client counts the triggers of migration 0005
    keep per (zone, code, tag set), never the clients: the work grows with the number of
    distinct keys, not of clients."""
    clients = func.sum(AudienceZoneCount.clients)
    by_zone_and_code = (
        select(AudienceZoneCount.timezone, AudienceZoneCount.operator_code, clients)
        .where(*_counted(audience, AudienceZoneCount))
        .group_by(AudienceZoneCount.timezone, AudienceZoneCount.operator_code)
        .having(clients != 0)
    )
    # Per tag: the zone-less counts (a few rows per code), each tag set unnested.
    tag_id = func.unnest(AudienceTagCount.tag_ids).table_valued("tag_id").render_derived()
    per_tag = (
        select(tag_id.c.tag_id, func.sum(AudienceTagCount.clients).label("clients"))
        .select_from(AudienceTagCount)
        .join(tag_id, true())
        .where(*_counted(audience, AudienceTagCount))
        .group_by(tag_id.c.tag_id)
        .subquery()
    )
    by_tag = (
        select(Tag.name, per_tag.c.clients)
        .join(per_tag, per_tag.c.tag_id == Tag.id)
        .where(per_tag.c.clients != 0)
    )
    return by_zone_and_code, by_tag


async def preview(session: AsyncSession, body: MailingIn, now: datetime | None = None) -> Preview:
    """The audience of a mailing body and when it would go out, as if created now.

    Its first statement in a fresh transaction: the tag names, the counts per zone and
    code and those per tag are read from one snapshot, so they agree with each other."""
    now = now or datetime.now(UTC)
    await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    audience = await resolve_audience(session, body.tag, body.mobile_code)
    by_zone_and_code, by_tag = preview_queries(audience)
    by_zone: Counter[str] = Counter()
    by_code: Counter[int] = Counter()
    for zone, code, count in await session.execute(by_zone_and_code):
        by_zone[zone] += count
        by_code[code] += count
    tags = {name: int(count) for name, count in await session.execute(by_tag)}
    schedule = Schedule(
        body.date_time_start,
        body.date_time_stop,
        body.time_interval_start,
        body.time_interval_end,
    )
    outlook = plan_zones(schedule, now, by_zone.items())
    return Preview(
        audience=outlook.audience,
        by_operator_code={str(code): by_code[code] for code in sorted(by_code)},
        by_tag=dict(sorted(tags.items())),
        by_timezone=dict(sorted(by_zone.items())),
        by_hour=outlook.by_hour,
        first_send_at=outlook.first_send_at,
        last_send_at=outlook.last_send_at,
        unreachable=outlook.unreachable,
    )
