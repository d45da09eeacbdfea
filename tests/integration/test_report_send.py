"""`POST /reports/send`, the SMTP TLS modes and login, and a reporter with reports off."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from asgi_lifespan import LifespanManager
from structlog.testing import capture_logs

from services.reporter.mailer import MailError, SmtpMailer
from services.reporter.main import create_app
from services.reporter.render import compose
from services.reporter.report import Report
from tests.support.infra import REPO, make_settings
from tests.support.polling import eventually
from tests.support.report_helpers import (
    DAY,
    SCHEDULE,
    Clock,
    SmtpServer,
    add_clients,
    add_mailing,
    local,
    many,
    report_row,
    self_signed,
)
from tools.infra import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings
    from tests.support.infra import Infra
    from tests.support.report_helpers import Certificate

TOKEN = {"Authorization": "Bearer test-token"}


def reporter_settings(infra: Infra, port: int, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "api_tokens": "test-token",
        "report_from": "reports@example.com",
        "report_time": "08:00",
        "report_timezone": "Europe/Berlin",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_tls": "none",
        "smtp_timeout_s": 5,
        **overrides,
    }
    return make_settings(infra, **values)


async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://reporter"
        ) as client,
    ):
        yield client


async def test_send_now_to_given_addresses(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    clients = await add_clients(sessions, 5)
    mailing = await add_mailing(
        sessions,
        clients,
        start_at=local(DAY, 6),
        stop_at=local(DAY, 20),
        text="Today only",
        messages=[*many("sent", 4), *many("failed", 1, "gateway 400: invalid number")],
    )
    # Reports off (no REPORT_RECIPIENTS): the endpoint still sends to ?to=.
    settings = reporter_settings(infra, smtp.port)
    clock = Clock(local(DAY, 14, 5))
    async for client in serve(create_app(settings, clock=clock)):
        response = await client.post(
            "/reports/send",
            params={"to": "a@example.com,b@example.org"},
            headers=TOKEN,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        subject = (
            "Notifications report 9999-03-10 14:05 (on request): 1 mailing, 4 sent, "
            "1 undelivered, 80.0% delivered"
        )
        assert body == {
            "recipients": ["a@example.com", "b@example.org"],
            "refused": {},
            "subject": subject,
            "mailings": 1,
            "message_id": body["message_id"],
        }
        assert len(smtp.inbox.received) == 1
        received = smtp.inbox.received[0]
        assert received.recipients == ["a@example.com", "b@example.org"]
        assert received.message["Subject"] == subject
        assert received.message["Message-ID"] == body["message_id"]
        text = received.part("plain")
        assert f'Mailing {mailing}: "Today only"' in text
        assert "1  gateway 400: invalid number" in text
        assert "Today only" in received.part("html")

        # Repeated ?to= works too; the day's scheduled report is not consumed.
        response = await client.post(
            "/reports/send",
            params=[("to", "c@example.com"), ("to", "d@example.com")],
            headers=TOKEN,
        )
        assert response.status_code == 200, response.text
        assert response.json()["recipients"] == ["c@example.com", "d@example.com"]
    assert await report_row(sessions, DAY) is None


async def test_preview_shows_the_report_and_sends_nothing(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    clients = await add_clients(sessions, 3)
    mailing = await add_mailing(
        sessions,
        clients,
        start_at=local(DAY, 6),
        stop_at=local(DAY, 20),
        text="Preview <me>",
        messages=[*many("sent", 2), *many("failed", 1, "gateway 400: invalid number")],
    )
    settings = reporter_settings(infra, smtp.port, report_recipients="ops@example.com")
    async for client in serve(create_app(settings, clock=Clock(local(DAY, 14, 5)))):
        response = await client.get("/reports/preview", headers=TOKEN)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["X-Report-Subject"] == (
            "Notifications report 9999-03-10 14:05 (on request): 1 mailing, 2 sent, "
            "1 undelivered, 66.7% delivered"
        )
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert f"Mailing {mailing}: &ldquo;Preview &lt;me&gt;&rdquo;" in response.text
        assert "gateway 400: invalid number" in response.text
        assert (await client.get("/reports/preview")).status_code == 401
    assert smtp.inbox.received == []


async def test_send_now_to_the_configured_recipients(
    infra: Infra,
    sessions: async_sessionmaker[AsyncSession],
    no_report_days: None,
    smtp: SmtpServer,
) -> None:
    settings = reporter_settings(infra, smtp.port, report_recipients="ops@example.com")
    # Before today's 08:00, so the daily loop only waits.
    clock = Clock(local(DAY, 6, 0))
    app = create_app(settings, clock=clock)
    async for client in serve(app):
        response = await client.post("/reports/send", headers=TOKEN)
        assert response.status_code == 200, response.text
        assert response.json()["recipients"] == ["ops@example.com"]
        assert response.json()["mailings"] == 0
        assert len(smtp.inbox.received) == 1
        assert smtp.inbox.received[0].message["Subject"] == (
            "Notifications report 9999-03-10 06:00 (on request): no active mailings"
        )

        async def daily_step() -> str | None:
            step = app.state.reports.last_step
            return None if step is None else str(step.action)

        assert await eventually(daily_step, bool, what="the daily loop's first pass") == "waiting"
    assert await report_row(sessions, DAY) is None


async def test_send_now_refuses_clearly(
    infra: Infra, no_report_days: None, smtp: SmtpServer
) -> None:
    settings = reporter_settings(infra, smtp.port)
    async for client in serve(create_app(settings, clock=Clock(local(DAY, 9)))):
        missing = await client.post("/reports/send")
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert missing.json() == {"detail": "missing bearer token"}
        wrong = await client.post("/reports/send", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "invalid token"}

        unconfigured = await client.post("/reports/send", headers=TOKEN)
        assert unconfigured.status_code == 409
        assert unconfigured.json() == {
            "detail": "reports are not configured: REPORT_RECIPIENTS is empty; set it, "
            "or give the addresses with ?to="
        }

        invalid = await client.post(
            "/reports/send", params={"to": "ok@example.com,not-an-address"}, headers=TOKEN
        )
        assert invalid.status_code == 422
        assert invalid.json() == {
            "detail": [
                {
                    "field": "to",
                    "message": "not an email address: 'not-an-address' (expected name@domain)",
                    "type": "value_error",
                }
            ]
        }
        empty = await client.post("/reports/send", params={"to": " , "}, headers=TOKEN)
        assert empty.status_code == 422
        assert empty.json()["detail"][0]["message"] == "give at least one address"
    assert smtp.inbox.data_commands == 0


async def test_send_now_says_when_the_smtp_server_does_not_take_it(
    infra: Infra, no_report_days: None
) -> None:
    port = free_port()  # nothing listens
    settings = reporter_settings(infra, port, report_recipients="ops@example.com")
    async for client in serve(create_app(settings, clock=Clock(local(DAY, 6)))):
        response = await client.post("/reports/send", headers=TOKEN)
        assert response.status_code == 502
        detail = response.json()["detail"]
        assert detail.startswith(
            f"the SMTP server 127.0.0.1:{port} (none) did not take the report: "
        )
        assert (await client.get("/health")).status_code == 200


async def test_reports_off_is_said_once_at_start(infra: Infra, smtp: SmtpServer) -> None:
    settings = reporter_settings(infra, smtp.port)
    with capture_logs() as logs:
        app = create_app(settings, clock=Clock(local(DAY, 9)))
        async for _client in serve(app):
            tasks = [task.get_name() for task in app.state.runtime.tasks]
    off = [entry for entry in logs if entry["event"] == "daily_report_disabled"]
    assert off == [
        {
            "event": "daily_report_disabled",
            "log_level": "info",
            "reason": "REPORT_RECIPIENTS is empty",
        }
    ]
    assert "daily-report" not in tasks
    assert smtp.inbox.data_commands == 0


async def test_report_now_asks_the_running_reporter(
    infra: Infra, tmp_path: Path, smtp: SmtpServer
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": infra.database_url,
        "KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
        "KAFKA_PARTITIONS": "1",
        "REPORTER_PORT": str(port),
        "LOG_FILE": str(tmp_path / "reporter.log"),
        "DEV_MODE": "true",
        "API_TOKENS": "cli-token",
        "REPORT_RECIPIENTS": "",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_TLS": "none",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 (a child process for the test, not I/O)
        [sys.executable, "-m", "services.reporter"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def health() -> int:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"http://127.0.0.1:{port}/health")).status_code

    def report_now(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.reporter.report_now", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    try:
        await eventually(health, lambda code: code == 200, timeout=60, what="reporter up")
        sent = await asyncio.to_thread(report_now, "--to", "ops+daily@example.com")
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("sent: Notifications report ")
        assert "  to:         ops+daily@example.com\n" in sent.stdout
        assert len(smtp.inbox.received) == 1
        assert smtp.inbox.received[0].recipients == ["ops+daily@example.com"]

        refused = await asyncio.to_thread(report_now)
        assert refused.returncode == 1
        assert refused.stderr == (
            "report-now: 409: reports are not configured: REPORT_RECIPIENTS is empty; "
            "set it, or give the addresses with ?to=\n"
        )
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
    assert len(smtp.inbox.received) == 1


# --- TLS modes and login ---------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    folder: Path = tmp_path_factory.mktemp("tls")
    return self_signed(folder)


def empty_report() -> Report:
    now = local(DAY, 8).astimezone()
    return Report(
        report_date=DAY,
        scheduled=True,
        generated_at=now,
        period_start=now,
        period_end=now,
        mailings=[],
        previous=None,
    )


async def send_one(mailer: SmtpMailer) -> None:
    message = compose(
        empty_report(), SCHEDULE, sender="reports@example.com", recipients=["ops@example.com"]
    )
    accepted = await mailer.send(message, ["ops@example.com"])
    assert accepted.accepted == ["ops@example.com"]


async def test_starttls_with_login(infra: Infra, certificate: Certificate) -> None:
    server = SmtpServer(
        free_port(), tls_context=certificate.server_context(), require_starttls=True
    )
    server.options["authenticator"] = server.inbox.authenticate
    await server.start()
    try:
        settings = reporter_settings(
            infra, server.port, smtp_tls="starttls", smtp_user="reporter", smtp_password="s3cret"
        )
        await send_one(SmtpMailer(settings, tls_context=certificate.client_context()))
        assert server.inbox.logins == [("reporter", "s3cret")]
        assert len(server.inbox.received) == 1

        wrong = reporter_settings(
            infra, server.port, smtp_tls="starttls", smtp_user="reporter", smtp_password="nope"
        )
        with pytest.raises(MailError) as caught:
            await send_one(SmtpMailer(wrong, tls_context=certificate.client_context()))
        assert caught.value.code == 535

        # The server's certificate is checked: one nobody vouches for is refused.
        with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED"):
            await send_one(SmtpMailer(settings))
        assert len(server.inbox.received) == 1
    finally:
        await server.stop()


async def test_implicit_tls(infra: Infra, certificate: Certificate) -> None:
    server = await SmtpServer(free_port(), ssl_context=certificate.server_context()).start()
    try:
        settings = reporter_settings(infra, server.port, smtp_tls="tls")
        await send_one(SmtpMailer(settings, tls_context=certificate.client_context()))
        assert len(server.inbox.received) == 1
    finally:
        await server.stop()


async def test_starttls_is_never_skipped(infra: Infra, smtp: SmtpServer) -> None:
    # A server that offers no STARTTLS: with SMTP_TLS=starttls nothing goes in plain text.
    settings = reporter_settings(infra, smtp.port, smtp_tls="starttls")
    with pytest.raises(MailError, match="STARTTLS"):
        await send_one(SmtpMailer(settings))
    assert smtp.inbox.data_commands == 0


async def test_plain_smtp_with_login(infra: Infra) -> None:
    server = SmtpServer(free_port(), auth_require_tls=False)
    server.options["authenticator"] = server.inbox.authenticate
    await server.start()
    try:
        settings = reporter_settings(
            infra, server.port, smtp_tls="none", smtp_user="reporter", smtp_password="s3cret"
        )
        await send_one(SmtpMailer(settings))
        assert server.inbox.logins == [("reporter", "s3cret")]
        assert len(server.inbox.received) == 1
    finally:
        await server.stop()
