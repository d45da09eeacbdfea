"""The daily report's tests: a real SMTP server (aiosmtpd) and rows put in directly.

Report days are in the year 9999: after any mailing the admin API accepts (years
2000-9998), so other tests' mailings never fall in these reports' 24 hours, and the
`daily_report` rows of those days belong to these tests alone (cleared before each).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
import ssl
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller
from sqlalchemy import delete, insert, select

from services.reporter.schedule import Schedule
from shared.models import Client, DailyReport, Mailing, MailingStatusCount, Message

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

ZONE = ZoneInfo("Europe/Berlin")
DAY = date(9999, 3, 10)  # CET (UTC+1): the 08:00 report is due at 07:00 UTC
FIRST_DAY = date(9999, 1, 1)
SCHEDULE = Schedule(time(8, 0), ZONE)  # the rendering tests' report: 08:00 in Berlin


def local(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=ZONE)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now.astimezone(UTC)

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        content = body.get_content()
        assert isinstance(content, str)
        return content.replace("\r\n", "\n")  # SMTP carries CRLF line ends


@dataclass
class Inbox:
    """aiosmtpd handler: keeps what it accepts; answers DATA from `answers` first."""

    received: list[Received] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    data_commands: int = 0
    logins: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_commands += 1
            if self.answers:
                return self.answers.pop(0)
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 2.0.0 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        # handled=False: the server answers (235, or 535 on a failure) itself.
        return AuthResult(success=(login, password) == ("reporter", "s3cret"), handled=False)


class SmtpServer:
    """A real SMTP server on 127.0.0.1 in its own thread; start and stop it at will."""

    def __init__(self, port: int, inbox: Inbox | None = None, **options: Any) -> None:
        self.port = port
        self.inbox = inbox or Inbox()
        self.options = options
        self.controller: Controller | None = None

    async def start(self) -> SmtpServer:
        self.controller = Controller(
            self.inbox, hostname="127.0.0.1", port=self.port, ready_timeout=30, **self.options
        )
        await asyncio.to_thread(self.controller.start)
        return self

    async def stop(self) -> None:
        if self.controller is not None:
            await asyncio.to_thread(self.controller.stop)
            self.controller = None


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(folder: Path) -> Certificate:
    """A certificate for 127.0.0.1, made with the openssl command line."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Certificate(cert, key)


async def clear_report_days(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Forget what earlier runs of these tests left in year 9999."""
    async with sessions() as session, session.begin():
        await session.execute(delete(DailyReport).where(DailyReport.report_date >= FIRST_DAY))
        await session.execute(
            delete(Mailing).where(Mailing.start_at >= datetime(9999, 1, 1, tzinfo=UTC))
        )


def phone() -> str:
    return f"7{random.randrange(10**9, 10**10):010d}"


async def add_clients(sessions: async_sessionmaker[AsyncSession], count: int) -> list[int]:
    async with sessions() as session, session.begin():
        rows = await session.execute(
            insert(Client).returning(Client.id), [{"phone": phone()} for _ in range(count)]
        )
        return [row[0] for row in rows]


async def add_mailing(
    sessions: async_sessionmaker[AsyncSession],
    clients: list[int],
    *,
    start_at: datetime,
    stop_at: datetime,
    text: str,
    messages: list[tuple[str, str | None]],
    state: str = "running",
) -> int:
    """A mailing with one message per (status, last_error), and the matching counters."""
    assert len(messages) <= len(clients)
    async with sessions() as session, session.begin():
        mailing_id = (
            await session.execute(
                insert(Mailing)
                .values(start_at=start_at, stop_at=stop_at, text=text, state=state)
                .returning(Mailing.id)
            )
        ).scalar_one()
        if messages:
            await session.execute(
                insert(Message),
                [
                    {
                        "mailing_id": mailing_id,
                        "client_id": client_id,
                        "status": status,
                        "last_error": error,
                    }
                    for client_id, (status, error) in zip(clients, messages, strict=False)
                ],
            )
            counts = Counter(status for status, _ in messages)
            await session.execute(
                insert(MailingStatusCount),
                [
                    {"mailing_id": mailing_id, "status": status, "count": count}
                    for status, count in counts.items()
                ],
            )
    return mailing_id


def many(status: str, count: int, error: str | None = None) -> list[tuple[str, str | None]]:
    return [(status, error)] * count


async def report_row(sessions: async_sessionmaker[AsyncSession], day: date) -> DailyReport | None:
    async with sessions() as session:
        return (
            await session.execute(select(DailyReport).where(DailyReport.report_date == day))
        ).scalar_one_or_none()


async def add_report_row(
    sessions: async_sessionmaker[AsyncSession],
    day: date,
    *,
    claimed_by: str,
    claimed_at: datetime,
    sent_at: datetime | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            insert(DailyReport).values(
                report_date=day,
                claimed_by=claimed_by,
                claimed_at=claimed_at,
                sent_at=sent_at,
                summary=summary,
            )
        )
