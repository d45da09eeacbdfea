"""Publishing send commands to `message.send`: the scheduler's one way to do it.

Firing due messages and re-driving orphaned ones both publish a `SendMessage` per
message, keyed by message id, enqueue them all and wait for every acknowledgement,
then log one line per message with its ids (the hot path: explicit fields, no context
churn), so a message's story shows which of the two sent its command.
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
    for message_id, mailing_id, client_id, attempts in rows:
        log.info(
            event,
            message_id=message_id,
            mailing_id=mailing_id,
            client_id=client_id,
            attempt=attempts,
        )
