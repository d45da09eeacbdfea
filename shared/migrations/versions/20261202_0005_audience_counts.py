"""audience_zone_count, audience_tag_count: live clients counted by zone, code and tag set

The audience preview (`POST /api/v1/notifications/preview/`) reads these instead of
every client and client-tag row. Each row is a signed delta: a client counts +1 under
its (time zone, operator code, sorted tag ids) while it is live, so a change writes -1
under the old key and +1 under the new one. Writers only ever INSERT, so two
transactions changing clients never wait for each other on a counter row; readers sum.
`audience_count_compact()` folds the deltas of each key into one row (the scheduler runs
it every minute); the sums stay the same, so readers see the same numbers before and
after.

Kept by statement-level triggers with transition tables, in the transaction of the
change (set-based: a bulk import adds one aggregated statement per statement it runs):

- client INSERT: +1 under (zone, code, no tags); a new client has no tags yet.
- client UPDATE of zone, code or liveness (`deleted_at`): -1 under the old (zone, code),
  +1 under the new, with the client's current tags (an UPDATE of client never changes
  them).
- client_tag INSERT / DELETE / UPDATE: each live client whose tags changed moves from
  its tags before the statement to its tags after.
- client DELETE (not done by the service, which keeps the row): -1 before the row goes
  (a row trigger: the cascade removes the client's tags before a statement trigger on
  client would run).
- TRUNCATE of either table: everything recounted.

A caller that records its own counts (the bulk import, services/api/imports.py: it
knows every client it creates and moves, so it needs no per-client probes) says so for
its transaction only, `SET LOCAL notifications.audience_counts = 'caller'`: the two
statement triggers then return at once. Before it commits it must fill a temporary table
`audience_delta (timezone text, operator_code smallint, tag_ids bigint[], clients
bigint)` with every change it made (+1 under each live client's new key, -1 under its
old one; tag ids sorted and distinct) and call `audience_count_apply()`, which records
those rows into both tables. Its old keys must be those the clients had when it changed
them: a change another transaction commits in between is counted by that transaction's
triggers and would be undone twice. (The import locks every live client its file names
before its plan reads them: services/api/imports.py, `_LOCK_NAMED`.)

`audience_zone_count` keeps the zone for the per-zone counts; `audience_tag_count` the
same without the zone (a few thousand rows) for the per-tag counts. A client's tags
change under its row lock (the API's PUT/PATCH/DELETE lock the row; the import updates
the clients whose tags it replaces first), so two statements never see the same client
half-changed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# `deltas` (timezone, operator_code, tag_ids, clients) summed per key into both tables.
_RECORD = """
    zone AS (
        INSERT INTO audience_zone_count (timezone, operator_code, tag_ids, clients)
        SELECT timezone, operator_code, tag_ids, sum(clients) FROM deltas
        GROUP BY timezone, operator_code, tag_ids HAVING sum(clients) <> 0
    )
    INSERT INTO audience_tag_count (operator_code, tag_ids, clients)
    SELECT operator_code, tag_ids, sum(clients) FROM deltas
    GROUP BY operator_code, tag_ids HAVING sum(clients) <> 0
"""

# A client's tag ids now, sorted: the key it counts under.
_TAGS_NOW = """
    SELECT coalesce(array_agg(ct.tag_id ORDER BY ct.tag_id), '{}') AS ids
    FROM client_tag ct WHERE ct.client_id = c.id
"""

# The caller records the counts itself (see the module doc): the triggers stand aside.
_CALLER = """
    IF current_setting('notifications.audience_counts', true) = 'caller' THEN
        RETURN NULL;
    END IF;
"""

# A caller's `audience_delta` rows recorded into both tables.
_APPLY = f"""
    WITH deltas AS (
        SELECT timezone, operator_code, tag_ids, clients FROM audience_delta
    ),
    {_RECORD}
