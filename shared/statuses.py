"""Status changes of messages, each a compare-and-set with its `message.status` event.

The event is staged in the outbox in the same transaction as the change, so the
reporter and other systems see every change exactly once per commit.

Two shapes: `transition_where` for a small set of messages (one client's, a batch a
dispatcher or the scheduler claimed), one `messages.transitioned` event per mailing
naming each message with its previous status and attempt;
`move_batch` + `stage_changes` for bulk work (expiry at stop time, the re-plan of an
edit), which the caller bounds (an id range) and which stages one aggregated
`messages.status_changed` event per mailing and step, counts per (previous -> new).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import func, select, text, update

from shared.events import (
    MessagesStatusChanged,
    MessagesStatusChangedData,
    MessagesTransitioned,
    MessagesTransitionedData,
    MessageTransition,
    StatusCount,
    utcnow,
)
from shared.models import Message, MessageStatus
from shared.outbox import add_events

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.topics import Topics

# Reasons written to `last_error` and carried by status events by more than one service.
STOP_REACHED: Final = "stop time reached"
# The scheduler's lease recovery writes this when the gateway does not de-duplicate;
# the dispatcher's outcome writes recognise it (a held outcome may correct the guess).
LEASE_UNKNOWN: Final = "unknown outcome: lease expired"
# An operator cancelled the mailing (the scheduler's sweep, the dispatcher's claim).
MAILING_CANCELLED: Final = "mailing cancelled"
# An operator paused the mailing: the dispatcher gave the command back unsent.
MAILING_PAUSED: Final = "mailing paused: not sent, waits for the resume"


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusChange:
    """One message's change of status, as a `messages.transitioned` event names it
    (built by keyword only: five ids and counts side by side are easy to swap)."""

    message_id: int
    mailing_id: int
    client_id: int
    attempt: int
    previous: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Moved:
    """A kind of bulk change: messages of one mailing from `previous` to `status`."""

    mailing_id: int
    previous: str
    status: str
    error: str | None


async def transition_where(
    session: AsyncSession,
    topics: Topics,
    condition: ColumnElement[bool],
    to: MessageStatus,
    *,
    error: str | None = None,
) -> int:
    """Move every message matching `condition` to `to`; stage their events.

    For small sets only: the rows come back to Python (use `move_batch` for bulk work).
    Returns the number of messages changed. Rows are locked in id order, so concurrent
    bulk transitions do not deadlock.
    """
    old = (
        select(Message.id, Message.status)
        .where(condition)
        .order_by(Message.id)
        .with_for_update()
        .cte("old")
    )
    rows = (
        await session.execute(
            update(Message)
            .where(Message.id == old.c.id)
            .values(status=to, updated_at=func.now(), last_error=error)
            .returning(
                Message.id,
                Message.mailing_id,
                Message.client_id,
                Message.attempts,
                old.c.status.label("previous"),
            )
        )
    ).all()
    await stage_status_events(session, topics, changes_of(rows), to, error=error)
    return len(rows)


# The most messages one `messages.transitioned` event names (about 60 KB of JSON).
TRANSITION_CHUNK: Final = 1000


async def stage_status_events(
    session: AsyncSession,
    topics: Topics,
    changes: Iterable[StatusChange],
    to: MessageStatus,
    *,
    error: str | None = None,
) -> None:
    """Stage the `changes`, all to `to` with `error`, as `messages.transitioned` events:
    one per mailing (per `TRANSITION_CHUNK` messages), each message named with its
    previous status and attempt, in the order given."""
    by_mailing: dict[int, list[MessageTransition]] = {}
    for change in changes:
        by_mailing.setdefault(change.mailing_id, []).append(
            MessageTransition(
                message_id=change.message_id,
                client_id=change.client_id,
                previous_status=change.previous,
                attempt=change.attempt,
            )
        )
    at = utcnow()
    await add_events(
        session,
        topics.message_status,
        [
            MessagesTransitioned(
                payload=MessagesTransitionedData(
                    mailing_id=mailing_id,
                    status=to.value,
                    error=error,
                    at=at,
                    messages=messages[start : start + TRANSITION_CHUNK],
                )
            )
            for mailing_id, messages in by_mailing.items()
            for start in range(0, len(messages), TRANSITION_CHUNK)
        ],
    )


def changes_of(rows: Iterable[Any], *, previous: MessageStatus | None = None) -> list[StatusChange]:
    """The changes of message rows read back from a claim or an update (`id`,
    `mailing_id`, `client_id`, `attempts`, and `previous` unless `previous` is given:
    the status every one of them was in)."""
    return [
        StatusChange(
            message_id=row.id,
            mailing_id=row.mailing_id,
            client_id=row.client_id,
            attempt=row.attempts,
            previous=row.previous if previous is None else previous.value,
        )
        for row in rows
    ]


# How many messages made each kind of bulk change.
Changes = Counter[Moved]


async def plan_each_batch(session: AsyncSession) -> None:
    """For the rest of the transaction, plan each statement with its values.

    A bulk step runs the same statements thousands of times with other id ranges: after a
    few runs the driver prepares them and PostgreSQL may switch to a generic plan, whose
    guesses (a few rows per range) can turn a probe per message into a loop over the
    range's clients for every message. Planning anew costs a millisecond a step."""
    await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


