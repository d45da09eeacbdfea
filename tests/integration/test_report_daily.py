"""The daily report on the real PostgreSQL and a real SMTP server, with a hand-moved clock:
what the email says, once per day across reporters, catch-up, and SMTP failures."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
from asgi_lifespan import LifespanManager
from structlog.testing import capture_logs

from services.reporter.daily import Reports
from services.reporter.mailer import SmtpMailer
from services.reporter.main import create_app
from services.reporter.render import daily_message_id
from tests.support.infra import make_settings
from tests.support.polling import eventually
from tests.support.report_helpers import (
    DAY,
    Clock,
    SmtpServer,
    add_clients,
    add_mailing,
    add_report_row,
    local,
    many,
    report_row,
)
from tools.infra import free_port

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings
    from tests.support.infra import Infra

RECIPIENTS = ["ops@example.com", "lead@example.org"]
SENDER = "Notifications <reports@example.com>"
YESTERDAY = DAY - timedelta(days=1)


def report_settings(infra: Infra, port: int, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "report_recipients": ",".join(RECIPIENTS),
        "report_from": SENDER,
        "report_time": "08:00",
        "report_timezone": "Europe/Berlin",
        "report_top_reasons": 3,
        "report_retry_delays_s": "0.05,0.1",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_tls": "none",
        "smtp_timeout_s": 5,
        **overrides,
    }
    return make_settings(infra, **values)


def reporter(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, name: str
) -> Reports:
    return Reports(sessions, settings, SmtpMailer(settings), clock=clock, instance=name)


async def test_the_email_shows_counts_rate_reasons_and_changes(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    clients = await add_clients(sessions, 60)
    running = await add_mailing(
        sessions,
        clients,
        start_at=local(YESTERDAY, 9),
        stop_at=local(DAY + timedelta(days=1), 21),
        text="Spring sale <50% off> & more",
        messages=[
            *many("sent", 40),
            *many("failed", 3, "gateway 400: invalid number"),
            *many("failed", 1, "gateway 403: blocked"),
            *many("expired", 2, "stop time reached"),
            *many("retrying", 2, "gateway 503"),
            *many("scheduled", 5),
            *many("cancelled", 1, "no longer matches the mailing"),
        ],
    )
    new = await add_mailing(
        sessions,
        clients,
        start_at=local(DAY, 6),
        stop_at=local(DAY, 20),
        text="Flash offer",
        messages=[*many("sent", 9), *many("failed", 1, "timeout")],
    )
    ended_before = await add_mailing(
        sessions,
        clients,
        start_at=local(DAY - timedelta(days=3), 8),
        stop_at=local(DAY - timedelta(days=2), 6),
        text="Old news",
        messages=many("sent", 3),
    )
    not_started = await add_mailing(
        sessions,
        clients,
        start_at=local(DAY, 12),
        stop_at=local(DAY, 20),
        text="Later today",
        messages=[],
        state="scheduled",
    )
    previous_counts = {"sent": 30, "failed": 2, "scheduled": 20}
    await add_report_row(
        sessions,
        YESTERDAY,
        claimed_by="earlier",
        claimed_at=local(YESTERDAY, 8),
        sent_at=local(YESTERDAY, 8, 0, 1),
        summary={
            "schema": 1,
            "mailings": {str(running): {"counts": previous_counts}},
            "totals": {"mailings": 1, "sent": 30, "undelivered": 2, "pending": 20, "cancelled": 0},
        },
    )
    settings = report_settings(infra, smtp.port)
    clock = Clock(local(DAY, 8, 0, 30))

    step = await reporter(sessions, settings, clock, "reporter-a").step()

    assert (step.action, step.report_date) == ("sent", DAY)
    assert len(smtp.inbox.received) == 1
    received = smtp.inbox.received[0]
    assert received.sender == "reports@example.com"
    assert sorted(received.recipients) == sorted(RECIPIENTS)
    message = received.message
    # Running: 40 sent, 4 failed + 2 expired; new: 9 sent, 1 failed. 49 / 56 = 87.5%.
    assert message["Subject"] == (
        "Notifications daily report 9999-03-10: 2 mailings, 49 sent, 7 undelivered, 87.5% delivered"
    )
    assert message["From"] == SENDER
    assert message["To"] == ", ".join(RECIPIENTS)
    assert message["Message-ID"] == daily_message_id(DAY, SENDER, RECIPIENTS)
    assert message.get_content_type() == "multipart/alternative"

    text = received.part("plain")
    assert "Period: the last 24 hours, 9999-03-09 08:00 to 9999-03-10 08:00 Europe/Berlin" in text
    assert "Changes are against the report of 9999-03-09." in text
    assert "Mailings active:   2 (+1)" in text
    assert "Sent:              49 (+19)" in text
    assert "Undelivered:       7 (+5)  (failed + expired)" in text
    assert "Delivery rate:     87.5%  (-6.2 pts)" in text  # was 30 / 32 = 93.75%
    block = text.split(f'Mailing {running}: "Spring sale <50% off> & more"')[1]
    block = block.split(f"Mailing {new}:")[0]
    assert "running, 9999-03-09 09:00 to 9999-03-11 21:00" in block
    assert "delivery rate 87.0%  (-6.8 pts)" in block  # 40 / 46
    table = block.split("change\n", 1)[1].split("\n\n", 1)[0]
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()}
    assert rows == {
        "sent": ["40", "+10"],
        "failed": ["4", "+2"],
        "expired": ["2", "+2"],
        "retrying": ["2", "+2"],
        "scheduled": ["5", "-15"],
        "cancelled": ["1", "+1"],
    }
    # The three most frequent reasons (REPORT_TOP_REASONS=3); ties alphabetically.
    reasons = block.split("top failure reasons (failed, expired, retrying)\n")[1].split("\n\n")[0]
    assert [line.split(None, 1) for line in reasons.splitlines()] == [
        ["3", "gateway 400: invalid number"],
        ["2", "gateway 503"],
        ["2", "stop time reached"],
    ]
    new_block = text.split(f'Mailing {new}: "Flash offer"')[1]
    assert "delivery rate 90.0%  (new)" in new_block
    assert "sent                   9         new" in new_block
    assert "1  timeout" in new_block
    assert f"Mailing {ended_before}:" not in text
    assert f"Mailing {not_started}:" not in text

    html = received.part("html")
    assert "Spring sale &lt;50% off&gt; &amp; more" in html
    assert "<50% off>" not in html
    assert f"Mailing {running}:" in html
    assert f"Mailing {new}:" in html
    assert f"Mailing {ended_before}:" not in html
    assert ">+10</td>" in html
    assert ">new</td>" in html
    assert ">gateway 400: invalid number</td>" in html
    assert "87.5%  (-6.2 pts)" in html

    row = await report_row(sessions, DAY)
    assert row is not None
    assert row.sent_at == clock()
    assert row.claimed_by == "reporter-a"
    assert row.summary is not None
    assert row.summary["message_id"] == message["Message-ID"]
    assert row.summary["mailings"][str(running)]["counts"]["sent"] == 40
    assert set(row.summary["mailings"]) == {str(running), str(new)}


async def test_two_reporters_racing_send_one_email(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    settings = report_settings(infra, smtp.port)
    clock = Clock(local(DAY, 8))
    reporters = [reporter(sessions, settings, clock, f"reporter-{n}") for n in range(4)]

    steps = await asyncio.gather(*(r.step() for r in reporters))

    assert sorted(step.action for step in steps).count("sent") == 1
    assert {step.action for step in steps} <= {"sent", "held_elsewhere", "already_sent"}
    assert len(smtp.inbox.received) == 1
    assert smtp.inbox.data_commands == 1
    # Later passes, any reporter, the same day: nothing more.
    clock.advance(timedelta(hours=3))
    again = await asyncio.gather(*(r.step() for r in reporters))
    assert [step.action for step in again] == ["already_sent"] * 4
    # Each waits for tomorrow's 08:00 (21 hours on).
    assert {step.wait_s for step in again} == {21 * 3600.0}
    assert len(smtp.inbox.received) == 1


async def test_two_reporter_processes_send_one_email(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    # The clock stands still, so the winner's claim never goes stale; a short lease only
    # makes the one that lost the race look again soon (after 1 s) and see it sent.
    settings = report_settings(infra, smtp.port, smtp_timeout_s=0.5, report_claim_lease_s=1)
    clock = Clock(local(DAY, 9, 30))
    apps = [create_app(settings, clock=clock), create_app(settings, clock=clock)]
    async with (
        LifespanManager(apps[0], startup_timeout=60, shutdown_timeout=30),
        LifespanManager(apps[1], shutdown_timeout=30),
    ):
        reports: list[Reports] = [app.state.reports for app in apps]

        async def settled() -> list[str | None]:
            return [r.last_step.action if r.last_step else None for r in reports]

        actions = await eventually(
            settled,
            lambda got: all(a in ("sent", "already_sent") for a in got),
            what="both reporters done with today's report",
        )
    assert sorted(actions) == ["already_sent", "sent"]  # type: ignore[type-var]
    assert len(smtp.inbox.received) == 1
    row = await report_row(sessions, DAY)
    assert row is not None
    assert row.sent_at is not None
    assert row.claimed_by in {r.instance for r in reports}


async def test_before_the_time_nothing_goes_and_a_missed_day_is_not_caught_up(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    settings = report_settings(infra, smtp.port)
    clock = Clock(local(DAY, 7, 59))  # yesterday's report never went; today's is not due
    step = await reporter(sessions, settings, clock, "early").step()
    assert (step.action, step.report_date, step.wait_s) == ("waiting", DAY, 60.0)
    assert smtp.inbox.received == []
    assert await report_row(sessions, YESTERDAY) is None


async def test_a_reporter_started_after_the_time_sends_todays_report(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    settings = report_settings(infra, smtp.port)
    clock = Clock(local(DAY, 15, 0))
    first = reporter(sessions, settings, clock, "before-restart")
    step = await first.step()
    assert (step.action, step.report_date) == ("sent", DAY)
    assert len(smtp.inbox.received) == 1
    assert (
        smtp.inbox.received[0]
        .message["Subject"]
        .startswith("Notifications daily report 9999-03-10: ")
    )
    # Restarted later the same day: it finds the day sent and waits for tomorrow 08:00.
    clock.advance(timedelta(hours=2))
    restarted = reporter(sessions, settings, clock, "after-restart")
    step = await restarted.step()
    assert (step.action, step.wait_s) == ("already_sent", 15 * 3600.0)
    assert len(smtp.inbox.received) == 1


async def test_a_claim_left_by_a_dead_reporter_is_taken_over_after_the_lease(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    settings = report_settings(infra, smtp.port, report_claim_lease_s=300)
    clock = Clock(local(DAY, 8, 0, 10))
    await add_report_row(sessions, DAY, claimed_by="died-mid-send", claimed_at=local(DAY, 8))
    survivor = reporter(sessions, settings, clock, "survivor")

    step = await survivor.step()
    assert (step.action, step.wait_s, step.detail) == ("held_elsewhere", 290.0, "died-mid-send")
    assert smtp.inbox.received == []

    clock.advance(timedelta(seconds=290))
    with capture_logs() as logs:
        step = await survivor.step()
    assert step.action == "sent"
    assert len(smtp.inbox.received) == 1
    row = await report_row(sessions, DAY)
    assert row is not None
    assert row.claimed_by == "survivor"
    assert row.sent_at is not None
    taken = [entry for entry in logs if entry["event"] == "daily_report_claim_taken_over"]
    assert [entry["previous_holder"] for entry in taken] == ["died-mid-send"]


async def test_yesterdays_unsent_claim_is_finished_before_todays_time(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    settings = report_settings(infra, smtp.port)
    # Yesterday's holder died before sending; the machine came back at 07:00 today.
    await add_report_row(sessions, YESTERDAY, claimed_by="died", claimed_at=local(YESTERDAY, 8))
    clock = Clock(local(DAY, 7, 0))
    late = reporter(sessions, settings, clock, "late")

    step = await late.step()
    assert (step.action, step.report_date) == ("sent", YESTERDAY)
    assert step.wait_s == 3600.0  # today's report is due at 08:00
    assert len(smtp.inbox.received) == 1
    message = smtp.inbox.received[0].message
    assert message["Subject"].startswith("Notifications daily report 9999-03-09: ")
    assert message["Message-ID"] == daily_message_id(YESTERDAY, SENDER, RECIPIENTS)

    step = await late.step()
    assert (step.action, step.report_date) == ("waiting", DAY)
    assert len(smtp.inbox.received) == 1


async def test_smtp_down_then_up_is_retried_and_sent_once(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
) -> None:
    port = free_port()  # nothing listens yet: connection refused
    settings = report_settings(infra, port)
    clock = Clock(local(DAY, 8, 0, 5))
    sender = reporter(sessions, settings, clock, "patient")

    with capture_logs() as logs:
        first = await sender.step()
        second = await sender.step()
    assert (first.action, first.wait_s) == ("failed", 0.05)
    assert (second.action, second.wait_s) == ("failed", 0.1)  # the last delay repeats
    failures = [entry for entry in logs if entry["event"] == "daily_report_send_failed"]
    assert [entry["attempt"] for entry in failures] == [1, 2]
    assert all(entry["log_level"] == "warning" for entry in failures)
    assert all(f"127.0.0.1:{port}" in entry["smtp"] for entry in failures)
    row = await report_row(sessions, DAY)
    assert row is not None
    assert row.claimed_by == "patient"
    assert row.sent_at is None  # not taken by the server: not marked sent

    server = await SmtpServer(port).start()
    try:
        step = await sender.step()
        assert step.action == "sent"
        assert len(server.inbox.received) == 1
        assert (await sender.step()).action == "already_sent"
        assert len(server.inbox.received) == 1
    finally:
        await server.stop()
    row = await report_row(sessions, DAY)
    assert row is not None
    assert row.sent_at is not None


async def test_4xx_and_5xx_answers_are_retried_until_accepted(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    smtp.inbox.answers = ["451 4.3.0 Try again later", "554 5.6.0 Message rejected"]
    settings = report_settings(infra, smtp.port)
    clock = Clock(local(DAY, 8, 0, 5))
    sender = reporter(sessions, settings, clock, "stubborn")

    steps = [await sender.step() for _ in range(3)]

    assert [s.action for s in steps] == ["failed", "failed", "sent"]
    assert steps[0].detail == "451 4.3.0 Try again later"
    assert steps[1].detail == "554 5.6.0 Message rejected"
    assert smtp.inbox.data_commands == 3
    assert len(smtp.inbox.received) == 1


async def test_the_service_keeps_serving_while_smtp_is_down_and_sends_once_it_is_back(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
) -> None:
    port = free_port()
    settings = report_settings(infra, port, report_retry_delays_s="0.05")
    clock = Clock(local(DAY, 10, 0))
    app = create_app(settings, clock=clock)
    with capture_logs() as logs:
        async with (
            LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://reporter"
            ) as client,
        ):

            def failures() -> list[MutableMapping[str, Any]]:
                return [e for e in logs if e["event"] == "daily_report_send_failed"]

            async def failed_attempts() -> int:
                return len(failures())

            await eventually(failed_attempts, lambda n: n >= 3, what="three failed attempts")
            health = await client.get("/health")
            assert health.status_code == 200
            row = await report_row(sessions, DAY)
            assert row is not None
            assert row.sent_at is None

            server = await SmtpServer(port).start()
            try:

                async def sent() -> object:
                    row = await report_row(sessions, DAY)
                    return row is not None and row.sent_at is not None

                await eventually(sent, bool, what="the report marked sent")
                assert len(server.inbox.received) == 1
            finally:
                await server.stop()
            assert (await client.get("/health")).status_code == 200
    assert [e["event"] for e in logs].count("daily_report_sent") == 1
    assert not [e for e in logs if e["event"] == "background_task_crashed"]
