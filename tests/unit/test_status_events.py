"""Status changes of named messages travel as `messages.transitioned` events: one per
mailing per commit (chunked), each message named with its previous status and attempt,
and the reporter's deltas count every message of one exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

from services.reporter.counters import deltas_of
from shared.events import (
    MessageStatusChanged,
    MessagesTransitioned,
    MessagesTransitionedData,
    MessageTransition,
    StatusData,
    status_event_adapter,
)
from shared.models import MessageStatus
from shared.statuses import TRANSITION_CHUNK, StatusChange, stage_status_events
from shared.topics import Topics


class Staged:
    """A stand-in for the session: keeps the outbox rows `add_events` inserts."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def execute(self, _statement: Any, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)


def change(message_id: int, mailing_id: int, previous: str = "queued") -> StatusChange:
    return StatusChange(
        message_id=message_id,
        mailing_id=mailing_id,
        client_id=message_id + 1000,
        attempt=1,
        previous=previous,
    )


def test_one_event_per_mailing_naming_every_message_in_order() -> None:
    session = Staged()
    changes = [change(1, 10), change(2, 20, "retrying"), change(3, 10), change(4, 10)]
    asyncio.run(
        stage_status_events(
            session,  # type: ignore[arg-type]
            Topics(),
            changes,
            MessageStatus.SENDING,
        )
    )
    assert [row["topic"] for row in session.rows] == ["notifications.message.status"] * 2
    events = [status_event_adapter.validate_python(row["payload"]) for row in session.rows]
    assert all(isinstance(event, MessagesTransitioned) for event in events)
    by_mailing = {
        row["key"]: event.payload for row, event in zip(session.rows, events, strict=True)
    }
    assert set(by_mailing) == {"10", "20"}
    ten = by_mailing["10"]
    assert isinstance(ten, MessagesTransitionedData)
    assert (ten.mailing_id, ten.status, ten.error) == (10, "sending", None)
    assert [(m.message_id, m.client_id, m.previous_status, m.attempt) for m in ten.messages] == [
        (1, 1001, "queued", 1),
        (3, 1003, "queued", 1),
        (4, 1004, "queued", 1),
    ]
    twenty = by_mailing["20"]
    assert isinstance(twenty, MessagesTransitionedData)
    assert [(m.message_id, m.previous_status) for m in twenty.messages] == [(2, "retrying")]


def test_a_large_commit_is_cut_into_events_of_at_most_a_chunk() -> None:
    session = Staged()
    total = TRANSITION_CHUNK * 2 + 3
    asyncio.run(
        stage_status_events(
            session,  # type: ignore[arg-type]
            Topics(),
            [change(i, 10) for i in range(total)],
            MessageStatus.SENT,
            error=None,
        )
    )
    sizes = [len(row["payload"]["payload"]["messages"]) for row in session.rows]
    assert sizes == [TRANSITION_CHUNK, TRANSITION_CHUNK, 3]
    named = [m["message_id"] for row in session.rows for m in row["payload"]["payload"]["messages"]]
    assert named == list(range(total))
    # Distinct events: the reporter's de-duplication by event id must not merge them.
    assert len({row["payload"]["event_id"] for row in session.rows}) == 3


def test_nothing_to_stage_stages_nothing() -> None:
    session = Staged()
    asyncio.run(
        stage_status_events(session, Topics(), [], MessageStatus.SENT)  # type: ignore[arg-type]
    )
    assert session.rows == []


def test_deltas_count_each_message_of_an_event_once_from_its_own_previous_status() -> None:
    moved = MessagesTransitioned(
        payload=MessagesTransitionedData(
            mailing_id=7,
            status="sent",
            messages=[
                MessageTransition(message_id=1, client_id=1, previous_status="sending"),
                MessageTransition(message_id=2, client_id=2, previous_status="sending"),
                MessageTransition(message_id=3, client_id=3, previous_status="failed"),
                MessageTransition(message_id=4, client_id=4, previous_status=None),
            ],
        )
    )
    # The one-message form of earlier releases still counts the same way.
    single = MessageStatusChanged(
        payload=StatusData(
            message_id=5, mailing_id=7, client_id=5, status="sent", previous_status="sending"
        )
    )
    deltas = deltas_of([moved, single])
    assert {key: n for key, n in deltas.items() if n} == {
        (7, "sent"): 5,
        (7, "sending"): -3,
        (7, "failed"): -1,
    }
