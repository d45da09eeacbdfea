"""What the dispatcher's rule tables share: a fixed clock, the rules, a claimed message."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.dispatcher.decisions import Claimed, Rules

NOW = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
RULES = Rules(
    retry_delays_s=(5.0, 30.0, 120.0),
    provider_timeout_s=10.0,
    provider_deduplicates=True,
    lease_margin_s=2.0,
    max_attempts=5,
    max_age_s=3600.0,
)
NO_DEDUP = replace(RULES, provider_deduplicates=False)


def message(**changes: Any) -> Claimed:
    """A message claimed at NOW, due a minute ago, stop a day away; `changes` override."""
    base = Claimed(
        message_id=1,
        mailing_id=2,
        client_id=3,
        attempt=1,
        previous="queued",
        text="hi",
        stop_at=NOW + timedelta(days=1),
        window=None,
        phone="79001234567",
        zone=ZoneInfo("UTC"),
        due_at=NOW - timedelta(minutes=1),
    )
    return replace(base, **changes)
