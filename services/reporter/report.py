"""The daily report's content: which mailings, their counts, rates, reasons and changes.

Definitions (docs/reporting.md#daily-report repeats them for readers of the email):

* **Period**: the 24 hours up to the moment the report is built.
* **Active mailing**: one whose run ``[start_at, stop_at)`` overlaps the period
  (``start_at < period_end`` and ``stop_at > period_start``). That covers every mailing
  that could send, retry or expire a message in the period (messages are never sent
  outside their mailing's run, and whatever is left expires at its stop time). Deleted
  mailings are gone with their messages and are not reported.
* **Counts**: the per-status counters the reporter keeps (``mailing_status_count``),
  every status, zeros included.
* **Delivery rate** = sent / (sent + failed + expired): the share of the messages whose
  fate is decided that reached the client. Pending messages (scheduled, queued,
  sending, retrying) are not decided yet and cancelled ones were never meant to go
  (mailing edited, client deleted), so neither counts. No decided message: no rate.
* **Failure reasons**: the most frequent ``last_error`` values of the mailing's failed,
  expired and retrying messages, with counts.
* **Change**: each count minus the same count in the previous report that went out
  (its ``daily_report.summary``); a mailing that was not in it is "new".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select

from shared.models import DailyReport, Mailing, MailingStatusCount, Message, MessageStatus

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

PERIOD = timedelta(hours=24)
STATUSES: tuple[str, ...] = tuple(status.value for status in MessageStatus)
PENDING: tuple[str, ...] = ("scheduled", "queued", "sending", "retrying")
UNDELIVERED: tuple[str, ...] = ("failed", "expired")
REASON_STATUSES: tuple[str, ...] = ("failed", "expired", "retrying")
NO_REASON = "(no reason recorded)"
SUMMARY_SCHEMA = 1


def delivery_rate(counts: dict[str, int]) -> float | None:
    """sent / (sent + failed + expired); None while nothing is decided."""
    sent = counts.get("sent", 0)
    decided = sent + sum(counts.get(status, 0) for status in UNDELIVERED)
    return sent / decided if decided else None


@dataclass(frozen=True)
class Totals:
    mailings: int
    sent: int
    undelivered: int
    pending: int
    cancelled: int

    @property
    def rate(self) -> float | None:
        decided = self.sent + self.undelivered
        return self.sent / decided if decided else None

    def as_dict(self) -> dict[str, int]:
        return {
            "mailings": self.mailings,
            "sent": self.sent,
            "undelivered": self.undelivered,
            "pending": self.pending,
            "cancelled": self.cancelled,
        }

    @classmethod
    def of(cls, counts: list[dict[str, int]]) -> Totals:
        def total(statuses: tuple[str, ...]) -> int:
            return sum(c.get(status, 0) for c in counts for status in statuses)

        return cls(
            mailings=len(counts),
            sent=total(("sent",)),
            undelivered=total(UNDELIVERED),
            pending=total(PENDING),
            cancelled=total(("cancelled",)),
        )


@dataclass(frozen=True)
class MailingReport:
    id: int
    text: str
    state: str
    start_at: datetime
    stop_at: datetime
    counts: dict[str, int]
    reasons: list[tuple[str, int]]
    # Counts in the previous report; None when the mailing was not in it ("new").
    previous: dict[str, int] | None

    @property
    def rate(self) -> float | None:
        return delivery_rate(self.counts)

    @property
    def previous_rate(self) -> float | None:
        return None if self.previous is None else delivery_rate(self.previous)

    def change(self, status: str) -> int | None:
        if self.previous is None:
            return None
        return self.counts.get(status, 0) - self.previous.get(status, 0)


@dataclass(frozen=True)
class Previous:
    """What the last report that went out said, for the change columns."""

    report_date: date
    sent_at: datetime
    mailings: dict[int, dict[str, int]]
    totals: dict[str, int] | None


@dataclass(frozen=True)
class Report:
    # The day the report is for (the scheduled report's day, or today for one on demand).
    report_date: date
    scheduled: bool
    generated_at: datetime
    period_start: datetime
    period_end: datetime
    mailings: list[MailingReport]
    previous: Previous | None
    totals: Totals = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "totals", Totals.of([m.counts for m in self.mailings]))

    def total_change(self, key: str) -> int | None:
        if self.previous is None or self.previous.totals is None:
            return None
        return self.totals.as_dict()[key] - self.previous.totals.get(key, 0)

    def summary(self, **extra: Any) -> dict[str, Any]:
        """What `daily_report.summary` keeps: enough for the next report's changes."""
        return {
            "schema": SUMMARY_SCHEMA,
            "generated_at": self.generated_at.isoformat(),
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "totals": self.totals.as_dict(),
            "mailings": {
                str(m.id): {"counts": m.counts, "reasons": [list(r) for r in m.reasons]}
                for m in self.mailings
            },
            **extra,
        }


