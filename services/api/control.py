"""An operator's control of a running mailing: pause, resume, cancel, replay failures.

The state lives on the mailing row and travels as a `mailing.state_changed` event
through the outbox. What each service does with it (docs/architecture.md, "Mailing
states"): the scheduler fires no message of a paused or cancelled mailing and cancels
the pending messages of a cancelled one; the dispatcher's claim refuses (gives back,
no request, no attempt counted) a command of a paused mailing and cancels one of a
cancelled mailing. Requests already in flight finish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from services.api.errors import Conflict
from services.api.mailings import get_mailing, lock_mailing
from shared.events import MailingStateChanged, MailingStateData
from shared.logging import bind_entities, get_logger
from shared.models import MailingState, Message
from shared.outbox import add_event
from shared.replay import BY_OPERATOR, replay_failed

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from services.api.schemas import MailingOut
    from shared.topics import Topics

log = get_logger(__name__)

Action = Literal["pause", "resume", "cancel"]
S = MailingState
EVENT_NAMES: dict[Action, str] = {
    "pause": "mailing_paused",
    "resume": "mailing_resumed",
    "cancel": "mailing_cancelled",
}


def next_state(action: Action, state: str, *, activated: bool) -> MailingState:
    """The state `action` leads to from `state`, or `Conflict` naming why it cannot.

    Repeating an action is harmless (pause of a paused mailing, resume of a running
    one, cancel of a cancelled one: nothing changes). A finished mailing has nothing
    left to control; a cancelled one never sends again."""
    current = MailingState(state)
    if current == S.FINISHED:
        raise Conflict("state", f"cannot {action} a finished mailing: its stop time has passed")
    if action == "cancel":
        return S.CANCELLED
    if current == S.CANCELLED:
        raise Conflict("state", f"cannot {action} a cancelled mailing: it never sends again")
    if action == "pause":
        return S.PAUSED
    if current == S.PAUSED:
        # Back where it was: running, or waiting for its start if it never activated.
        return S.RUNNING if activated else S.SCHEDULED
    return current  # resume of a scheduled or running mailing: nothing to do


async def change_state(
    session: AsyncSession, topics: Topics, mailing_id: int, action: Action
) -> MailingOut:
    """Apply `action` to the mailing, with its event in the outbox; 404 / 409 otherwise."""
    mailing = await lock_mailing(session, mailing_id)
    bind_entities(mailing_id=mailing_id)
    previous = mailing.state
    state = next_state(action, previous, activated=mailing.activated_at is not None)
    if state != previous:
        mailing.state = state
        await session.flush()
        add_event(
            session,
            topics.mailing_events,
            MailingStateChanged(
                payload=MailingStateData(
                    id=mailing.id,
                    version=mailing.version,
                    state=state.value,
                    previous_state=previous,
                )
            ),
        )
        log.info(EVENT_NAMES[action], state=state.value, previous_state=previous)
    return await get_mailing(session, mailing_id)


async def replay(session: AsyncSession, topics: Topics, mailing_id: int, reason: str | None) -> int:
    """Replay the mailing's failed messages (only those failed with `reason` if given)
    by the rule `make replay-dlq` follows (`shared.replay`); return how many."""
    await lock_mailing(session, mailing_id)
    bind_entities(mailing_id=mailing_id)
    which = Message.mailing_id == mailing_id
    if reason is not None:
        which = which & (Message.last_error == reason)
    replayed = await replay_failed(session, topics, which, error=BY_OPERATOR)
    log.info("messages_replayed", count=replayed, reason=reason)
    return replayed