"""  # noqa: S608 (constant SQL fragments, no input)

_CLIENT_INSERT = f"""
    WITH deltas AS (
        SELECT timezone, operator_code, '{{}}'::bigint[] AS tag_ids, 1::bigint AS clients
        FROM audience_new WHERE deleted_at IS NULL
    ),
    {_RECORD}
"""  # noqa: S608 (constant SQL fragments, no input)

_CLIENT_UPDATE = f"""
    WITH changed AS (
        SELECT o.timezone AS old_zone, o.operator_code AS old_code,
               o.deleted_at IS NULL AS was_live,
               n.id, n.timezone AS new_zone, n.operator_code AS new_code,
               n.deleted_at IS NULL AS is_live
        FROM audience_old o JOIN audience_new n ON n.id = o.id
        WHERE (o.timezone, o.operator_code, o.deleted_at IS NULL)
              IS DISTINCT FROM (n.timezone, n.operator_code, n.deleted_at IS NULL)
    ),
    deltas AS (
        SELECT d.timezone, d.operator_code, t.ids AS tag_ids, d.clients
        FROM changed ch
        CROSS JOIN LATERAL (
            SELECT ch.old_zone, ch.old_code, -1::bigint WHERE ch.was_live
            UNION ALL
            SELECT ch.new_zone, ch.new_code, 1::bigint WHERE ch.is_live
        ) AS d(timezone, operator_code, clients)
        CROSS JOIN LATERAL (
            SELECT coalesce(array_agg(ct.tag_id ORDER BY ct.tag_id), '{{}}') AS ids
            FROM client_tag ct WHERE ct.client_id = ch.id
        ) AS t
    ),
    {_RECORD}
"""  # noqa: S608 (constant SQL fragments, no input)

# `moved` (client_id, added, removed): the tag ids each client gained and lost in the
# statement. Before it: (now - added) + removed.
_TAGS_MOVED = f"""
    WITH moved AS ({{moved}}),
    keyed AS (
        SELECT c.timezone, c.operator_code, now_.ids AS now_ids,
               (SELECT coalesce(array_agg(DISTINCT x ORDER BY x), '{{{{}}}}')
                FROM unnest(now_.ids || m.removed) AS x
                WHERE x = ANY(m.removed) OR x <> ALL(m.added)) AS before_ids
        FROM moved m
        JOIN client c ON c.id = m.client_id AND c.deleted_at IS NULL
        CROSS JOIN LATERAL ({_TAGS_NOW.replace("{", "{{").replace("}", "}}")}) AS now_
    ),
    deltas AS (
        SELECT timezone, operator_code, before_ids AS tag_ids, -1::bigint AS clients
        FROM keyed WHERE before_ids <> now_ids
        UNION ALL
        SELECT timezone, operator_code, now_ids, 1::bigint
        FROM keyed WHERE before_ids <> now_ids
    ),
    {_RECORD.replace("{", "{{").replace("}", "}}")}
"""  # noqa: S608 (constant SQL fragments, no input)

_ADDED = """
    SELECT client_id, array_agg(tag_id) AS added, '{}'::bigint[] AS removed
    FROM audience_new GROUP BY client_id
"""
_REMOVED = """
    SELECT client_id, '{}'::bigint[] AS added, array_agg(tag_id) AS removed
    FROM audience_old GROUP BY client_id
"""
_REPLACED = """
    SELECT client_id,
           coalesce(array_agg(tag_id) FILTER (WHERE side = 1), '{}') AS added,
           coalesce(array_agg(tag_id) FILTER (WHERE side = -1), '{}') AS removed
    FROM (SELECT client_id, tag_id, 1 AS side FROM audience_new
          UNION ALL SELECT client_id, tag_id, -1 FROM audience_old) AS both_
    GROUP BY client_id
