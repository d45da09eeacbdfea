"""Bulk import of clients: rows streamed into a staging table with COPY, merged in SQL.

One transaction: the valid rows of the file (`import_file.rows`) are copied into a
temporary table as they arrive, a bounded batch at a time; when the file has been read
to its end they are merged into `client`, `tag` and `client_tag` with a few
statements, whatever the file's size: one plan decides what becomes of each row, then
plain INSERTs write it (their ON CONFLICT twins only when another transaction took a
telephone meanwhile). A file that cannot be read at all raises before
the commit: nothing is written. Rows are checked by the same model as POST
/api/v1/clients/ (`ClientIn`); the database's rules (one live client per telephone) are
the same too.

- `create` (default): a telephone that belongs to a live client is a rejected row.
- `upsert`: such a row replaces that client's time zone and tags, as PUT does;
  `unchanged` when both are already so.
- A telephone given twice in the file: the first line counts, the later ones are
  rejected.

Events: one `clients.imported` per `EVENT_BATCH` changed clients (ids created, updated,
and those whose time zone changed, which the scheduler re-plans as it does after a PUT),
written to the outbox in SQL with the merge, so memory stays flat however many
clients change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from psycopg.errors import UniqueViolation
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.api.import_file import Numbered, Rejected, row_batches
from shared.events import CLIENTS_IMPORTED
from shared.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from sqlalchemy.engine import CursorResult, Result
    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.topics import Topics

log = get_logger(__name__)

MODES = ("create", "upsert")
# Valid rows buffered (at least) before they are written to the COPY stream.
COPY_BATCH = 5000
# Changed clients named by one `clients.imported` event.
EVENT_BATCH = 5000
# Rejected rows listed in the answer; `rejected_count` counts them all.
MAX_LISTED = 1000
# Tag names cannot hold control characters (`ClientIn`): one separates them in COPY.
_TAGS_SEP = "\x1f"

_STAGE = """
CREATE TEMPORARY TABLE import_row (
    line bigint NOT NULL, phone text NOT NULL, timezone text NOT NULL, tags text NOT NULL
) ON COMMIT DROP
"""
_COPY = "COPY import_row (line, phone, timezone, tags) FROM STDIN"
# Sorts and hashes of a million rows fit in memory instead of spilling to disk; for
# this transaction only.
_WORK_MEM = "SET LOCAL work_mem = '64MB'"
# The audience counts (migration 0005): this transaction records its own changes in one
# statement (_DELTAS) instead of the per-statement triggers probing each moved client.
_CALLER_COUNTS = "SET LOCAL notifications.audience_counts = 'caller'"
# The first line of each telephone, the live client that has it, and what will become
# of it, decided once: `outcome` created / taken (mode=create) / updated / unchanged,
# `tags_changed`, and the id of each client to create, drawn from the sequence in line
# order (the rows are then inserted as they are, nothing read back). New columns of
# `client` go in here and in _INSERT / _UPDATE.
# Upsert: every live client the file names is locked first (in id order, so two
# imports never deadlock), so the zone and tags the plan then reads stay theirs until
# commit: the import's own count deltas (_DELTAS) start from the keys really counted.
_LOCK_NAMED = """
SELECT count(*) FROM (
    SELECT c.id FROM client c JOIN import_row r ON r.phone = c.phone
    WHERE c.deleted_at IS NULL ORDER BY c.id FOR UPDATE OF c
) locked
"""
_PLAN = """
CREATE TEMPORARY TABLE import_plan ON COMMIT DROP AS
SELECT d.line, d.phone, d.timezone, d.tags, d.old_timezone, d.old_tag_ids, d.tags_changed,
    CASE WHEN d.old_id IS NULL THEN nextval('client_id_seq') ELSE d.old_id END AS client_id,
    CASE WHEN d.old_id IS NULL THEN 'created'
         WHEN NOT CAST(:upsert AS boolean) THEN 'taken'
         WHEN d.tags_changed OR d.timezone <> d.old_timezone THEN 'updated'
         ELSE 'unchanged' END AS outcome
FROM (
    SELECT f.*, old.ids AS old_tag_ids, f.old_id IS NULL OR (
        CAST(:upsert AS boolean)
        AND NOT (old.names @> f.tags AND f.tags @> old.names)
    ) AS tags_changed
    FROM (
        SELECT DISTINCT ON (r.phone)
            r.line, r.phone, r.timezone,
            CASE WHEN r.tags = '' THEN ARRAY[]::text[]
                 ELSE string_to_array(r.tags, E'\\x1f') END AS tags,
            c.id AS old_id, c.timezone AS old_timezone
        FROM import_row r
        LEFT JOIN client c ON c.phone = r.phone AND c.deleted_at IS NULL
        ORDER BY r.phone, r.line
    ) f
    LEFT JOIN LATERAL (
        SELECT coalesce(array_agg(t.name::text), ARRAY[]::text[]) AS names,
               coalesce(array_agg(t.id ORDER BY t.id), ARRAY[]::bigint[]) AS ids
        FROM client_tag ct JOIN tag t ON t.id = ct.tag_id
        WHERE ct.client_id = f.old_id AND CAST(:upsert AS boolean)
    ) old ON true
) d
ORDER BY d.line
"""
_COUNTS = """
SELECT count(*) FILTER (WHERE outcome = 'created') AS created,
       count(*) FILTER (WHERE outcome = 'taken') AS taken,
       count(*) FILTER (WHERE outcome = 'updated') AS updated,
       count(*) FILTER (WHERE outcome = 'unchanged') AS unchanged,
       count(*) AS planned
