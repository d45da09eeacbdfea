"""Pruning `outbox` and `processed_event`: index range scans, bounded batches, and one
process at a time (the others skip)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.reporter.counters import _PRUNE_LOCK, PRUNE_STATEMENT, Counters
from shared.db import engine_of, prune_in_batches
from shared.outbox import _PURGE_LOCK, PURGE_STATEMENT, OutboxRelay

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings

RECENT = 20_000
OLD = 250


def _libpq(settings: Settings) -> str:
    url = make_url(settings.database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _scans(plan: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """(node type, relation, index) of every node of an EXPLAIN (FORMAT JSON) plan."""
    nodes = [(plan["Node Type"], plan.get("Relation Name"), plan.get("Index Name"))]
    for child in plan.get("Plans", []):
        nodes += _scans(child)
    return nodes


def _explain(settings: Settings, statement: str, params: dict[str, Any]) -> list[Any]:
    # Literal values, as the prune sends them; ANALYZE first, as autovacuum would.
    sql = statement
    for name, value in params.items():
        sql = sql.replace(f":{name}", repr(value) if not isinstance(value, str) else f"'{value}'")
    with psycopg.connect(_libpq(settings), autocommit=True) as conn:
        conn.execute("ANALYZE outbox")
        conn.execute("ANALYZE processed_event")
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    scans = _scans(plan[0]["Plan"])
    print(f"EXPLAIN {' '.join(statement.split())}\n" + json.dumps(plan[0]["Plan"], indent=1))
    return scans


async def _fill_outbox(sessions: async_sessionmaker[AsyncSession], topic: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO outbox (topic, key, payload, published_at) "
                "SELECT :topic, n::text, '{}'::jsonb, "
                "  CASE WHEN n <= :old THEN now() - interval '3 days' ELSE now() END "
                "FROM generate_series(1, :total) n"
            ).bindparams(topic=topic, old=OLD, total=OLD + RECENT)
        )
        await session.execute(
            text("INSERT INTO outbox (topic, key, payload) VALUES (:topic, 'x', '{}')").bindparams(
                topic=topic
            )
        )


async def _outbox_left(sessions: async_sessionmaker[AsyncSession], topic: str) -> dict[str, int]:
    async with sessions() as session:
        row = (
            await session.execute(
                text(
                    "SELECT count(*) FILTER (WHERE published_at < now() - interval '1 day'), "
                    "count(*) FILTER (WHERE published_at >= now() - interval '1 day'), "
                    "count(*) FILTER (WHERE published_at IS NULL) FROM outbox WHERE topic = :t"
                ).bindparams(t=topic)
            )
        ).one()
    return {"old": row[0], "recent": row[1], "unpublished": row[2]}


async def _clear_outbox(sessions: async_sessionmaker[AsyncSession], topic: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(text("DELETE FROM outbox WHERE topic = :t").bindparams(t=topic))


async def test_outbox_purge_is_an_index_range_scan_in_batches(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    topic = f"prune-test-{uuid.uuid4().hex[:8]}"
    await _fill_outbox(sessions, topic)
    try:
        scans = _explain(settings, PURGE_STATEMENT, {"keep_s": 86400.0, "batch": 5000})
        on_outbox = [(node, index) for node, rel, index in scans if rel == "outbox"]
        assert ("Seq Scan", None) not in on_outbox, scans
        # An Index Scan or a Bitmap Index Scan (which names no relation): either is a
        # range scan of the index; which one depends on the table's statistics.
        assert "ix_outbox_published_at" in {index for _, _, index in scans}, scans

        deleted = await prune_in_batches(
            engine_of(sessions),
            lock=_PURGE_LOCK,
            statement=text(PURGE_STATEMENT),
            params={"keep_s": 86400.0},
            batch_size=100,  # three batches: 100, 100, 50
        )
        assert deleted is not None
        assert deleted >= OLD
        assert await _outbox_left(sessions, topic) == {
            "old": 0,
            "recent": RECENT,
            "unpublished": 1,
        }
    finally:
        await _clear_outbox(sessions, topic)


async def test_processed_event_prune_is_an_index_range_scan_in_batches(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    consumer = f"test-{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO processed_event (consumer, event_id, processed_at) "
                "SELECT :consumer, gen_random_uuid(), "
                "  CASE WHEN n <= :old THEN now() - interval '10 days' ELSE now() END "
                "FROM generate_series(1, :total) n"
            ).bindparams(consumer=consumer, old=OLD, total=OLD + RECENT)
        )
    try:
        params = {"consumer": consumer, "keep_s": 7 * 86400.0}
        scans = _explain(settings, PRUNE_STATEMENT, {**params, "batch": 5000})
        on_table = [(node, index) for node, rel, index in scans if rel == "processed_event"]
        assert ("Seq Scan", None) not in on_table, scans
        assert "ix_processed_event_consumer_processed_at" in {i for _, _, i in scans}, scans

        deleted = await prune_in_batches(
            engine_of(sessions),
            lock=_PRUNE_LOCK,
            statement=text(PRUNE_STATEMENT),
            params=params,
            batch_size=100,
        )
        assert deleted == OLD
        async with sessions() as session:
            left = await session.scalar(
                text("SELECT count(*) FROM processed_event WHERE consumer = :c").bindparams(
                    c=consumer
                )
            )
        assert left == RECENT
        # The reporter's own prune goes through the same path (its consumer's rows).
        assert await Counters(sessions).prune(timedelta(days=7)) is not None
    finally:
        async with sessions() as session, session.begin():
            await session.execute(
                text("DELETE FROM processed_event WHERE consumer = :c").bindparams(c=consumer)
            )


async def test_one_process_prunes_at_a_time_the_others_skip(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    topic = f"prune-test-{uuid.uuid4().hex[:8]}"
    await _fill_outbox(sessions, topic)
    relay = OutboxRelay(sessions, None, topics=[topic], service="test")  # type: ignore[arg-type]
    try:
        # Another process is pruning: it holds the lock.
        with psycopg.connect(_libpq(settings), autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (_PURGE_LOCK,))
            assert await relay.purge_published() is None
            assert (await _outbox_left(sessions, topic))["old"] == OLD
            other.execute("SELECT pg_advisory_unlock(%s)", (_PURGE_LOCK,))
        assert (await relay.purge_published() or 0) >= OLD
        assert await _outbox_left(sessions, topic) == {
            "old": 0,
            "recent": RECENT,
            "unpublished": 1,
        }
    finally:
        await _clear_outbox(sessions, topic)
