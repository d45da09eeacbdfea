"""Delivering a batch of send commands: claim, send, record.

1. Claim: one compare-and-set `UPDATE ... WHERE status IN ('queued','retrying')` moves the
   batch's messages to `sending`, bumps `attempts` (the fencing token) and sets a lease.
   A command for a message that is not claimable (already sent, in flight elsewhere,
   deleted, cancelled) does nothing: redeliveries are harmless. A command of a mailing
   an operator paused is given back unsent (`scheduled` again, no attempt counted);
   one of a cancelled mailing is cancelled (`HALT`). (The scheduler publishes
   a command only after the message is committed as `queued`.)
2. Send: right before each request, the stop time and the client's window are checked
   again, and the lease: a request starts only if its total deadline ends before the
   stop time and `SENDING_LEASE_MARGIN_S` before the lease does (else the message goes
   back to its retry tier unsent, nothing burnt). It runs within the concurrency cap,
   the rate limit and the circuit breaker. An unexpected error is that message's
   outcome alone.
3. Record: outcomes are written as they arrive, in small groups (`recorder.py`), each
   group in one transaction with its status events, retry commands and DLQ records in
   the outbox. Every write is a compare-and-set on `attempts`, the fencing token: an
   outcome of attempt N is the truth while the row's attempts is still N, even if the
   scheduler's lease recovery moved it from `sending` meanwhile (no later attempt has
   started). The batch returns (and its offsets are committed) only once all of its
   outcomes are committed; while PostgreSQL is down they are held, not dropped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from services.dispatcher.decisions import (
    LEASE_SPENT,
    STOPPING,
    Claimed,
    Decision,
    Rules,
    decide,
    give_back,
    on_error,
    request_deadline,
    retry,
    too_late,
)
from services.dispatcher.gateway import Outcome, Result
from services.dispatcher.recorder import OutcomeRecorder
from shared.audience import NO_LONGER_MATCHES, REACHES_SQL
from shared.events import SendData, SendMessage
from shared.logging import get_logger
from shared.metrics import (
    BREAKER_OPENINGS,
    BREAKER_STATE,
    DLQ_RECORDS,
    GATEWAY_LATENCY,
    GATEWAY_OUTCOMES,
    LEASE_GIVEN_BACK,
    MESSAGE_TRANSITIONS,
    RETRIES,
)
from shared.models import (
    HALTED_STATES,
    PENDING_STATUSES,
    WAITING_FOR_DISPATCH,
    MailingState,
    MessageStatus,
    sql_in,
    sql_literal,
)
from shared.models import MessageStatus as S
from shared.outbox import add_events
from shared.statuses import (
    LEASE_UNKNOWN,
    MAILING_CANCELLED,
    MAILING_PAUSED,
    StatusChange,
    changes_of,
    stage_status_events,
)
from shared.windows import Window

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from datetime import time as clock_time

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from services.dispatcher.breaker import CircuitBreaker
    from services.dispatcher.gateway import Gateway
    from services.dispatcher.ratelimit import RateLimiter
    from shared.settings import Settings
    from shared.topics import Topics

log = get_logger(__name__)

# REACHES_SQL (shared/audience.py) and the status names (their enum) are constants, not
# input: hence the noqa below.
CLAIM = text(
    f"""
    WITH target AS (
        SELECT id, status AS previous FROM message
        WHERE id = ANY(CAST(:ids AS bigint[])) AND {sql_in("status", WAITING_FOR_DISPATCH)}
        ORDER BY id
        -- A row locked by another claim of the same message (a duplicate command):
        -- skip it, that claim wins.
        FOR UPDATE SKIP LOCKED
    )
    UPDATE message AS m
    SET status = {sql_literal(S.SENDING)}, attempts = m.attempts + 1,
        lease_until = now() + make_interval(secs => :lease), updated_at = now()
    FROM target, mailing AS g, client AS c
    WHERE m.id = target.id AND g.id = m.mailing_id AND c.id = m.client_id
      -- A message of an older version of its mailing (an edit not re-planned yet, or
      -- in flight while it was) goes out only to a client the mailing still reaches;
      -- text, window and stop time are the mailing's current ones (below).
      AND (m.mailing_version = g.version OR ({REACHES_SQL}))
      AND NOT {sql_in("g.state", HALTED_STATES)}
    RETURNING m.id, m.mailing_id, m.client_id, m.attempts, target.previous,
              g.text, g.stop_at, g.window_start, g.window_end, c.phone, c.timezone, m.due_at
    """  # noqa: S608
)

# Before the claim: a message of an older version whose client the edited mailing no
# longer reaches is cancelled, as the edit's re-plan does (it may have been in flight,
# out of the re-plan's reach, when the edit landed).
DROP_EXCLUDED = text(
    f"""
    WITH target AS (
        SELECT m.id, m.status AS previous
        FROM message AS m
        JOIN mailing AS g ON g.id = m.mailing_id
        JOIN client AS c ON c.id = m.client_id
        WHERE m.id = ANY(CAST(:ids AS bigint[])) AND {sql_in("m.status", WAITING_FOR_DISPATCH)}
          AND m.mailing_version < g.version AND NOT ({REACHES_SQL})
        ORDER BY m.id
        FOR UPDATE OF m SKIP LOCKED
    )
    UPDATE message AS m
    SET status = {sql_literal(S.CANCELLED)}, last_error = :reason, lease_until = NULL,
        updated_at = now()
    FROM target
    WHERE m.id = target.id
    RETURNING m.id, m.mailing_id, m.client_id, m.attempts, target.previous
    """  # noqa: S608
)

# First in the claim's transaction: the batch's mailings are held (`FOR SHARE`) until it
# commits, so a pause, resume or cancel (the API locks the row `FOR UPDATE`) lands
# before or after the whole claim, never between HALT and CLAIM (each statement reads
# the rows anew): a command is then either claimed or given back, never left `queued`.
HOLD_MAILINGS = text(
    """
    SELECT g.id FROM mailing AS g
    WHERE g.id IN (SELECT m.mailing_id FROM message AS m WHERE m.id = ANY(CAST(:ids AS bigint[])))
    ORDER BY g.id
    FOR SHARE OF g
    """
)

# Before the claim: a command of a mailing an operator paused is given back (`scheduled`
# again, its due time kept: the scheduler fires it after the resume, at once if still
# in the window) with no request and no attempt counted; one of a cancelled mailing is
# cancelled, as the scheduler's sweep does.
HALT = text(
    f"""
    WITH target AS (
        SELECT m.id, m.status AS previous, g.state
        FROM message AS m
        JOIN mailing AS g ON g.id = m.mailing_id
        WHERE m.id = ANY(CAST(:ids AS bigint[])) AND {sql_in("m.status", WAITING_FOR_DISPATCH)}
          AND {sql_in("g.state", HALTED_STATES)}
        ORDER BY m.id
        FOR UPDATE OF m SKIP LOCKED
    )
    UPDATE message AS m
    SET status = CASE WHEN target.state = {sql_literal(MailingState.PAUSED)}
                      THEN {sql_literal(S.SCHEDULED)} ELSE {sql_literal(S.CANCELLED)} END,
        last_error = CASE WHEN target.state = {sql_literal(MailingState.PAUSED)}
                          THEN :paused ELSE :cancelled END,
        retry_at = NULL, lease_until = NULL, updated_at = now()
    FROM target
    WHERE m.id = target.id
    RETURNING m.id, m.mailing_id, m.client_id, m.attempts, target.previous, m.status
    """  # noqa: S608
)

# Outcome writes for a group at once, fenced by `attempts`: the row is still at the
# attempt this outcome is for, and no later attempt has started (`sending` by this
# attempt, or put back to waiting by the lease recovery). The previous status is
# returned for the status events.
FINISH = text(
    f"""
    WITH u AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[]),
                             CAST(:statuses AS text[]), CAST(:errors AS text[]),
                             CAST(:dues AS timestamptz[])) AS u(id, attempt, status, error, due)
    ), old AS (
        SELECT m.id, m.status FROM message AS m JOIN u ON u.id = m.id
        WHERE m.attempts = u.attempt
          AND ({sql_in("m.status", PENDING_STATUSES)}
               OR (m.status = {sql_literal(S.FAILED)} AND m.last_error = :lease_unknown))
        ORDER BY m.id
        FOR UPDATE OF m
    )
    UPDATE message AS m
    SET status = u.status, last_error = u.error,
        due_at = CASE WHEN u.status = {sql_literal(S.SCHEDULED)} THEN u.due ELSE m.due_at END,
        retry_at = CASE WHEN u.status = {sql_literal(S.RETRYING)} THEN u.due END,
        sent_at = CASE WHEN u.status = {sql_literal(S.SENT)} THEN now() ELSE m.sent_at END,
        lease_until = NULL, updated_at = now()
    FROM u, old
    WHERE m.id = u.id AND old.id = m.id
    RETURNING m.id, old.status
    """  # noqa: S608
)


@dataclass
class Delivery:
    sessions: async_sessionmaker[AsyncSession]
    topics: Topics
    settings: Settings
    gateway: Gateway
    breaker: CircuitBreaker
    limiter: RateLimiter
    on_commit: Callable[[], None] = lambda: None
    # Set when the process stops: no request starts after it (see `_deliver`).
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _zones: dict[str, ZoneInfo] = field(default_factory=dict)
    _slots: asyncio.Semaphore | None = None
    _rules: Rules | None = None
    # Messages whose request has been started (an error after it is ambiguous).
    _requested: dict[int, bool] = field(default_factory=dict)

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.provider_concurrency)
        return self._slots

    @property
    def rules(self) -> Rules:
        if self._rules is None:
            self._rules = Rules.from_settings(self.settings)
        return self._rules

    async def process(self, commands: Sequence[SendData]) -> int:
        """Deliver one batch; return how many messages were claimed. Returns once every
        outcome of the batch is committed."""
        if not commands:
            return 0
        claimed = await self.claim(commands)
        if not claimed:
            return 0
        given_back = 0
        at_stop = 0

        async def one(message: Claimed, recorder: OutcomeRecorder[Outcomes]) -> None:
            nonlocal given_back, at_stop
            decision = await self.deliver(message, recorder.room)
            if decision.error == LEASE_SPENT:
                given_back += 1
            elif decision.error == STOPPING:
                at_stop += 1
            recorder.add((message, decision))

        async with OutcomeRecorder[Outcomes](self.record, describe=_ids) as recorder:
            await asyncio.gather(*(one(message, recorder) for message in claimed))
        if given_back:
            LEASE_GIVEN_BACK.inc(given_back)
            log.warning(
                "requests_given_back",
                count=given_back,
                reason="lease nearly spent: the batch waited too long to send them",
                hint="lower DISPATCHER_BATCH_SIZE or raise PROVIDER_CONCURRENCY or SENDING_LEASE_S",
            )
        if at_stop:
            log.info(
                "requests_given_back_at_stop",
                count=at_stop,
                reason="the dispatcher is stopping: not sent, back to their retry tier",
            )
        return len(claimed)

    # --- 1. claim --------------------------------------------------------------------

    async def claim(self, commands: Sequence[SendData]) -> list[Claimed]:
        by_id = {command.message_id: command for command in commands}
        lease = self.settings.sending_lease_s
        # The lease is set from the database's clock at the start of the claim's
        # transaction, which is no earlier than this: the end seen here is never late.
        lease_ends = time.monotonic() + lease
        async with self.sessions() as session, session.begin():
            await session.execute(HOLD_MAILINGS, {"ids": list(by_id)})
            dropped = (
                await session.execute(
                    DROP_EXCLUDED, {"ids": list(by_id), "reason": NO_LONGER_MATCHES}
                )
            ).all()
            await stage_status_events(
                session,
                self.topics,
                changes_of(dropped),
                MessageStatus.CANCELLED,
                error=NO_LONGER_MATCHES,
            )
            halted = (
                await session.execute(
                    HALT,
                    {"ids": list(by_id), "paused": MAILING_PAUSED, "cancelled": MAILING_CANCELLED},
                )
            ).all()
            for status, reason in (
                (MessageStatus.SCHEDULED, MAILING_PAUSED),
                (MessageStatus.CANCELLED, MAILING_CANCELLED),
            ):
                await stage_status_events(
                    session,
                    self.topics,
                    changes_of(row for row in halted if row.status == status),
                    status,
                    error=reason,
                )
            rows = (await session.execute(CLAIM, {"ids": list(by_id), "lease": lease})).all()
            await stage_status_events(session, self.topics, changes_of(rows), MessageStatus.SENDING)
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
                tier=by_id[r.id].tier if r.id in by_id else 0,
                failures=by_id[r.id].failures if r.id in by_id else 0,
                due_at=r.due_at,
                lease_ends=lease_ends,
            )
            for r in rows
        ]

    def _zone(self, name: str) -> ZoneInfo:
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = ZoneInfo(name)
        return zone

    # --- 2. send ---------------------------------------------------------------------

    async def deliver(
        self, message: Claimed, room: Callable[[], Awaitable[None]] | None = None
    ) -> Decision:
        """The outcome of one message; never raises (but for cancellation). `room`, if
        given, is awaited right before a request may start (the recorder's back-pressure)."""
        try:
            return await self._deliver(message, room)
        except Exception as exc:
            requested = self._requested.pop(message.message_id, False)
            if requested:
                # Its answer was never observed: count a failure (this also ends a
                # half-open breaker's probe, which would otherwise wait forever).
                self.breaker.failure()
            log.exception(
                "delivery_error",
                attempt=message.attempt,
                requested=requested,
                **_ids((message, None)),
            )
            return on_error(message, datetime.now(UTC), exc, requested, self.rules)
        finally:
            self._requested.pop(message.message_id, None)

    async def _deliver(
        self, message: Claimed, room: Callable[[], Awaitable[None]] | None
    ) -> Decision:
        rules = self.rules
        ids = {
            "mailing_id": message.mailing_id,
            "message_id": message.message_id,
            "client_id": message.client_id,
        }
        now = datetime.now(UTC)
        if (early := too_late(message, now)) is not None:
            return early
        if request_deadline(message, now, message.lease_ends - time.monotonic(), rules) is None:
            return give_back(message, now)
        async with self.slots:
            if room is not None:
                await room()
            # Stopping (SIGTERM): the rest of the batch is given back unsent rather than
            # wait for the rate limit past the shutdown grace and be cut off in
            # `sending`, which the lease recovery cannot tell from a request made (with
            # PROVIDER_DEDUPLICATES=false it would fail them as unknown outcomes).
            if not await self.limiter.acquire(self.stopping) or self.stopping.is_set():
                return give_back(message, datetime.now(UTC), STOPPING)
            now = datetime.now(UTC)
            if (late := too_late(message, now)) is not None:
                return late
            deadline = request_deadline(message, now, message.lease_ends - time.monotonic(), rules)
            if deadline is None:
                # Checked before the breaker: a half-open breaker's probe must be made.
                return give_back(message, now)
            if not self.breaker.allow():
                # Not the message's fault: wait in the retry tier, same tier, no burn.
                return retry(
                    message, now, "circuit open", self.breaker.wait_s(), escalate=False, rules=rules
                )
            started = time.perf_counter()
            self._requested[message.message_id] = True
            result = await self.gateway.send(
                message.message_id, message.phone, message.text, deadline
            )
            elapsed = time.perf_counter() - started
        self._observe(result, elapsed)
        # One line per attempt, once its answer (or the lack of one) is known.
        log.info(
            "gateway_response",
            attempt=message.attempt,
            deadline_s=round(deadline, 3),
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
        if result.outcome in (Outcome.TRANSIENT, Outcome.AUTH, Outcome.CONFIG):
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
        if result.outcome in (Outcome.AUTH, Outcome.CONFIG):
            hint = (
                "check PROVIDER_TOKEN"
                if result.outcome == Outcome.AUTH
                else f"check PROVIDER_URL ({self.settings.provider_url}): the gateway has no "
                "such endpoint"
            )
            log.error(
                "gateway_auth_failed"
                if result.outcome == Outcome.AUTH
                else "gateway_config_failed",
                status=result.status,
                hint=f"{hint}; messages are held, not burnt",
                mailing_id=message.mailing_id,
                message_id=message.message_id,
                client_id=message.client_id,
            )
        return decide(message, result, datetime.now(UTC), self.breaker.wait_s(), self.rules)

    # --- 3. record -------------------------------------------------------------------

    async def record(self, outcomes: list[Outcomes]) -> None:
        """Write one group of outcomes, fenced by attempt (see FINISH)."""
        async with self.sessions() as session, session.begin():
            previous = {
                row.id: row.status
                for row in await session.execute(
                    FINISH,
                    {
                        "ids": [m.message_id for m, _ in outcomes],
                        "attempts": [m.attempt for m, _ in outcomes],
                        "statuses": [d.status.value for _, d in outcomes],
                        "errors": [d.error for _, d in outcomes],
                        # `scheduled`: the next window; `retrying`: when its retry is due.
                        "dues": [d.due for _, d in outcomes],
                        "lease_unknown": LEASE_UNKNOWN,
                    },
                )
            }
            done = [(m, d) for m, d in outcomes if m.message_id in previous]
            groups: dict[tuple[MessageStatus, str | None], list[Claimed]] = {}
            for message, decision in done:
                groups.setdefault((decision.status, decision.error), []).append(message)
            for (status, error), group in groups.items():
                await stage_status_events(
                    session,
                    self.topics,
                    [
                        StatusChange(
                            message_id=m.message_id,
                            mailing_id=m.mailing_id,
                            client_id=m.client_id,
                            attempt=m.attempt,
                            previous=previous[m.message_id],
                        )
                        for m in group
                    ],
                    status,
                    error=error,
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
                        failures=decision.failures,
                    )
                )
            )
        for topic, commands in by_topic.items():
            await add_events(session, topic, commands)


Outcomes = tuple[Claimed, Decision]


def _ids(outcome: tuple[Claimed, Decision | None]) -> dict[str, Any]:
    message = outcome[0]
    return {
        "mailing_id": message.mailing_id,
        "message_id": message.message_id,
        "client_id": message.client_id,
    }


def _window(start: clock_time | None, end: clock_time | None) -> Window | None:
    return Window(start, end) if start is not None and end is not None else None