FROM import_plan
"""
# The later lines of a telephone the file gives twice (looked for only when the plan
# has fewer rows than were staged).
_REPEATED = """
SELECT r.line, r.phone, p.line AS first
FROM import_row r JOIN import_plan p ON p.phone = r.phone AND p.line <> r.line
ORDER BY r.line
LIMIT :n
"""
_INSERT = """
INSERT INTO client (id, phone, timezone)
SELECT client_id, phone, timezone FROM import_plan WHERE outcome = 'created'
"""
_INSERT_SKIPPING = _INSERT + "ON CONFLICT (phone) WHERE deleted_at IS NULL DO NOTHING"
# Telephones a client was created with by someone else since the plan was made.
_RACED = """
UPDATE import_plan p SET outcome = 'taken', client_id = NULL, tags_changed = false
WHERE p.outcome = 'created' AND NOT EXISTS (SELECT 1 FROM client c WHERE c.id = p.client_id)
"""
_UPDATE = """
UPDATE client c SET timezone = p.timezone, updated_at = now()
FROM import_plan p
WHERE p.outcome = 'updated' AND c.id = p.client_id
"""
_NEW_TAGS = """
INSERT INTO tag (name)
SELECT DISTINCT n.tag_name FROM import_plan, unnest(tags) AS n(tag_name)
WHERE tags_changed AND outcome IN ('created', 'updated')
ORDER BY n.tag_name
ON CONFLICT (name) DO NOTHING
"""
_DROP_TAGS = """
DELETE FROM client_tag ct USING import_plan p
WHERE p.outcome = 'updated' AND p.tags_changed AND ct.client_id = p.client_id
"""
_ADD_TAGS = """
INSERT INTO client_tag (client_id, tag_id)
SELECT p.client_id, t.id
FROM import_plan p, unnest(p.tags) AS n(tag_name), tag t
WHERE p.tags_changed AND p.outcome IN ('created', 'updated') AND t.name = n.tag_name
"""
_ADD_TAGS_SKIPPING = _ADD_TAGS + "ON CONFLICT DO NOTHING"
# What the import changed in the audience counts, for `audience_count_apply()`: +1 under
# each created or updated client's new (zone, operator code as `client` computes it,
# sorted tag ids), -1 under each updated client's old one. The old keys come from the
# plan, read under the row locks _LOCK_NAMED took, so no other write changed those
# clients in between; raced rows are no longer 'created'.
_DELTAS = """
CREATE TEMPORARY TABLE audience_delta ON COMMIT DROP AS
SELECT d.timezone, CAST(substr(p.phone, 2, 3) AS smallint) AS operator_code, d.tag_ids,
       d.clients
