"""Replay the dead-letter topic: `python -m services.dispatcher.replay_dlq`.

Reads `message.send.dlq` with its own consumer group (so each record is replayed once;
`--from-beginning` re-reads everything) and puts every message that is still `failed`
back to `scheduled`, due now (a compare-and-set, with its status event), so it goes
through the normal path again: window, stop time, claim, retries. Messages that changed
since (sent, deleted, mailing past its stop time or cancelled) are left alone and
counted. The rule is `shared.replay`, shared with the API's replay endpoint.

Options: `--mailing ID` (only that mailing's records), `--dry-run` (count, change
nothing, commit no offset), `--from-beginning`, `--idle-s` (stop after this long with
no new record, default 3). Settings come from the environment like every service.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from sqlalchemy import BigInteger, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY

from shared.db import create_engine, create_session_factory
from shared.events import SendMessage
from shared.kafka import connection_options, create_broker, topics_from
from shared.logging import configure_logging, get_logger
from shared.models import Message
from shared.outbox import OutboxRelay
from shared.replay import FROM_DLQ, replay_failed
from shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Collection

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.topics import Topics

log = get_logger(__name__)


async def replay(
    mailing: int | None, dry_run: bool, from_beginning: bool, idle_s: float
) -> dict[str, int]:
    settings = load_settings()
    topics = topics_from(settings)
    group = topics.group("dlq-replay") if not from_beginning else f"dlq-{uuid.uuid4().hex}"
    consumer = AIOKafkaConsumer(
        topics.message_send_dlq,
        **connection_options(settings),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    engine = create_engine(settings, application_name="dlq-replay")
    sessions = create_session_factory(engine)
    counts = {"records": 0, "selected": 0, "replayed": 0, "skipped": 0, "unreadable": 0}
    await consumer.start()
    try:
        ids: set[int] = set()
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=1000)
            if not batch:
                break
            for records in batch.values():
                for record in records:
                    counts["records"] += 1
                    try:
                        command = SendMessage.model_validate_json(record.value).payload
                    except ValidationError:
                        counts["unreadable"] += 1
                        continue
                    if mailing is None or command.mailing_id == mailing:
                        ids.add(command.message_id)
        counts["selected"] = len(ids)
        if ids and not dry_run:
            replayed = await requeue_failed(sessions, topics, ids)
            counts["replayed"] = replayed
            counts["skipped"] = len(ids) - replayed
        if not dry_run:
            await consumer.commit()
            # Publish the status events now rather than waiting for a service's relay.
            broker = create_broker(settings, client_id="dlq-replay")
            await broker.start()
            try:
                relay = OutboxRelay(sessions, broker, topics=topics.all(), service="dlq-replay")
                while await relay.publish_once():
                    pass
            finally:
                await broker.stop()
    finally:
        await consumer.stop()
        await engine.dispose()
    log.info("dlq_replayed", dry_run=dry_run, mailing_id=mailing, **counts)
    return counts


async def requeue_failed(
    sessions: async_sessionmaker[AsyncSession], topics: Topics, ids: Collection[int]
) -> int:
    """Replay the messages of `ids` by the shared rule (`shared.replay`); return how
    many. The ids travel as one array parameter (`= ANY(:ids)`)."""
    chosen = any_(bindparam("replay_ids", sorted(ids), type_=ARRAY(BigInteger)))
    async with sessions() as session, session.begin():
        return await replay_failed(session, topics, Message.id == chosen, error=FROM_DLQ)


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay the dead-letter topic.")
    parser.add_argument("--mailing", type=int, default=None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--idle-s", type=float, default=3.0)
    args = parser.parse_args()
    configure_logging(load_settings(), "dlq-replay")
    counts = asyncio.run(replay(args.mailing, args.dry_run, args.from_beginning, args.idle_s))
    print(" ".join(f"{key}={value}" for key, value in counts.items()))


if __name__ == "__main__":
    main()
