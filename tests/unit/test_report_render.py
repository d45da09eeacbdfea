"""The report's email, built from a report in memory: subject, text, HTML, headers."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from services.reporter.render import (
    compose,
    daily_message_id,
    rate_change,
    render_html,
    render_text,
    subject,
)
from services.reporter.report import (
    STATUSES,
    MailingReport,
    Previous,
    Report,
    delivery_rate,
)
from tests.support.report_helpers import SCHEDULE

NOW = datetime(2031, 1, 2, 7, 0, 5, tzinfo=UTC)  # 08:00:05 in Berlin


def counts(**given: int) -> dict[str, int]:
    return {status: given.get(status, 0) for status in STATUSES}


def mailing(
    id_: int, *, text: str = "Spring sale", previous: dict[str, int] | None = None, **given: int
) -> MailingReport:
    return MailingReport(
        id=id_,
        text=text,
        state="running",
        start_at=datetime(2031, 1, 1, 8, tzinfo=UTC),
        stop_at=datetime(2031, 1, 3, 20, tzinfo=UTC),
        counts=counts(**given),
        reasons=[("gateway 400: invalid number", 3), ("stop time reached", 1)],
        previous=previous,
    )


def report(
    *mailings: MailingReport, previous: Previous | None = None, scheduled: bool = True
) -> Report:
    return Report(
        report_date=date(2031, 1, 2),
        scheduled=scheduled,
        generated_at=NOW,
        period_start=NOW - timedelta(hours=24),
        period_end=NOW,
        mailings=list(mailings),
        previous=previous,
    )


YESTERDAY = Previous(
    report_date=date(2031, 1, 1),
    sent_at=NOW - timedelta(days=1),
    mailings={7: counts(sent=800, failed=10, scheduled=190)},
    totals={"mailings": 1, "sent": 800, "undelivered": 10, "pending": 190, "cancelled": 0},
)


def test_rate_changes_are_in_points() -> None:
    assert rate_change(0.95, 0.9875) == "-3.8 pts"
    assert rate_change(0.99, 0.98) == "+1.0 pts"
    assert rate_change(0.9951, 0.995) == "±0.0 pts"
    assert rate_change(None, 0.5) == ""


def test_delivery_rate_counts_only_decided_messages() -> None:
    # 90 sent of 90 + 6 failed + 4 expired; pending and cancelled do not count.
    assert delivery_rate(counts(sent=90, failed=6, expired=4, scheduled=500, cancelled=50)) == 0.9
    assert delivery_rate(counts(scheduled=10, retrying=2)) is None


def test_subject_carries_the_date_and_headline_numbers() -> None:
    body = report(mailing(7, sent=1000, failed=30, expired=20), mailing(9, sent=234, failed=6))
    assert subject(body, SCHEDULE) == (
        "Notifications daily report 2031-01-02: 2 mailings, 1,234 sent, 56 undelivered, "
        "95.7% delivered"
    )
    assert subject(report(), SCHEDULE) == (
        "Notifications daily report 2031-01-02: no active mailings"
    )
    on_request = report(mailing(7, sent=1), scheduled=False)
    assert subject(on_request, SCHEDULE) == (
        "Notifications report 2031-01-02 08:00 (on request): 1 mailing, 1 sent, "
        "0 undelivered, 100.0% delivered"
    )


def test_text_shows_counts_changes_rate_and_reasons() -> None:
    body = report(
        mailing(7, previous=YESTERDAY.mailings[7], sent=950, failed=30, expired=20),
        mailing(9, text="New year\nsale", sent=40, failed=10),
        previous=YESTERDAY,
    )
    text = render_text(body, SCHEDULE)
    assert "Period: the last 24 hours, 2031-01-01 08:00 to 2031-01-02 08:00 Europe/Berlin" in text
    assert "Changes are against the report of 2031-01-01." in text
    assert "Sent:              990 (+190)" in text
    assert "Undelivered:       60 (+50)  (failed + expired)" in text
    assert "Mailings active:   2 (+1)" in text
    # Mailing 7 was in yesterday's report: per-status changes, the rate's change in points.
    block7 = text.split('Mailing 7: "Spring sale"')[1].split("Mailing 9")[0]
    assert "delivery rate 95.0%  (-3.8 pts)" in block7  # was 800 / 810 = 98.8%
    assert re.search(r"sent\s+950\s+\+150\n", block7)
    assert re.search(r"failed\s+30\s+\+20\n", block7)
    assert re.search(r"expired\s+20\s+\+20\n", block7)
    assert re.search(r"scheduled\s+0\s+-190\n", block7)  # shown: it had messages before
    assert "queued" not in block7  # zero now and before: left out
    assert re.search(r"3  gateway 400: invalid number\n", block7)
    # Mailing 9 is new; its text is shown on one line.
    block9 = text.split('Mailing 9: "New year sale"')[1]
    assert "delivery rate 80.0%  (new)" in block9
    assert re.search(r"sent\s+40\s+new\n", block9)


def test_text_of_a_first_report_says_there_is_nothing_to_compare() -> None:
    text = render_text(report(mailing(7, sent=5)), SCHEDULE)
    assert "No earlier report: no changes to show." in text
    assert "Sent:              5\n" in text
    empty = render_text(report(), SCHEDULE)
    assert "No mailing was active in the period." in empty


def test_html_escapes_everything_it_shows() -> None:
    hostile = mailing(7, text='<script>alert("x")</script> & <b>bold</b>', sent=1)
    hostile = MailingReport(**{**hostile.__dict__, "reasons": [("<img src=x onerror=1>", 2)]})
    html = render_html(report(hostile), SCHEDULE)
    assert "<script>" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "&lt;img src=x onerror=1&gt;" in html
    # The text part shows the same text as is: it is plain text.
    assert '<script>alert("x")</script> & <b>bold</b>' in render_text(report(hostile), SCHEDULE)


def test_email_is_multipart_alternative_with_both_parts() -> None:
    message = compose(
        report(mailing(7, sent=3)),
        SCHEDULE,
        sender="Notifications <reports@example.com>",
        recipients=["a@example.com", "b@example.com"],
        message_id="<fixed@example.com>",
    )
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == [
        "text/plain",
        "text/html",
    ]
    assert message["To"] == "a@example.com, b@example.com"
    assert message["From"] == "Notifications <reports@example.com>"
    assert message["Message-ID"] == "<fixed@example.com>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"] == "Thu, 02 Jan 2031 07:00:05 +0000"


def test_a_days_message_id_is_the_same_for_every_copy_of_that_day() -> None:
    day = date(2031, 1, 2)
    first = daily_message_id(day, "Reports <r@example.com>", ["b@x.org", "a@x.org"])
    assert first == daily_message_id(day, "Reports <r@example.com>", ["a@x.org", "b@x.org"])
    assert re.fullmatch(r"<daily-report\.2031-01-02\.[0-9a-f]{16}@example\.com>", first)
    assert first != daily_message_id(day + timedelta(days=1), "r@example.com", ["a@x.org"])
    assert first != daily_message_id(day, "Reports <r@example.com>", ["a@x.org"])
