"""The daily email: once a day at REPORT_TIME in REPORT_TIMEZONE, at most once per day
across every reporter process; and a report on request that leaves the day alone.

The guarantee, built on the `daily_report` row of the report's day:

1. **Claim.** A reporter sends day D's report only while it holds D's row:
   `INSERT ... ON CONFLICT DO UPDATE ... WHERE sent_at IS NULL AND (claimed_by = me OR
   claimed_at <= now - REPORT_CLAIM_LEASE_S) RETURNING`. One statement, so of two
   reporters racing exactly one gets the row; the holder renews `claimed_at` with the same
   statement before every attempt, and a claim left by a reporter that died is taken over
   once it is older than the lease.
2. **Sent.** After the SMTP server has accepted the message (and only then) the holder
   sets `sent_at` and the summary, conditionally on still holding the claim. A report
   the server did not take is retried with backoff (`REPORT_RETRY_DELAYS_S`), never
   marked sent.
3. **The one gap.** A holder that dies (or stalls longer than the lease) after the SMTP
   server accepted the message and before that commit leaves the row unsent; another
   reporter then sends the report again. Every copy of a day's report carries the same
   Message-ID (day, sender and recipients hashed), so mail systems that de-duplicate by
   Message-ID drop the second one. Otherwise: at most one report per day.

Which day: from REPORT_TIME on, today's report is owed; a reporter started later that
day sends it if it has not gone (catch-up). Before REPORT_TIME, yesterday's report is
still retried if it was claimed and not sent (SMTP down, holder died), until today's
time; a day nobody claimed by then is never sent afterwards, nor any older one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, update
from sqlalchemy.dialects.postgresql import insert

from services.reporter.mailer import MailError, SmtpMailer
from services.reporter.render import compose, daily_message_id, render_html, subject
from services.reporter.report import Report, build_report
from services.reporter.schedule import Schedule
from shared.logging import get_logger
from shared.metrics import REPORTS
from shared.models import DailyReport

if TYPE_CHECKING:
    from collections.abc import Callable
    from email.message import EmailMessage

    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.service import Runtime, Setup
    from shared.settings import Settings

    Clock = Callable[[], datetime]

log = get_logger(__name__)

# The loop re-reads the clock at least this often, whatever it waits for (a suspended
# machine or a clock step must not push the report back by hours).
MAX_SLEEP_S = 300.0
# A claim held elsewhere is looked at again after at most this long.
MIN_RECHECK_S = 1.0


def utcnow() -> datetime:
    return datetime.now(UTC)


Action = Literal["waiting", "sent", "already_sent", "held_elsewhere", "failed"]


@dataclass(frozen=True)
class Step:
    """What one pass of the scheduled path did, and when it wants to run again."""

    action: Action
    report_date: date
    wait_s: float
    detail: str = ""


@dataclass(frozen=True)
class SentNow:
    recipients: list[str]
    refused: dict[str, str]
    subject: str
    mailings: int
    message_id: str


class Reports:
    """Builds and sends the report: the daily one (`run`/`step`) and one on request."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        mailer: SmtpMailer,
        *,
        clock: Clock = utcnow,
        instance: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.mailer = mailer
        self.clock = clock
        self.schedule = Schedule(settings.report_time, ZoneInfo(settings.report_timezone))
        self.recipients = list(settings.report_recipients)
        self.lease = timedelta(seconds=settings.report_claim_lease_s)
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Reports the SMTP server accepted whose `sent_at` is not committed yet, by day.
        self._accepted: dict[date, dict[str, Any]] = {}
        self._failures: dict[date, int] = {}
        self.last_step: Step | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.recipients)

    # --- on request -----------------------------------------------------------------

    async def preview(self) -> tuple[str, str]:
        """The report as of now, as it would be mailed: (subject, HTML). Sends nothing."""
        now = self.clock()
        report = await self._build(now, self.schedule.local_date(now), scheduled=False)
        return subject(report, self.schedule), render_html(report, self.schedule)

    async def send_now(self, recipients: list[str]) -> SentNow:
        """Build and send a report now; one attempt, MailError when it is not taken.

        Leaves `daily_report` alone: the day's scheduled report still goes out.
        """
        now = self.clock()
        report = await self._build(now, self.schedule.local_date(now), scheduled=False)
        message = self._compose(report, recipients, message_id=None)
        try:
            accepted = await self.mailer.send(message, recipients)
        except MailError:
            REPORTS.labels("on_request", "failed").inc()
            raise
        REPORTS.labels("on_request", "sent").inc()
        log.info(
            "report_sent_on_request",
            recipients=accepted.accepted,
            refused=accepted.refused or None,
            mailings=len(report.mailings),
            message_id=message["Message-ID"],
        )
        return SentNow(
            recipients=accepted.accepted,
            refused=accepted.refused,
            subject=str(message["Subject"]),
            mailings=len(report.mailings),
            message_id=str(message["Message-ID"]),
        )

    # --- the daily report -----------------------------------------------------------

    async def run(self) -> None:
        """The scheduled path for the life of the process; never raises."""
        now = self.clock()
        log.info(
            "daily_report_scheduled",
            at=self.settings.report_time.strftime("%H:%M"),
            timezone=self.schedule.zone.key,
            recipients=len(self.recipients),
            next_at=self._next_due(now).isoformat(),
            instance=self.instance,
        )
        errors = 0
        while True:
            try:
                step = await self.step()
                wait, errors = step.wait_s, 0
            except Exception as exc:
                errors += 1
                wait = self._delay(errors)
                log.warning("daily_report_step_failed", error=repr(exc), retry_in_s=wait)
            await asyncio.sleep(max(0.0, min(wait, MAX_SLEEP_S)))

    async def step(self) -> Step:
        """One pass: decide the owed day, claim it, send it; say when to come back."""
        now = self.clock()
        today = self.schedule.local_date(now)
        due = self.schedule.report_instant(today)
        if now >= due:
            day = today
        else:
            day = today - timedelta(days=1)
            row = await self._row(day)
            if row is None or row.sent_at is not None:
                self._give_up_before(today)
                return self._did(Step("waiting", today, _seconds(due - now)))
        self._give_up_before(day)
        horizon = _seconds(self.schedule.report_instant(day + timedelta(days=1)) - now)

        if not await self._claim(day, now):
            if self._accepted.pop(day, None) is not None:
                self._failures.pop(day, None)
                log.warning("daily_report_claim_lost_after_sending", report_date=day.isoformat())
            row = await self._row(day)
            if row is None:
                return self._did(Step("held_elsewhere", day, MIN_RECHECK_S))
            if row.sent_at is not None:
                return self._did(Step("already_sent", day, horizon))
            retake = _seconds(row.claimed_at + self.lease - now)
            wait = min(max(retake, MIN_RECHECK_S), horizon)
            return self._did(Step("held_elsewhere", day, wait, detail=row.claimed_by))

        summary = self._accepted.get(day)
        if summary is None:
            try:
                summary = await self._send(day, now)
            except MailError as exc:
                REPORTS.labels("daily", "failed").inc()
                attempt = self._failures[day] = self._failures.get(day, 0) + 1
                wait = min(self._delay(attempt), horizon)
                log.warning(
                    "daily_report_send_failed",
                    report_date=day.isoformat(),
                    attempt=attempt,
                    smtp=self.mailer.server,
                    error=exc.reason,
                    retry_in_s=wait,
                )
                return self._did(Step("failed", day, wait, detail=exc.reason))
            REPORTS.labels("daily", "sent").inc()
            self._accepted[day] = summary

        recorded = await self._mark_sent(day, summary)
        del self._accepted[day]
        self._failures.pop(day, None)
        if recorded:
            log.info(
                "daily_report_sent",
                report_date=day.isoformat(),
                recipients=summary["recipients"],
                mailings=summary["totals"]["mailings"],
                message_id=summary["message_id"],
            )
        else:
            # The lease ran out mid-send and another reporter took the day over.
            log.warning(
                "daily_report_claim_lost_after_sending",
                report_date=day.isoformat(),
                message_id=summary["message_id"],
            )
        return self._did(Step("sent", day, horizon))

    async def _send(self, day: date, now: datetime) -> dict[str, Any]:
        report = await self._build(now, day, scheduled=True)
        message_id = daily_message_id(day, self.settings.report_from, self.recipients)
        message = self._compose(report, self.recipients, message_id=message_id)
        accepted = await self.mailer.send(message, self.recipients)
        if accepted.refused:
            log.warning(
                "daily_report_recipients_refused",
                report_date=day.isoformat(),
                refused=accepted.refused,
            )
        return report.summary(
            subject=str(message["Subject"]),
            recipients=accepted.accepted,
            refused=accepted.refused,
            message_id=message_id,
            smtp_response=accepted.response,
        )

    async def _claim(self, day: date, now: datetime) -> bool:
        """Take, renew or take over `day`'s claim; True while this reporter holds it."""
        async with self.sessions() as session, session.begin():
            before = await session.get(DailyReport, day)
            values = insert(DailyReport).values(
                report_date=day, claimed_by=self.instance, claimed_at=now
            )
            stmt = values.on_conflict_do_update(
                index_elements=[DailyReport.report_date],
                set_={
                    "claimed_by": values.excluded.claimed_by,
                    "claimed_at": values.excluded.claimed_at,
                },
                where=and_(
                    DailyReport.sent_at.is_(None),
                    or_(
                        DailyReport.claimed_by == self.instance,
                        DailyReport.claimed_at <= now - self.lease,
                    ),
                ),
            ).returning(DailyReport.report_date)
            held = (await session.execute(stmt)).first() is not None
        if held and before is not None and before.claimed_by != self.instance:
            log.warning(
                "daily_report_claim_taken_over",
                report_date=day.isoformat(),
                previous_holder=before.claimed_by,
                previous_claimed_at=before.claimed_at.isoformat(),
            )
        return held

    async def _mark_sent(self, day: date, summary: dict[str, Any]) -> bool:
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(DailyReport)
                .where(
                    DailyReport.report_date == day,
                    DailyReport.claimed_by == self.instance,
                    DailyReport.sent_at.is_(None),
                )
                .values(sent_at=self.clock(), summary=summary)
                .returning(DailyReport.report_date)
            )
            return result.first() is not None

    async def _row(self, day: date) -> DailyReport | None:
        async with self.sessions() as session:
            return await session.get(DailyReport, day)

    async def _build(self, now: datetime, day: date, *, scheduled: bool) -> Report:
        async with self.sessions() as session:
            # One snapshot for every query of the report (read only: rolled back on close).
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            return await build_report(
                session,
                now=now,
                report_date=day,
                scheduled=scheduled,
                top_reasons=self.settings.report_top_reasons,
            )

    def _compose(
        self, report: Report, recipients: list[str], *, message_id: str | None
    ) -> EmailMessage:
        return compose(
            report,
            self.schedule,
            sender=self.settings.report_from,
            recipients=recipients,
            message_id=message_id,
        )

    def _give_up_before(self, day: date) -> None:
        """Forget earlier days still failing: their time is over."""
        for old in sorted({*self._failures, *self._accepted}):
            if old < day:
                log.error(
                    "daily_report_not_sent",
                    report_date=old.isoformat(),
                    attempts=self._failures.get(old, 0),
                    reason="the next report is due",
                )
                self._failures.pop(old, None)
                self._accepted.pop(old, None)

    def _delay(self, attempt: int) -> float:
        delays = self.settings.report_retry_delays_s
        return delays[min(attempt, len(delays)) - 1]

    def _next_due(self, now: datetime) -> datetime:
        today = self.schedule.local_date(now)
        due = self.schedule.report_instant(today)
        return due if due > now else self.schedule.report_instant(today + timedelta(days=1))

    def _did(self, step: Step) -> Step:
        self.last_step = step
        return step


def _seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())


def start(clock: Clock | None = None) -> Setup:
    """The daily report's start step, awaited by the reporter's `wire`: the report
    service on `app.state.reports`, and the daily loop when REPORT_RECIPIENTS is set
    (otherwise one log line says it is off)."""

    async def setup(runtime: Runtime, app: FastAPI) -> None:
        reports = Reports(
            runtime.sessions, runtime.settings, SmtpMailer(runtime.settings), clock=clock or utcnow
        )
        app.state.reports = reports
        if reports.enabled:
            runtime.spawn(reports.run(), name="daily-report")
        else:
            log.info("daily_report_disabled", reason="REPORT_RECIPIENTS is empty")

    return setup