FROM import_plan p
CROSS JOIN LATERAL (
    SELECT coalesce(array_agg(DISTINCT t.id ORDER BY t.id), ARRAY[]::bigint[]) AS ids
    FROM unnest(p.tags) AS n(tag_name) JOIN tag t ON t.name = n.tag_name
    WHERE p.tags_changed
) new_
CROSS JOIN LATERAL (
    SELECT CAST(p.timezone AS text),
           CASE WHEN p.tags_changed THEN new_.ids ELSE p.old_tag_ids END, 1::bigint
    UNION ALL
    SELECT CAST(p.old_timezone AS text), p.old_tag_ids, -1::bigint
    WHERE p.outcome = 'updated'
) AS d(timezone, tag_ids, clients)
WHERE p.outcome IN ('created', 'updated')
"""
_APPLY_COUNTS = "SELECT audience_count_apply()"
_TAKEN_ROWS = """
SELECT line, phone, client_id FROM import_plan WHERE outcome = 'taken' ORDER BY line LIMIT :n
"""
# One `clients.imported` envelope (shared.events.ClientsImported) per EVENT_BATCH
# changed clients, in client-id order.
_EVENTS = """
INSERT INTO outbox (topic, key, payload)
SELECT :topic, min(client_id)::text, jsonb_build_object(
    'event_id', gen_random_uuid(),
    'type', CAST(:kind AS text),
    'occurred_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'schema_version', 1,
    'payload', jsonb_build_object(
        'created', coalesce(array_agg(client_id ORDER BY client_id)
                            FILTER (WHERE outcome = 'created'), ARRAY[]::bigint[]),
        'updated', coalesce(array_agg(client_id ORDER BY client_id)
                            FILTER (WHERE outcome = 'updated'), ARRAY[]::bigint[]),
        'timezone_changed', coalesce(array_agg(client_id ORDER BY client_id)
                            FILTER (WHERE outcome = 'updated' AND timezone <> old_timezone),
                            ARRAY[]::bigint[])
    )
)
FROM (
    SELECT client_id, outcome, timezone, old_timezone,
           (row_number() OVER (ORDER BY client_id) - 1) / :batch AS chunk
    FROM import_plan WHERE outcome IN ('created', 'updated')
) changed
GROUP BY chunk
"""


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    rejected_count: int = 0

    def reject(self, row: Rejected) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_LISTED:
            self.rejected.append(row)


def _copy_line(row: Numbered) -> str:
    client = row.client
    tags = _TAGS_SEP.join(client.tag).replace("\\", "\\\\")
    return f"{row.line}\t{client.telephone}\t{client.timezone}\t{tags}\n"


async def _stage(
    session: AsyncSession, kind: str, chunks: AsyncIterable[bytes]
) -> tuple[ImportResult, int]:
    """Copy the file's valid rows into `import_row` (how many: the int); the rejected
    ones into the result."""
    result = ImportResult()
    staged = 0
    await session.execute(text(_STAGE))
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    async with raw.cursor() as cursor, cursor.copy(_COPY) as copy:
        batch: list[str] = []
        async for rows in row_batches(kind, chunks):
            for row in rows:
                if isinstance(row, Rejected):
                    result.reject(row)
                else:
                    batch.append(_copy_line(row))
            if len(batch) >= COPY_BATCH:
                staged += len(batch)
                await copy.write("".join(batch).encode())
                batch.clear()
        if batch:
            staged += len(batch)
            await copy.write("".join(batch).encode())
    return result, staged


async def _insert(session: AsyncSession, plain: str, skipping: str) -> int:
    """Rows inserted by `plain`; when another transaction took one of its keys meanwhile
    (rare), by `skipping`, its ON CONFLICT DO NOTHING twin. The plain INSERT is the
    cheaper one by far: no speculative insertion for each of a million rows."""
    try:
        async with session.begin_nested():
            return _count(await session.execute(text(plain)))
    except IntegrityError as exc:
        if not isinstance(exc.orig, UniqueViolation):
            raise
    return _count(await session.execute(text(skipping)))


def _count(result: Result[Any]) -> int:
    return int(cast("CursorResult[Any]", result).rowcount)


async def import_clients(
    session: AsyncSession, topics: Topics, kind: str, mode: str, chunks: AsyncIterable[bytes]
) -> ImportResult:
    """Import a CSV or NDJSON stream in the caller's transaction (see the module doc)."""
    await session.execute(text(_WORK_MEM))
    await session.execute(text(_CALLER_COUNTS))
    result, staged = await _stage(session, kind, chunks)
    if mode == "upsert":
        await session.execute(text(_LOCK_NAMED))
    await session.execute(text(_PLAN), {"upsert": mode == "upsert"})
    await session.execute(text("ANALYZE import_plan"))
    counts = (await session.execute(text(_COUNTS))).one()
    created, taken = int(counts.created), int(counts.taken)
    repeated = staged - int(counts.planned)
    if repeated:
        for line, phone, first in await session.execute(text(_REPEATED), {"n": MAX_LISTED}):
            result.reject(Rejected(line, "telephone", f"telephone {phone} is on line {first} too"))
        result.rejected_count += repeated - min(repeated, MAX_LISTED)
    inserted = await _insert(session, _INSERT, _INSERT_SKIPPING)
    if inserted < created:
        await session.execute(text(_RACED))
        taken += created - inserted
        created = inserted
    if mode == "upsert":
        await session.execute(text(_UPDATE))
        await session.execute(text(_DROP_TAGS))
    await session.execute(text(_NEW_TAGS))
    await _insert(session, _ADD_TAGS, _ADD_TAGS_SKIPPING)
    await session.execute(text(_DELTAS))
    await session.execute(text(_APPLY_COUNTS))
    result.created = created
    result.updated = int(counts.updated)
    result.unchanged = int(counts.unchanged)
    if taken:
        listed = await session.execute(text(_TAKEN_ROWS), {"n": MAX_LISTED})
        for line, phone, client_id in listed:
            owner = f" (client {client_id})" if client_id else ""
            result.reject(
                Rejected(line, "telephone", f"telephone {phone} belongs to a client{owner}")
            )
        result.rejected_count += taken - min(taken, MAX_LISTED)
    result.rejected.sort(key=lambda row: row.line)
    del result.rejected[MAX_LISTED:]
    await session.execute(
        text(_EVENTS),
        {"topic": topics.client_events, "batch": EVENT_BATCH, "kind": CLIENTS_IMPORTED},
    )
    log.info(
        "clients_imported",
        mode=mode,
        kind=kind,
        created=result.created,
        updated=result.updated,
        unchanged=result.unchanged,
        rejected=result.rejected_count,
    )
    return result