"""

_REBUILD = f"""
    DELETE FROM audience_zone_count;
    DELETE FROM audience_tag_count;
    WITH deltas AS (
        SELECT c.timezone, c.operator_code, t.ids AS tag_ids, 1::bigint AS clients
        FROM client c
        CROSS JOIN LATERAL (
            SELECT coalesce(array_agg(ct.tag_id ORDER BY ct.tag_id), '{{}}') AS ids
            FROM client_tag ct WHERE ct.client_id = c.id
        ) AS t
        WHERE c.deleted_at IS NULL
    ),
    {_RECORD}
"""  # noqa: S608 (constant SQL fragments, no input)

# One compaction at a time (several schedulers may run): the others skip their turn
# rather than wait for, or deadlock with, it. "audcount" as a 64-bit advisory lock key.
COMPACT_LOCK = 0x617564636F756E74

_COMPACT = f"""
    IF NOT pg_try_advisory_xact_lock({COMPACT_LOCK}) THEN
        RETURN;
    END IF;
    -- Each key with more than one row becomes one row with their sum (none if 0). Rows
    -- written after this statement's snapshot are not touched; a concurrent compaction
    -- sums only the rows it deleted itself.
    WITH keys AS (
        SELECT timezone, operator_code, tag_ids FROM audience_zone_count
        GROUP BY timezone, operator_code, tag_ids HAVING count(*) > 1
    ),
    gone AS (
        DELETE FROM audience_zone_count a USING keys k
        WHERE a.timezone = k.timezone AND a.operator_code = k.operator_code
          AND a.tag_ids = k.tag_ids
        RETURNING a.timezone, a.operator_code, a.tag_ids, a.clients
    )
    INSERT INTO audience_zone_count (timezone, operator_code, tag_ids, clients)
    SELECT timezone, operator_code, tag_ids, sum(clients) FROM gone
    GROUP BY timezone, operator_code, tag_ids HAVING sum(clients) <> 0;
    WITH keys AS (
        SELECT operator_code, tag_ids FROM audience_tag_count
        GROUP BY operator_code, tag_ids HAVING count(*) > 1
    ),
    gone AS (
        DELETE FROM audience_tag_count a USING keys k
        WHERE a.operator_code = k.operator_code AND a.tag_ids = k.tag_ids
        RETURNING a.operator_code, a.tag_ids, a.clients
    )
    INSERT INTO audience_tag_count (operator_code, tag_ids, clients)
    SELECT operator_code, tag_ids, sum(clients) FROM gone
    GROUP BY operator_code, tag_ids HAVING sum(clients) <> 0;