def _previous_from(row: DailyReport) -> Previous | None:
    summary = row.summary or {}
    if row.sent_at is None or summary.get("schema") != SUMMARY_SCHEMA:
        return None
    mailings: dict[int, dict[str, int]] = {}
    for key, value in (summary.get("mailings") or {}).items():
        counts = value.get("counts") if isinstance(value, dict) else None
        if isinstance(counts, dict):
            mailings[int(key)] = {str(s): int(n) for s, n in counts.items()}
    totals = summary.get("totals")
    return Previous(
        report_date=row.report_date,
        sent_at=row.sent_at,
        mailings=mailings,
        totals=totals if isinstance(totals, dict) else None,
    )


async def previous_report(session: AsyncSession, *, before: date | None) -> Previous | None:
    """The latest report that went out (for a date before `before`, when given)."""
    query = select(DailyReport).where(DailyReport.sent_at.is_not(None))
    if before is not None:
        query = query.where(DailyReport.report_date < before)
    row = (
        await session.execute(query.order_by(DailyReport.report_date.desc()).limit(1))
    ).scalar_one_or_none()
    return None if row is None else _previous_from(row)


async def build_report(
    session: AsyncSession,
    *,
    now: datetime,
    report_date: date,
    scheduled: bool,
    top_reasons: int,
) -> Report:
    """Read everything the report shows, as of `now`, in one snapshot."""
    period_start = now - PERIOD
    previous = await previous_report(session, before=report_date if scheduled else None)
    mailings = (
        await session.execute(
            select(
                Mailing.id,
                Mailing.text,
                Mailing.state,
                Mailing.start_at,
                Mailing.stop_at,
            )
            .where(Mailing.start_at < now, Mailing.stop_at > period_start)
            .order_by(Mailing.id)
        )
    ).all()
    ids = [row.id for row in mailings]
    counts: dict[int, dict[str, int]] = {id_: dict.fromkeys(STATUSES, 0) for id_ in ids}
    reasons: dict[int, list[tuple[str, int]]] = {id_: [] for id_ in ids}
    if ids:
        for mailing_id, status, count in await session.execute(
            select(
                MailingStatusCount.mailing_id, MailingStatusCount.status, MailingStatusCount.count
            ).where(MailingStatusCount.mailing_id.in_(ids))
        ):
            counts[mailing_id][status] = int(count)
        for mailing_id, reason, count in await _top_reasons(session, ids, top_reasons):
            reasons[mailing_id].append((reason, count))
    return Report(
        report_date=report_date,
        scheduled=scheduled,
        generated_at=now,
        period_start=period_start,
        period_end=now,
        previous=previous,
        mailings=[
            MailingReport(
                id=row.id,
                text=row.text,
                state=row.state,
                start_at=row.start_at,
                stop_at=row.stop_at,
                counts=counts[row.id],
                reasons=reasons[row.id],
                previous=None if previous is None else previous.mailings.get(row.id),
            )
            for row in mailings
        ],
    )


async def _top_reasons(
    session: AsyncSession, ids: list[int], top: int
) -> list[tuple[int, str, int]]:
    """Per mailing, the `top` most frequent reasons of failed/expired/retrying messages.

    Served by the (mailing_id, status) index; ties go to the alphabetically first reason
    so the report is stable.
    """
    reason = func.coalesce(Message.last_error, NO_REASON).label("reason")
    grouped = (
        select(Message.mailing_id, reason, func.count().label("n"))
        .where(and_(Message.mailing_id.in_(ids), Message.status.in_(REASON_STATUSES)))
        .group_by(Message.mailing_id, reason)
        .subquery()
    )
    ranked = select(
        grouped.c.mailing_id,
        grouped.c.reason,
        grouped.c.n,
        func.row_number()
        .over(
            partition_by=grouped.c.mailing_id,
            order_by=(grouped.c.n.desc(), grouped.c.reason),
        )
        .label("rank"),
    ).subquery()
    rows = await session.execute(
        select(ranked.c.mailing_id, ranked.c.reason, ranked.c.n)
        .where(ranked.c.rank <= top)
        .order_by(ranked.c.mailing_id, ranked.c.rank)
    )
    return [(int(m), str(r), int(n)) for m, r, n in rows]
