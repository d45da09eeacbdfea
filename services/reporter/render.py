"""The report as an email: a subject with the headline numbers, a plain-text part that
reads well in a terminal, and an HTML part (every value escaped), as
multipart/alternative.
"""

from __future__ import annotations

import email.policy
import hashlib
import html
import textwrap
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import date, datetime

    from services.reporter.report import MailingReport, Report
    from services.reporter.schedule import Schedule

RATE_RULE = "sent / (sent + failed + expired); pending and cancelled messages are not counted"
PRODUCT = "Notifications"
TEXT_WIDTH = 72
# Header lines up to RFC 5322's hard limit: Python folds a 70-77 character subject
# before its first word otherwise, which some readers show with a leading space.
POLICY = email.policy.SMTP.clone(max_line_length=998)
# Outcomes first, then what is still on its way, then what was called off.
DISPLAY_ORDER = (
    "sent",
    "failed",
    "expired",
    "retrying",
    "sending",
    "queued",
    "scheduled",
    "cancelled",
)


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def number(value: int) -> str:
    return f"{value:,}"


def signed(change: int | None) -> str:
    if change is None:
        return "new"
    return f"{change:+,}" if change else "0"


def rate_change(current: float | None, previous: float | None) -> str:
    if current is None or previous is None:
        return ""
    points = round((current - previous) * 100, 1)
    return f"{points:+.1f} pts" if points else "±0.0 pts"


def title(report: Report, schedule: Schedule) -> str:
    if report.scheduled:
        return f"{PRODUCT} daily report {report.report_date.isoformat()}"
    at = schedule.local(report.generated_at).strftime("%Y-%m-%d %H:%M")
    return f"{PRODUCT} report {at} (on request)"


def subject(report: Report, schedule: Schedule) -> str:
    totals = report.totals
    if not totals.mailings:
        return f"{title(report, schedule)}: no active mailings"
    noun = "mailing" if totals.mailings == 1 else "mailings"
    return (
        f"{title(report, schedule)}: {totals.mailings} {noun}, {number(totals.sent)} sent, "
        f"{number(totals.undelivered)} undelivered, {percent(totals.rate)} delivered"
    )


def _when(schedule: Schedule, instant: datetime) -> str:
    return schedule.local(instant).strftime("%Y-%m-%d %H:%M")


