"""Delivering a batch of send commands: claim, send, record.

1. Claim: one compare-and-set `UPDATE ... WHERE status IN ('queued','retrying')` moves the
   batch's messages to `sending`, bumps `attempts` (the fencing token) and sets a lease.
   A command for a message that is not claimable (already sent, in flight elsewhere,
   deleted, cancelled) does nothing: redeliveries are harmless. (The scheduler publishes
   a command only after the message is committed as `queued`.)
2. Send: right before each request, the stop time and the client's window are checked
   again; the request runs under a total deadline that never passes the stop time,
   within the concurrency cap, the rate limit and the circuit breaker.
3. Record: one transaction per batch; every change is a compare-and-set on
   (`status = 'sending'`, `attempts`), so a late writer cannot overwrite a newer attempt.
   Status events, retry commands and DLQ records go through the outbox in the same
   transaction: nothing is lost between the database and Kafka.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from services.dispatcher.gateway import Outcome, Result
from shared.events import SendData, SendMessage
from shared.logging import get_logger
from shared.metrics import (
    BREAKER_OPENINGS,
    BREAKER_STATE,
    DLQ_RECORDS,
    GATEWAY_LATENCY,
    GATEWAY_OUTCOMES,
    MESSAGE_TRANSITIONS,
    RETRIES,
)
from shared.models import MessageStatus
from shared.outbox import add_events
from shared.statuses import stage_status_events
from shared.windows import Window, is_allowed, next_allowed

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import time as clock_time

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from services.dispatcher.breaker import CircuitBreaker
    from services.dispatcher.gateway import Gateway
    from services.dispatcher.ratelimit import RateLimiter
    from shared.settings import Settings
    from shared.topics import Topics

log = get_logger(__name__)

CLAIM = text(
    """
    WITH target AS (
        SELECT id, status AS previous FROM message
        WHERE id = ANY(CAST(:ids AS bigint[])) AND status IN ('queued', 'retrying')
        ORDER BY id
        -- A row locked by another claim of the same message (a duplicate command):
        -- skip it, that claim wins.
        FOR UPDATE SKIP LOCKED
    )
    UPDATE message AS m
    SET status = 'sending', attempts = m.attempts + 1,
        lease_until = now() + make_interval(secs => :lease), updated_at = now()
    FROM target, mailing AS g, client AS c
    WHERE m.id = target.id AND g.id = m.mailing_id AND c.id = m.client_id
    RETURNING m.id, m.mailing_id, m.client_id, m.attempts, target.previous,
              g.text, g.stop_at, g.window_start, g.window_end, c.phone, c.timezone
    """
)

# Outcome writes: compare-and-set on (status, attempts) for the whole batch at once.
FINISH = text(
    """
    UPDATE message AS m
    SET status = u.status, last_error = u.error, due_at = coalesce(u.due, m.due_at),
        sent_at = CASE WHEN u.status = 'sent' THEN now() ELSE m.sent_at END,
        lease_until = NULL, updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[]),
                CAST(:statuses AS text[]), CAST(:errors AS text[]),
                CAST(:dues AS timestamptz[])) AS u(id, attempt, status, error, due)
    WHERE m.id = u.id AND m.status = 'sending' AND m.attempts = u.attempt
    RETURNING m.id
    """
)


@dataclass(slots=True)
class Claimed:
    message_id: int
    mailing_id: int
    client_id: int
    attempt: int
    previous: str
    text: str
    stop_at: datetime
    window: Window | None
    phone: str
    zone: ZoneInfo
    tier: int = 0


@dataclass(slots=True)
class Decision:
    status: MessageStatus
    error: str | None = None
    due: datetime | None = None  # for `scheduled` (outside the window) and retries
    tier: int = 0
    dlq: bool = False


@dataclass
class Delivery:
    sessions: async_sessionmaker[AsyncSession]
    topics: Topics
    settings: Settings
    gateway: Gateway
    breaker: CircuitBreaker
    limiter: RateLimiter
    on_commit: Callable[[], None] = lambda: None
    _zones: dict[str, ZoneInfo] = field(default_factory=dict)
    _slots: asyncio.Semaphore | None = None

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.provider_concurrency)
        return self._slots

    async def process(self, commands: Sequence[SendData]) -> int:
        """Deliver one batch; return how many messages were claimed."""
        if not commands:
            return 0
        claimed = await self.claim(commands)
        if not claimed:
            return 0
        decisions = await asyncio.gather(*(self.deliver(one) for one in claimed))
        await self.record(list(zip(claimed, decisions, strict=True)))
        return len(claimed)

    # --- 1. claim --------------------------------------------------------------------

    async def claim(self, commands: Sequence[SendData]) -> list[Claimed]:
        tiers = {command.message_id: command.tier for command in commands}
        async with self.sessions() as session, session.begin():
            rows = (
                await session.execute(
                    CLAIM, {"ids": list(tiers), "lease": self.settings.sending_lease_s}
                )
            ).all()
            await stage_status_events(
                session,
                self.topics,
                [(r.id, r.mailing_id, r.client_id, r.attempts, r.previous) for r in rows],
                MessageStatus.SENDING,
                None,
            )
        MESSAGE_TRANSITIONS.labels("dispatcher", "sending").inc(len(rows))
        return [
            Claimed(
                message_id=r.id,
                mailing_id=r.mailing_id,
                client_id=r.client_id,
                attempt=r.attempts,
                previous=r.previous,
                text=r.text,
                stop_at=r.stop_at,
                window=_window(r.window_start, r.window_end),
                phone=r.phone,
                zone=self._zone(r.timezone),
                tier=tiers.get(r.id, 0),
            )
            for r in rows
        ]

    def _zone(self, name: str) -> ZoneInfo:
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = ZoneInfo(name)
        return zone

    # --- 2. send ---------------------------------------------------------------------

    def _too_late(self, message: Claimed, now: datetime) -> Decision | None:
        """Stop time and window, checked right before a request may start."""
        if now >= message.stop_at:
            return Decision(MessageStatus.EXPIRED, "stop time reached")
        if not is_allowed(now, message.window, message.zone):
            opens = next_allowed(now, message.window, message.zone)
            if opens >= message.stop_at:
                return Decision(MessageStatus.EXPIRED, "no allowed local time before stop")
            return Decision(MessageStatus.SCHEDULED, "outside the client's window", due=opens)
        return None

    async def deliver(self, message: Claimed) -> Decision:
        ids = {
            "mailing_id": message.mailing_id,
            "message_id": message.message_id,
            "client_id": message.client_id,
        }
        if (early := self._too_late(message, datetime.now(UTC))) is not None:
            return early
        async with self.slots:
            await self.limiter.acquire()
            now = datetime.now(UTC)
            if (late := self._too_late(message, now)) is not None:
                return late
            if not self.breaker.allow():
                # Not the message's fault: wait in the retry tier, same tier, no burn.
                return self._retry(message, now, "circuit open", self.breaker.wait_s(), False)
            deadline = min(
                self.settings.provider_timeout_s, (message.stop_at - now).total_seconds()
            )
            log.info(
                "gateway_request", attempt=message.attempt, deadline_s=round(deadline, 3), **ids
            )
            started = time.perf_counter()
            result = await self.gateway.send(
                message.message_id, message.phone, message.text, deadline
            )
            elapsed = time.perf_counter() - started
        self._observe(result, elapsed)
        log.info(
            "gateway_response",
            outcome=result.outcome.value,
            status=result.status,
            error=result.error,
            duration_ms=round(elapsed * 1000, 2),
            **ids,
        )
        return self._decide(message, result)

    def _observe(self, result: Result, elapsed: float) -> None:
        GATEWAY_LATENCY.labels(result.outcome.value).observe(elapsed)
        GATEWAY_OUTCOMES.labels(result.outcome.value, str(result.status or "none")).inc()
        before = self.breaker.opened_count
        if result.outcome in (Outcome.TRANSIENT, Outcome.AUTH):
            self.breaker.failure()
        else:
            self.breaker.success()
        if self.breaker.opened_count != before:
            BREAKER_OPENINGS.inc()
            log.warning(
                "gateway_breaker_open",
                open_s=self.breaker.open_s,
                consecutive_failures=self.breaker.consecutive,
            )
        BREAKER_STATE.set(int(self.breaker.state))

    def _decide(self, message: Claimed, result: Result) -> Decision:
        now = datetime.now(UTC)
        if result.outcome == Outcome.OK:
            return Decision(MessageStatus.SENT)
        if result.outcome == Outcome.PERMANENT:
            return Decision(MessageStatus.FAILED, result.error, dlq=True)
        if result.outcome == Outcome.AUTH:
            log.error(
                "gateway_auth_failed",
                status=result.status,
                hint="check PROVIDER_TOKEN; messages are held, not burnt",
                mailing_id=message.mailing_id,
                message_id=message.message_id,
                client_id=message.client_id,
            )
            return self._retry(message, now, result.error, self.breaker.wait_s(), False)
        if result.ambiguous and not self.settings.provider_deduplicates:
            return Decision(MessageStatus.FAILED, f"unknown outcome: {result.error}", dlq=True)
        return self._retry(message, now, result.error, result.retry_after or 0.0, True)

    def _retry(
        self, message: Claimed, now: datetime, error: str | None, at_least: float, escalate: bool
    ) -> Decision:
        delays = self.settings.retry_delays_s
        tier = min(message.tier + 1, len(delays)) if escalate else max(message.tier, 1)
        when = now + timedelta(seconds=max(delays[tier - 1], at_least))
        if when >= message.stop_at:
            return Decision(MessageStatus.EXPIRED, f"no retry before stop time: {error}")
        return Decision(MessageStatus.RETRYING, error, due=when, tier=tier)

    # --- 3. record -------------------------------------------------------------------

    async def record(self, outcomes: list[tuple[Claimed, Decision]]) -> None:
        async with self.sessions() as session, session.begin():
            updated = set(
                (
                    await session.execute(
                        FINISH,
                        {
                            "ids": [m.message_id for m, _ in outcomes],
                            "attempts": [m.attempt for m, _ in outcomes],
                            "statuses": [d.status.value for _, d in outcomes],
                            "errors": [d.error for _, d in outcomes],
                            # A retry's not_before too: the scheduler's re-drive
                            # judges a `retrying` message against it.
                            "dues": [
                                d.due
                                if d.status in (MessageStatus.SCHEDULED, MessageStatus.RETRYING)
                                else None
                                for _, d in outcomes
                            ],
                        },
                    )
                ).scalars()
            )
            done = [(m, d) for m, d in outcomes if m.message_id in updated]
            groups: dict[tuple[MessageStatus, str | None], list[Claimed]] = {}
            for message, decision in done:
                groups.setdefault((decision.status, decision.error), []).append(message)
            for (status, error), group in groups.items():
                await stage_status_events(
                    session,
                    self.topics,
                    [
                        (m.message_id, m.mailing_id, m.client_id, m.attempt, "sending")
                        for m in group
                    ],
                    status,
                    error,
                )
                MESSAGE_TRANSITIONS.labels("dispatcher", status.value).inc(len(group))
            await self._stage_commands(session, done)
        self.on_commit()

    async def _stage_commands(
        self, session: AsyncSession, done: list[tuple[Claimed, Decision]]
    ) -> None:
        by_topic: dict[str, list[Any]] = {}
        for message, decision in done:
            if decision.status == MessageStatus.RETRYING:
                topic = self.topics.message_send_retry(decision.tier)
                RETRIES.labels(str(decision.tier)).inc()
            elif decision.dlq:
                topic = self.topics.message_send_dlq
                DLQ_RECORDS.inc()
            else:
                continue
            by_topic.setdefault(topic, []).append(
                SendMessage(
                    payload=SendData(
                        message_id=message.message_id,
                        mailing_id=message.mailing_id,
                        client_id=message.client_id,
                        attempt=message.attempt,
                        not_before=decision.due,
                        tier=decision.tier,
                        last_error=decision.error,
                    )
                )
            )
        for topic, commands in by_topic.items():
            await add_events(session, topic, commands)


def _window(start: clock_time | None, end: clock_time | None) -> Window | None:
    return Window(start, end) if start is not None and end is not None else None
