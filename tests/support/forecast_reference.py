"""The forecast as it was computed before issue 11: every client loaded and planned one
by one. Kept as the reference the per-zone computation (services/api/outlook.py) must
equal."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import select

from services.api.schemas import format_utc
from shared.audience import audience_condition
from shared.models import Client
from shared.windows import Window, plan

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession


@dataclass
class PerClient:
    audience: int = 0
    by_hour: dict[str, int] = field(default_factory=dict)
    first_send_at: str | None = None
    last_send_at: str | None = None
    unreachable: int = 0
    # (client id, send_at, reason) per client, in client id order.
    items: list[tuple[int, str | None, str | None]] = field(default_factory=list)


def per_client(
    clients: Iterable[tuple[int, str]],
    start_at: datetime,
    stop_at: datetime,
    window: tuple[time, time] | None,
    now: datetime,
) -> PerClient:
    """Plan each (client id, zone name) on its own, as the old forecast endpoint did."""
    edges = Window(*window) if window is not None else None
    result = PerClient()
    by_hour: Counter[str] = Counter()
    dues: list[datetime] = []
    for client_id, zone_name in sorted(clients):
        due, reason = plan(start_at, stop_at, now, edges, ZoneInfo(zone_name))
        result.audience += 1
        if due is None:
            result.unreachable += 1
        else:
            by_hour[format_utc(due.replace(minute=0, second=0, microsecond=0))] += 1
            dues.append(due)
        result.items.append((client_id, format_utc(due) if due is not None else None, reason))
    result.by_hour = dict(sorted(by_hour.items()))
    if dues:
        result.first_send_at = format_utc(min(dues))
        result.last_send_at = format_utc(max(dues))
    return result


async def audience_rows(
    session: AsyncSession, tags: Sequence[str], codes: Sequence[int]
) -> list[tuple[int, str]]:
    """(client id, zone) of every client a mailing with these filters reaches now."""
    rows = await session.execute(
        select(Client.id, Client.timezone)
        .where(audience_condition(tags, codes))
        .order_by(Client.id)
    )
    return [(int(client_id), str(zone)) for client_id, zone in rows]
