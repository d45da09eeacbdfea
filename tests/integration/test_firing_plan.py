"""The firing statement's plan right after a big audience is expanded: the table's
statistics are stale then (autovacuum's ANALYZE comes up to a minute later), and
PostgreSQL, expecting a few due rows, read and sorted every due row for each batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from sqlalchemy.dialects import postgresql

from services.scheduler.firing import INDEX_ORDER, due_claim
from tests.support.databases import libpq, scratch_database

if TYPE_CHECKING:
    from tests.support.infra import Infra

MESSAGES = 50_000


def test_firing_walks_the_due_index_whatever_the_statistics_say(infra: Infra) -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    statement = str(due_claim(500).compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    with (
        scratch_database(infra.database_url, "firing_plan") as url,
        psycopg.connect(libpq(url), autocommit=True) as conn,
    ):
        conn.execute("ALTER TABLE message SET (autovacuum_enabled = false)")
        conn.execute(
            "INSERT INTO client (phone, timezone) SELECT '7' || (9000000000 + g)::text, 'UTC' "
            "FROM generate_series(1, %s) AS g",
            (MESSAGES,),
        )
        conn.execute(
            "INSERT INTO mailing (start_at, stop_at, text, state) "
            "VALUES (now(), now() + interval '1 day', 'big', 'running')"
        )
        # An expanded audience, every message due, the table never analyzed.
        conn.execute(
            "INSERT INTO message (mailing_id, client_id, status, due_at) "
            "SELECT (SELECT max(id) FROM mailing), id, 'scheduled', now() - interval '1 second' "
            "FROM client"
        )

        def plan(*settings: str) -> str:
            with conn.transaction():
                for setting in settings:
                    conn.execute(setting)
                return "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement))

        # What the firing transaction runs: the due index, in its order, no sort.
        fired = plan(str(INDEX_ORDER))
        assert "ix_message_due_scheduled" in fired, fired
        assert "Sort" not in fired, fired
        # Without the setting, the same statistics led PostgreSQL to sort every due row.
        assert "Sort" in plan(), plan()

        with conn.transaction():
            conn.execute(str(INDEX_ORDER))
            moved = conn.execute(statement).fetchall()
        assert len(moved) == 500
        assert conn.execute("SELECT count(*) FROM message WHERE status = 'queued'").fetchone() == (
            500,
        )