async def move_batch(
    session: AsyncSession,
    batch: ColumnElement[bool],
    condition: ColumnElement[bool],
    to: MessageStatus,
    *,
    error: str | None = None,
    skip_locked: bool = False,
    **values: Any,
) -> Changes:
    """Move the messages of `batch` (a message-id range) matching `condition` to `to`
    (setting `values` too) in one statement, and count them by (mailing, previous
    status): only the counts come back, so memory does not grow with the batch. The
    caller stages the counts with `stage_changes` in the same transaction."""
    old = (
        select(Message.id, Message.status)
        .where(batch, condition)
        .order_by(Message.id)
        .with_for_update(skip_locked=skip_locked)
        .cte("old")
    )
    changed = (
        update(Message)
        # The range again: the update then reads the batch's rows, not the table.
        .where(Message.id == old.c.id, batch)
        .values(status=to, updated_at=func.now(), last_error=error, **values)
        .returning(Message.mailing_id, old.c.status.label("previous"))
        .cte("changed")
    )
    counted = await session.execute(
        select(changed.c.mailing_id, changed.c.previous, func.count()).group_by(
            changed.c.mailing_id, changed.c.previous
        )
    )
    return Counter(
        {
            Moved(mailing_id=mailing, previous=previous, status=to.value, error=error): count
            for mailing, previous, count in counted
        }
    )


async def stage_changes(session: AsyncSession, topics: Topics, changes: Changes) -> int:
    """Stage one `messages.status_changed` event per mailing for `changes` (changes to
    the same status are no change and left out); return how many events."""
    by_mailing: dict[int, list[StatusCount]] = {}
    for moved, count in sorted(
        changes.items(),
        key=lambda item: (
            item[0].mailing_id,
            item[0].previous,
            item[0].status,
            item[0].error or "",
        ),
    ):
        if count and moved.previous != moved.status:
            by_mailing.setdefault(moved.mailing_id, []).append(
                StatusCount(
                    previous_status=moved.previous,
                    status=moved.status,
                    count=count,
                    error=moved.error,
                )
            )
    await add_events(
        session,
        topics.message_status,
        [
            MessagesStatusChanged(
                payload=MessagesStatusChangedData(mailing_id=mailing_id, changes=counts)
            )
            for mailing_id, counts in by_mailing.items()
        ],
    )
    return len(by_mailing)


def total(changes: Changes, statuses: Iterable[str] | None = None) -> int:
    """How many messages `changes` counts (moved to one of `statuses`, if given)."""
    wanted = None if statuses is None else set(statuses)
    return sum(
        count for moved, count in changes.items() if wanted is None or moved.status in wanted
    )
