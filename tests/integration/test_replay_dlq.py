"""`replay_dlq` with more dead letters than PostgreSQL takes parameters in a statement."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text

from services.dispatcher.replay_dlq import requeue_failed
from shared.kafka import topics_from

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings

# Over 65,535: one `IN (...)` parameter per id fails ("too many bind parameters").
MESSAGES = 70_000


async def test_more_than_65535_failed_messages_are_replayed(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session, session.begin():
        mailing_id = await session.scalar(
            text(
                "INSERT INTO mailing (start_at, stop_at, text, state) "
                "VALUES (now() - interval '1 hour', now() + interval '1 day', 'dlq', 'finished') "
                "RETURNING id"
            )
        )
        # Deleted clients: no other test's audience ever sees them.
        await session.execute(
            text(
                "WITH c AS ("
                "  INSERT INTO client (phone, deleted_at) "
                "  SELECT '79' || lpad(n::text, 9, '0'), now() FROM generate_series(1, :n) n"
                "  RETURNING id) "
                "INSERT INTO message (mailing_id, client_id, status, attempts) "
                "SELECT :mailing, c.id, 'failed', 3 FROM c"
            ).bindparams(mailing=mailing_id, n=MESSAGES)
        )
        rows = (
            await session.execute(
                text("SELECT id, client_id FROM message WHERE mailing_id = :m").bindparams(
                    m=mailing_id
                )
            )
        ).all()
        ids = [row.id for row in rows]
        # One that is no longer failed is left alone.
        await session.execute(
            text("UPDATE message SET status = 'sent' WHERE id = :id").bindparams(id=ids[0])
        )
    try:
        assert len(ids) == MESSAGES
        replayed = await requeue_failed(sessions, topics_from(settings), {*ids, 10**15})
        assert replayed == MESSAGES - 1
        async with sessions() as session:
            counts: dict[str, int] = dict(
                (
                    await session.execute(
                        text(
                            "SELECT status, count(*) FILTER (WHERE due_at <= now()) "
                            "FROM message WHERE mailing_id = :m GROUP BY status"
                        ).bindparams(m=mailing_id)
                    )
                ).all()
            )
            named = await session.scalar(
                text(
                    "SELECT count(DISTINCT (m ->> 'message_id')::bigint) "
                    "FROM outbox, jsonb_array_elements(payload -> 'payload' -> 'messages') AS m "
                    "WHERE topic = :t AND (payload -> 'payload' ->> 'mailing_id')::bigint = :m "
                    "AND m ->> 'previous_status' = 'failed'"
                ).bindparams(t=topics_from(settings).message_status, m=mailing_id)
            )
        assert counts == {"scheduled": MESSAGES - 1, "sent": 0}
        # Each replayed message named once in a status event, so the counters follow.
        assert named == MESSAGES - 1
    finally:
        async with sessions() as session, session.begin():
            await session.execute(
                text("DELETE FROM outbox WHERE topic = :t").bindparams(
                    t=topics_from(settings).message_status
                )
            )
            await session.execute(
                text("DELETE FROM mailing WHERE id = :m").bindparams(m=mailing_id)
            )
            # The (deleted) clients stay: removing 70,000 rows that `message` references
            # checks the foreign key row by row.