def _one_line(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _shown_statuses(mailing: MailingReport) -> list[str]:
    """Statuses with a count now or in the previous report; `sent` always."""
    previous = mailing.previous or {}
    return [
        status
        for status in DISPLAY_ORDER
        if status == "sent" or mailing.counts.get(status) or previous.get(status)
    ]


def _period(report: Report, schedule: Schedule) -> str:
    return (
        f"{_when(schedule, report.period_start)} to {_when(schedule, report.period_end)} "
        f"{schedule.zone.key}"
    )


def _compared(report: Report) -> str:
    if report.previous is None:
        return "No earlier report: no changes to show."
    return f"Changes are against the report of {report.previous.report_date.isoformat()}."


def render_text(report: Report, schedule: Schedule) -> str:
    totals = report.totals
    lines = [
        title(report, schedule),
        "=" * len(title(report, schedule)),
        "",
        f"Period: the last 24 hours, {_period(report, schedule)}",
        _compared(report),
        "",
    ]
    if not report.mailings:
        lines += ["No mailing was active in the period.", ""]
        return "\n".join(lines)

    def total(key: str, value: int) -> str:
        change = report.total_change(key)
        return number(value) if change is None else f"{number(value)} ({signed(change)})"

    lines += [
        f"Mailings active:   {total('mailings', totals.mailings)}",
        f"Sent:              {total('sent', totals.sent)}",
        f"Undelivered:       {total('undelivered', totals.undelivered)}  (failed + expired)",
        f"Pending:           {total('pending', totals.pending)}",
        f"Cancelled:         {total('cancelled', totals.cancelled)}",
        f"Delivery rate:     {_total_rate(report)}",
        "",
    ]
    for mailing in report.mailings:
        lines += _text_mailing(mailing, schedule)
    lines += ["-" * TEXT_WIDTH, *textwrap.wrap(f"Delivery rate = {RATE_RULE}.", TEXT_WIDTH), ""]
    return "\n".join(lines)


def _total_rate(report: Report) -> str:
    shown = percent(report.totals.rate)
    previous = report.previous.totals if report.previous is not None else None
    if previous is not None:
        decided = previous.get("sent", 0) + previous.get("undelivered", 0)
        before = previous.get("sent", 0) / decided if decided else None
        if change := rate_change(report.totals.rate, before):
            shown += f"  ({change})"
    return shown


def _text_mailing(mailing: MailingReport, schedule: Schedule) -> list[str]:
    heading = f'Mailing {mailing.id}: "{_one_line(mailing.text)}"'
    rate = percent(mailing.rate)
    if mailing.previous is None:
        rate += "  (new)"
    elif change := rate_change(mailing.rate, mailing.previous_rate):
        rate += f"  ({change})"
    lines = [
        "-" * TEXT_WIDTH,
        heading,
        f"  {mailing.state}, {_when(schedule, mailing.start_at)} to "
        f"{_when(schedule, mailing.stop_at)}",
        f"  delivery rate {rate}",
        "",
        f"  {'status':<12}{'count':>12}{'change':>12}",
    ]
    for status in _shown_statuses(mailing):
        shown = number(mailing.counts.get(status, 0))
        lines.append(f"  {status:<12}{shown:>12}{signed(mailing.change(status)):>12}")
    lines.append("")
    if mailing.reasons:
        lines.append("  top failure reasons (failed, expired, retrying)")
        for reason, count in mailing.reasons:
            lines.append(f"  {number(count):>10}  {_one_line(reason, 100)}")
        lines.append("")
    return lines


_CELL = "padding:2px 10px;border-bottom:1px solid #ddd"
_NUM = _CELL + ";text-align:right;font-variant-numeric:tabular-nums"


def render_html(report: Report, schedule: Schedule) -> str:
    e = html.escape
    totals = report.totals
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{e(title(report, schedule))}</title></head>",
        '<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222">',
        f"<h2>{e(title(report, schedule))}</h2>",
        f"<p>Period: the last 24 hours, {e(_period(report, schedule))}<br>",
        f"{e(_compared(report))}</p>",
    ]
    if not report.mailings:
        parts += ["<p>No mailing was active in the period.</p>", "</body></html>"]
        return "\n".join(parts)
    parts.append('<table style="border-collapse:collapse">')
    for label, key, value in (
        ("Mailings active", "mailings", totals.mailings),
        ("Sent", "sent", totals.sent),
        ("Undelivered (failed + expired)", "undelivered", totals.undelivered),
        ("Pending", "pending", totals.pending),
        ("Cancelled", "cancelled", totals.cancelled),
    ):
        change = report.total_change(key)
        shown = number(value) if change is None else f"{number(value)} ({signed(change)})"
        parts.append(
            f'<tr><td style="{_CELL}">{e(label)}</td><td style="{_NUM}">{e(shown)}</td></tr>'
        )
    parts += [
        f'<tr><td style="{_CELL}"><b>Delivery rate</b></td>'
        f'<td style="{_NUM}"><b>{e(_total_rate(report))}</b></td></tr>',
        "</table>",
        f'<p style="color:#666;font-size:12px">Delivery rate = {e(RATE_RULE)}.</p>',
    ]
    for mailing in report.mailings:
        parts += _html_mailing(mailing, schedule)
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_mailing(mailing: MailingReport, schedule: Schedule) -> list[str]:
    e = html.escape
    rate = percent(mailing.rate)
    if mailing.previous is None:
        rate += " (new)"
    elif change := rate_change(mailing.rate, mailing.previous_rate):
        rate += f" ({change})"
    parts = [
        "<hr>",
        f"<h3>Mailing {mailing.id}: &ldquo;{e(_one_line(mailing.text, 120))}&rdquo;</h3>",
        f"<p>{e(mailing.state)}, {e(_when(schedule, mailing.start_at))} to "
        f"{e(_when(schedule, mailing.stop_at))}<br>",
        f"Delivery rate <b>{e(rate)}</b></p>",
        '<table style="border-collapse:collapse">',
        f'<tr><th style="{_CELL};text-align:left">status</th><th style="{_NUM}">count</th>'
        f'<th style="{_NUM}">change</th></tr>',
    ]
    for status in _shown_statuses(mailing):
        parts.append(
            f'<tr><td style="{_CELL}">{e(status)}</td>'
            f'<td style="{_NUM}">{e(number(mailing.counts.get(status, 0)))}</td>'
            f'<td style="{_NUM}">{e(signed(mailing.change(status)))}</td></tr>'
        )
    parts.append("</table>")
    if mailing.reasons:
        parts += [
            "<p>Top failure reasons (failed, expired, retrying):</p>",
            '<table style="border-collapse:collapse">',
        ]
        for reason, count in mailing.reasons:
            parts.append(
                f'<tr><td style="{_NUM}">{e(number(count))}</td>'
                f'<td style="{_CELL}">{e(_one_line(reason, 200))}</td></tr>'
            )
        parts.append("</table>")
    return parts


def daily_message_id(report_date: date, sender: str, recipients: list[str]) -> str:
    """The same Message-ID for every copy of one day's report to one audience.

    A report sent again after a crash between the SMTP server's acceptance and the
    database commit carries the same id, so mail systems can drop the duplicate.
    """
    domain = _domain(sender)
    audience = "\n".join([sender, *sorted(recipients)]).encode()
    digest = hashlib.sha256(audience).hexdigest()[:16]
    return f"<daily-report.{report_date.isoformat()}.{digest}@{domain}>"


def _domain(sender: str) -> str:
    address = sender.rsplit("<", 1)[-1].rstrip(">")
    return address.rpartition("@")[2] or "localhost"


def compose(
    report: Report,
    schedule: Schedule,
    *,
    sender: str,
    recipients: list[str],
    message_id: str | None = None,
) -> EmailMessage:
    message = EmailMessage(policy=POLICY)
    message["Subject"] = subject(report, schedule)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(report.generated_at)
    message["Message-ID"] = message_id or make_msgid("report", domain=_domain(sender))
    # RFC 3834: automatic mail; auto-responders should stay quiet.
    message["Auto-Submitted"] = "auto-generated"
    text, markup = render_text(report, schedule), render_html(report, schedule)
    message.set_content(text, cte=_transfer_encoding(text))
    message.add_alternative(markup, subtype="html", cte=_transfer_encoding(markup))
    return message


def _transfer_encoding(body: str) -> str:
    """Short ASCII lines go as they are; anything else quoted-printable (no 8BITMIME
    needed, no line over SMTP's limit)."""
    plain = body.isascii() and all(len(line) < 900 for line in body.splitlines())
    return "7bit" if plain else "quoted-printable"
