"""What becomes of a claimed message: the dispatcher's rules, pure (no I/O, no clock of
their own), so they are tested table by table without infrastructure.

- `too_late`: the stop time and the client's window, checked right before a request;
- `request_deadline`: a request starts only if its whole deadline ends before the stop
  time and at least `lease_margin_s` before the sending lease does; otherwise the
  message is given back (`give_back`) without burning an attempt, as are the requests
  not started yet when the dispatcher stops;
- `decide`: the outcome of a gateway answer;
- `retry`: the next retry tier, or `failed` once the attempts or age cap is reached, or
  `expired` when no retry can start before the stop time;
- `on_error`: an unexpected error while delivering one message is that message's
  outcome alone.

Attempts that were not the message's fault (an open breaker, a configuration fault of
the gateway, a lease nearly spent) are "held": same tier, not counted toward the cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from services.dispatcher.gateway import MAX_RETRY_AFTER_S, Outcome, Result
from shared.models import MessageStatus
from shared.statuses import STOP_REACHED
from shared.windows import NO_ALLOWED_TIME_BEFORE_STOP, Window, is_allowed, next_allowed

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from shared.settings import Settings

LEASE_SPENT = "lease nearly spent: not sent, given back"
STOPPING = "dispatcher stopping: not sent, given back"


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
    # Transient failures so far (carried by the retry commands): the attempts cap.
    failures: int = 0
    # When the message first became due (the age cap counts from here).
    due_at: datetime | None = None
    # `time.monotonic()` at which the claim's lease ends, at the latest.
    lease_ends: float = math.inf


@dataclass(slots=True)
class Decision:
    status: MessageStatus
    error: str | None = None
    due: datetime | None = None  # for `scheduled` (outside the window) and retries
    tier: int = 0
    dlq: bool = False
    failures: int = 0


@dataclass(frozen=True, slots=True)
class Rules:
    retry_delays_s: tuple[float, ...]
    provider_timeout_s: float
    provider_deduplicates: bool
    lease_margin_s: float
    max_attempts: int
    max_age_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            retry_delays_s=tuple(settings.retry_delays_s),
            provider_timeout_s=settings.provider_timeout_s,
            provider_deduplicates=settings.provider_deduplicates,
            lease_margin_s=settings.sending_lease_margin_s,
            max_attempts=settings.retry_max_attempts,
            max_age_s=settings.retry_max_age_s,
        )


def too_late(message: Claimed, now: datetime) -> Decision | None:
    """Stop time and window, checked right before a request may start."""
    if now >= message.stop_at:
        return Decision(MessageStatus.EXPIRED, STOP_REACHED)
    if not is_allowed(now, message.window, message.zone):
        opens = next_allowed(now, message.window, message.zone)
        if opens >= message.stop_at:
            return Decision(MessageStatus.EXPIRED, NO_ALLOWED_TIME_BEFORE_STOP)
        return Decision(MessageStatus.SCHEDULED, "outside the client's window", due=opens)
    return None


def request_deadline(
    message: Claimed, now: datetime, lease_left_s: float, rules: Rules
) -> float | None:
    """The total deadline of a request starting now, or None if it may not start: it
    would not end `lease_margin_s` before the lease does (the scheduler would recover
    the message and fire it again while this request still runs)."""
    deadline = min(rules.provider_timeout_s, (message.stop_at - now).total_seconds())
    if deadline + rules.lease_margin_s > lease_left_s:
        return None
    return deadline


def give_back(message: Claimed, now: datetime, reason: str = LEASE_SPENT) -> Decision:
    """No request was made: back to the retry tiers at once, same tier, nothing burnt."""
    return Decision(
        MessageStatus.RETRYING,
        reason,
        due=now,
        tier=max(message.tier, 1),
        failures=message.failures,
    )


def decide(
    message: Claimed, result: Result, now: datetime, hold_s: float, rules: Rules
) -> Decision:
    """The outcome of one gateway answer; `hold_s` is how long a held message waits."""
    if result.outcome == Outcome.OK:
        return Decision(MessageStatus.SENT)
    if result.outcome == Outcome.PERMANENT:
        return Decision(MessageStatus.FAILED, result.error, dlq=True)
    if result.outcome in (Outcome.AUTH, Outcome.CONFIG):
        # A configuration fault, not the message's: held, not burnt.
        return retry(message, now, result.error, hold_s, escalate=False, rules=rules)
    if result.ambiguous and not rules.provider_deduplicates:
        return Decision(MessageStatus.FAILED, f"unknown outcome: {result.error}", dlq=True)
    return retry(message, now, result.error, result.retry_after or 0.0, escalate=True, rules=rules)


def retry(
    message: Claimed,
    now: datetime,
    error: str | None,
    at_least: float,
    *,
    escalate: bool,
    rules: Rules,
) -> Decision:
    """Wait in the retry tiers. `escalate`: a transient failure of the message's own,
    counted toward the caps and moved up a tier; otherwise held in its tier."""
    delays = rules.retry_delays_s
    failures = message.failures
    if escalate:
        failures += 1
        if failures >= rules.max_attempts:
            return Decision(
                MessageStatus.FAILED,
                f"gave up after {failures} attempts: {error}",
                dlq=True,
                failures=failures,
            )
        if message.due_at is not None:
            age = (now - message.due_at).total_seconds()
            if age >= rules.max_age_s:
                return Decision(
                    MessageStatus.FAILED,
                    f"gave up: retrying for {age:.0f} s: {error}",
                    dlq=True,
                    failures=failures,
                )
        tier = min(message.tier + 1, len(delays))
    else:
        tier = min(max(message.tier, 1), len(delays))
    if not math.isfinite(at_least):
        at_least = 0.0 if math.isnan(at_least) else MAX_RETRY_AFTER_S
    wait = max(delays[tier - 1], min(max(at_least, 0.0), MAX_RETRY_AFTER_S))
    when = now + timedelta(seconds=wait)
    if when >= message.stop_at:
        return Decision(MessageStatus.EXPIRED, f"no retry before stop time: {error}")
    return Decision(MessageStatus.RETRYING, error, due=when, tier=tier, failures=failures)


def on_error(
    message: Claimed, now: datetime, exc: BaseException, requested: bool, rules: Rules
) -> Decision:
    """An unexpected error while delivering one message: a transient failure of that
    message alone (ambiguous if the request may have gone out)."""
    error = f"dispatcher error: {exc!r:.200}"
    if requested and not rules.provider_deduplicates:
        return Decision(MessageStatus.FAILED, f"unknown outcome: {error}", dlq=True)
    try:
        return retry(message, now, error, 0.0, escalate=True, rules=rules)
    except Exception:  # never let one message's outcome fail to be recorded
        return Decision(
            MessageStatus.RETRYING,
            error,
            due=now,
            tier=max(message.tier, 1),
            failures=message.failures + 1,
        )
