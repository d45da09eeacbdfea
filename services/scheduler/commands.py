"""Publishing send commands to `message.send`: the scheduler's one way to do it.

Firing due messages and re-driving orphaned ones both publish a `SendMessage` per
message, keyed by message id, enqueue them all and wait for every acknowledgement,
then log one line per mailing naming its messages (ids in parallel lists, as the
reporter's status lines), so a message's story shows which of the two sent its command.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from shared.events import SendData, SendMessage
from shared.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from faststream.kafka import KafkaBroker

log = get_logger(__name__)


async def publish_send_commands(
    broker: KafkaBroker, topic: str, rows: Sequence[Any], *, event: str
) -> None:
    """rows: (message_id, mailing_id, client_id, attempts); `event` names the log line."""
    futures = []
    for message_id, mailing_id, client_id, attempts in rows:
        command = SendMessage(
            payload=SendData(
                message_id=message_id,
                mailing_id=mailing_id,
                client_id=client_id,
                attempt=attempts,
            )
        )
        futures.append(
            await broker.publish(
                command.to_record(), topic, key=command.key().encode(), no_confirm=True
            )
        )
    await asyncio.gather(*futures)
    # One line per mailing, its messages in parallel lists (`make logs MESSAGE=` finds
    # the line by any of them and shows that entry).
    by_mailing: dict[int, list[tuple[int, int, int]]] = {}
    for message_id, mailing_id, client_id, attempts in rows:
        by_mailing.setdefault(mailing_id, []).append((message_id, client_id, attempts))
    for mailing_id, sent in by_mailing.items():
        log.info(
            event,
            mailing_id=mailing_id,
            count=len(sent),
            message_ids=[message_id for message_id, _, _ in sent],
            client_ids=[client_id for _, client_id, _ in sent],
            attempts=[attempts for _, _, attempts in sent],
        )
