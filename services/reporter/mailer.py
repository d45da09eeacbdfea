"""Sending one email over SMTP (aiosmtplib), with the TLS mode and login from settings.

One call is one attempt with a total deadline (`SMTP_TIMEOUT_S`); every way it can go
wrong (refused connection, timeout, TLS or login failure, a 4xx/5xx answer) comes back
as `MailError` with a readable reason. Retrying is the caller's decision.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.utils import parseaddr
from typing import TYPE_CHECKING

import aiosmtplib

if TYPE_CHECKING:
    import ssl
    from email.message import EmailMessage

    from shared.settings import Settings


class MailError(Exception):
    """The SMTP server did not take the message; `reason` says why."""

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Accepted:
    """The server took the message for `accepted`; it refused `refused` (address: why)."""

    accepted: list[str]
    refused: dict[str, str]
    response: str


class SmtpMailer:
    def __init__(self, settings: Settings, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.mode = settings.smtp_tls
        self.user = settings.smtp_user
        self.password = settings.smtp_password
        self.timeout = settings.smtp_timeout_s
        # Certificates are verified against the system's CAs unless a context is given.
        self.tls_context = tls_context

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port} ({self.mode})"

    async def send(self, message: EmailMessage, recipients: list[str]) -> Accepted:
        try:
            async with asyncio.timeout(self.timeout):
                refused, response = await aiosmtplib.send(
                    # Flattened with the message's own policy (aiosmtplib would use its own).
                    message.as_bytes(),
                    sender=parseaddr(str(message["From"]))[1],
                    recipients=recipients,
                    hostname=self.host,
                    port=self.port,
                    username=self.user,
                    password=None if self.password is None else self.password.get_secret_value(),
                    use_tls=self.mode == "tls",
                    start_tls=self.mode == "starttls",
                    timeout=self.timeout,
                    tls_context=self.tls_context,
                )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            reasons = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            raise MailError(f"every recipient refused: {reasons}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise MailError(f"{exc.code} {exc.message}", code=exc.code) from exc
        except (TimeoutError, aiosmtplib.SMTPTimeoutError) as exc:
            raise MailError(f"no answer within {self.timeout:g} s") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise MailError(str(exc) or type(exc).__name__) from exc
        return Accepted(
            accepted=[r for r in recipients if r not in refused],
            refused={r: f"{answer.code} {answer.message}" for r, answer in refused.items()},
            response=response,
        )
