"""Which pause / resume / cancel an operator may make, and where each leads."""

from __future__ import annotations

import pytest

from services.api.control import next_state
from services.api.errors import Conflict
from shared.models import MailingState as S


@pytest.mark.parametrize(
    ("action", "state", "activated", "expected"),
    [
        ("pause", S.SCHEDULED, False, S.PAUSED),
        ("pause", S.RUNNING, True, S.PAUSED),
        ("pause", S.PAUSED, True, S.PAUSED),  # again: nothing changes
        ("resume", S.PAUSED, True, S.RUNNING),
        ("resume", S.PAUSED, False, S.SCHEDULED),  # paused before its start
        ("resume", S.RUNNING, True, S.RUNNING),
        ("resume", S.SCHEDULED, False, S.SCHEDULED),
        ("cancel", S.SCHEDULED, False, S.CANCELLED),
        ("cancel", S.RUNNING, True, S.CANCELLED),
        ("cancel", S.PAUSED, True, S.CANCELLED),
        ("cancel", S.CANCELLED, True, S.CANCELLED),  # again: nothing changes
    ],
)
def test_allowed_transitions(action: str, state: S, activated: bool, expected: S) -> None:
    assert next_state(action, state, activated=activated) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("action", "state", "says"),
    [
        ("pause", S.FINISHED, "cannot pause a finished mailing"),
        ("resume", S.FINISHED, "cannot resume a finished mailing"),
        ("cancel", S.FINISHED, "cannot cancel a finished mailing"),
        ("pause", S.CANCELLED, "cannot pause a cancelled mailing"),
        ("resume", S.CANCELLED, "cannot resume a cancelled mailing"),
    ],
)
def test_impossible_transitions_are_conflicts_naming_why(action: str, state: S, says: str) -> None:
    with pytest.raises(Conflict) as raised:
        next_state(action, state, activated=True)  # type: ignore[arg-type]
    assert says in str(raised.value)
    assert raised.value.field == "state"


def test_the_daily_report_shows_a_paused_or_cancelled_state() -> None:
    from dataclasses import replace
    from datetime import UTC, date, datetime, timedelta

    from services.reporter.render import render_html, render_text
    from services.reporter.report import STATUSES, MailingReport, Report
    from tests.support.report_helpers import SCHEDULE

    now = datetime(2031, 1, 2, 7, tzinfo=UTC)
    paused = MailingReport(
        id=7,
        text="Spring sale",
        state="paused",
        start_at=now - timedelta(hours=2),
        stop_at=now + timedelta(hours=5),
        counts={**dict.fromkeys(STATUSES, 0), "sent": 5, "scheduled": 3},
        reasons=[],
        previous=None,
    )
    cancelled = replace(paused, id=8, state="cancelled", counts={**paused.counts, "cancelled": 3})
    report = Report(
        report_date=date(2031, 1, 2),
        scheduled=True,
        generated_at=now,
        period_start=now - timedelta(hours=24),
        period_end=now,
        mailings=[paused, cancelled],
        previous=None,
    )
    text = render_text(report, SCHEDULE)
    assert "\n  paused, " in text.split("Mailing 7:")[1]
    assert "\n  cancelled, " in text.split("Mailing 8:")[1]
    html = render_html(report, SCHEDULE)
    assert "<p>paused, " in html
    assert "<p>cancelled, " in html