"""  # noqa: S608 (a constant lock key, no input)


# A bulk statement's deltas are grouped by client, then by key: room for that in memory
# (the default 4MB spilled 100,000 clients' tags to disk, 1.5x slower).
WORK_MEM = "64MB"


def _function(name: str, body: str, returns: str = "trigger") -> str:
    return (
        f"CREATE FUNCTION {name}() RETURNS {returns} LANGUAGE plpgsql "
        f"SET work_mem = '{WORK_MEM}' AS $fn$\nBEGIN\n{body}\nEND\n$fn$"
    )


def _trigger(name: str, when: str, table: str, function: str, referencing: str = "") -> str:
    return (
        f"CREATE TRIGGER {name} {when} ON {table} {referencing} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )


def upgrade() -> None:
    for table, zone in (("audience_zone_count", True), ("audience_tag_count", False)):
        columns: list[sa.Column[Any]] = [
            sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False)
        ]
        if zone:
            columns.append(sa.Column("timezone", sa.String(length=64), nullable=False))
        op.create_table(
            table,
            *columns,
            sa.Column("operator_code", sa.SmallInteger(), nullable=False),
            sa.Column("tag_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
            sa.Column("clients", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
        )

    op.execute(
        _function(
            "audience_count_client",
            f"""
            {_CALLER}
            IF TG_OP = 'INSERT' THEN {_CLIENT_INSERT};
            ELSIF TG_OP = 'UPDATE' THEN {_CLIENT_UPDATE};
            ELSE PERFORM audience_count_rebuild();
            END IF;
            RETURN NULL;
            """,
        )
    )
    op.execute(
        _function(
            "audience_count_client_tag",
            f"""
            {_CALLER}
            IF TG_OP = 'INSERT' THEN {_TAGS_MOVED.format(moved=_ADDED)};
            ELSIF TG_OP = 'DELETE' THEN {_TAGS_MOVED.format(moved=_REMOVED)};
            ELSIF TG_OP = 'UPDATE' THEN {_TAGS_MOVED.format(moved=_REPLACED)};
            ELSE PERFORM audience_count_rebuild();
            END IF;
            RETURN NULL;
            """,
        )
    )
    op.execute(
        _function(
            "audience_count_client_gone",
            """
            IF OLD.deleted_at IS NULL THEN
                INSERT INTO audience_zone_count (timezone, operator_code, tag_ids, clients)
                SELECT OLD.timezone, OLD.operator_code, t.ids, -1 FROM (
                    SELECT coalesce(array_agg(tag_id ORDER BY tag_id), '{}') AS ids
                    FROM client_tag WHERE client_id = OLD.id) AS t;
                INSERT INTO audience_tag_count (operator_code, tag_ids, clients)
                SELECT OLD.operator_code, t.ids, -1 FROM (
                    SELECT coalesce(array_agg(tag_id ORDER BY tag_id), '{}') AS ids
                    FROM client_tag WHERE client_id = OLD.id) AS t;
            END IF;
            RETURN OLD;
            """,
        )
    )
    op.execute(_function("audience_count_rebuild", _REBUILD + ";\nRETURN;", returns="void"))
    op.execute(_function("audience_count_apply", _APPLY + ";\nRETURN;", returns="void"))
    op.execute(
        _function(
            "audience_count_compact",
            _COMPACT + "\nRETURN;",
            returns="void",
        )
    )

    op.execute(
        _trigger(
            "audience_count_client_insert",
            "AFTER INSERT",
            "client",
            "audience_count_client",
            "REFERENCING NEW TABLE AS audience_new",
        )
    )
    op.execute(
        _trigger(
            "audience_count_client_update",
            "AFTER UPDATE",
            "client",
            "audience_count_client",
            "REFERENCING OLD TABLE AS audience_old NEW TABLE AS audience_new",
        )
    )
    op.execute(
        "CREATE TRIGGER audience_count_client_delete BEFORE DELETE ON client "
        "FOR EACH ROW EXECUTE FUNCTION audience_count_client_gone()"
    )
    op.execute(
        _trigger(
            "audience_count_client_truncate", "AFTER TRUNCATE", "client", "audience_count_client"
        )
    )
    for event, referencing in (
        ("INSERT", "REFERENCING NEW TABLE AS audience_new"),
        ("DELETE", "REFERENCING OLD TABLE AS audience_old"),
        ("UPDATE", "REFERENCING OLD TABLE AS audience_old NEW TABLE AS audience_new"),
        ("TRUNCATE", ""),
    ):
        op.execute(
            _trigger(
                f"audience_count_client_tag_{event.lower()}",
                f"AFTER {event}",
                "client_tag",
                "audience_count_client_tag",
                referencing,
            )
        )
    op.execute("SELECT audience_count_rebuild()")


def downgrade() -> None:
    for name in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER audience_count_client_{name} ON client")
        op.execute(f"DROP TRIGGER audience_count_client_tag_{name} ON client_tag")
    for function in (
        "audience_count_client",
        "audience_count_client_tag",
        "audience_count_client_gone",
        "audience_count_compact",
        "audience_count_rebuild",
        "audience_count_apply",
    ):
        op.execute(f"DROP FUNCTION {function}()")
    op.drop_table("audience_tag_count")
    op.drop_table("audience_zone_count")
