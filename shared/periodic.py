"""A background pass repeated at an interval, whose failures are logged once per episode.

The re-drive, the counter reconciliation and the consumer-lag monitor each run one
pass every few seconds. A pass that fails (PostgreSQL or Kafka unreachable) is retried
at the next interval; the first failure logs `<name>_failed` as a warning, the first
success after it `<name>_recovered`: an outage costs two lines, not one per pass.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from shared.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = get_logger(__name__)


async def repeat(
    step: Callable[[], Awaitable[bool | None]],
    interval_s: float,
    *,
    name: str,
    failed: str | None = None,
    recovered: str | None = None,
) -> None:
    """Run `step` every `interval_s` until cancelled, or until it returns True (a step
    that returns None or False goes on)."""
    failing = False
    while True:
        try:
            done = await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.warning(failed or f"{name}_failed", error=repr(exc))
            failing = True
        else:
            if failing:
                log.info(recovered or f"{name}_recovered")
            failing = False
            if done is True:
                return
        await asyncio.sleep(interval_s)
