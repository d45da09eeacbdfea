"""Bulk import of clients: rows streamed into a staging table with COPY, merged in SQL.

One transaction: the valid rows of the file (`import_file.rows`) are copied into a
temporary table as they arrive, a bounded batch at a time; when the file has been read
to its end they are merged into `client`, `tag` and `client_tag` with a few
statements, whatever the file's size. A file that cannot be read at all raises before
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
from typing import TYPE_CHECKING

from sqlalchemy import text

from services.api.import_file import Numbered, Rejected, rows
from shared.events import CLIENTS_IMPORTED
from shared.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.topics import Topics

log = get_logger(__name__)

MODES = ("create", "upsert")
# Valid rows buffered before they are written to the COPY stream.
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
# The first line of each telephone, and the live client that has it.
_PLAN = """
CREATE TEMPORARY TABLE import_plan ON COMMIT DROP AS
SELECT DISTINCT ON (r.phone)
    r.line, r.phone, r.timezone,
    CASE WHEN r.tags = '' THEN ARRAY[]::text[] ELSE string_to_array(r.tags, E'\\x1f') END
        AS tags,
    c.id AS client_id, c.timezone AS old_timezone,
    NULL::text AS outcome, false AS tags_changed
FROM import_row r
LEFT JOIN client c ON c.phone = r.phone AND c.deleted_at IS NULL
ORDER BY r.phone, r.line
"""
_REPEATED = """
SELECT r.line, r.phone, p.line AS first, count(*) OVER () AS total
FROM import_row r JOIN import_plan p ON p.phone = r.phone AND p.line <> r.line
ORDER BY r.line
LIMIT :n
"""
_TAKEN = """
UPDATE import_plan SET outcome = 'taken' WHERE client_id IS NOT NULL
"""
_INSERT = """
WITH new AS (
    INSERT INTO client (phone, timezone)
    SELECT phone, timezone FROM import_plan WHERE client_id IS NULL ORDER BY line
    ON CONFLICT (phone) WHERE deleted_at IS NULL DO NOTHING
    RETURNING id, phone
)
UPDATE import_plan p SET client_id = new.id, outcome = 'created', tags_changed = true
FROM new WHERE p.phone = new.phone
"""
# A client created by someone else since the plan was made.
_RACED = """
UPDATE import_plan SET outcome = 'taken' WHERE outcome IS NULL AND client_id IS NULL
"""
_TAGS_CHANGED = """
UPDATE import_plan p SET tags_changed = NOT (old.names @> p.tags AND p.tags @> old.names)
FROM (
    SELECT p2.client_id, coalesce(array_agg(t.name::text) FILTER (WHERE t.name IS NOT NULL),
                                  ARRAY[]::text[]) AS names
    FROM import_plan p2
    LEFT JOIN client_tag ct ON ct.client_id = p2.client_id
    LEFT JOIN tag t ON t.id = ct.tag_id
    WHERE p2.outcome IS NULL
    GROUP BY p2.client_id
) old
WHERE p.client_id = old.client_id AND p.outcome IS NULL
"""
_OUTCOME = """
UPDATE import_plan
SET outcome = CASE WHEN tags_changed OR timezone <> old_timezone THEN 'updated'
                   ELSE 'unchanged' END
WHERE outcome IS NULL
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
ON CONFLICT DO NOTHING
"""
_COUNTS = "SELECT outcome, count(*) FROM import_plan GROUP BY outcome"
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


async def _stage(session: AsyncSession, kind: str, chunks: AsyncIterable[bytes]) -> ImportResult:
    """Copy the file's valid rows into `import_row`; the rejected ones into the result."""
    result = ImportResult()
    await session.execute(text(_STAGE))
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    async with raw.cursor() as cursor, cursor.copy(_COPY) as copy:
        batch: list[str] = []
        async for row in rows(kind, chunks):
            if isinstance(row, Rejected):
                result.reject(row)
                continue
            batch.append(_copy_line(row))
            if len(batch) >= COPY_BATCH:
                await copy.write("".join(batch).encode())
                batch.clear()
        if batch:
            await copy.write("".join(batch).encode())
    return result


async def import_clients(
    session: AsyncSession, topics: Topics, kind: str, mode: str, chunks: AsyncIterable[bytes]
) -> ImportResult:
    """Import a CSV or NDJSON stream in the caller's transaction (see the module doc)."""
    result = await _stage(session, kind, chunks)
    await session.execute(text(_PLAN))
    await session.execute(text("ANALYZE import_plan"))
    repeated = (await session.execute(text(_REPEATED), {"n": MAX_LISTED})).all()
    for line, phone, first, _ in repeated:
        result.reject(Rejected(line, "telephone", f"telephone {phone} is on line {first} too"))
    if repeated:
        result.rejected_count += int(repeated[0].total) - len(repeated)
    if mode == "create":
        await session.execute(text(_TAKEN))
    await session.execute(text(_INSERT))
    await session.execute(text(_RACED))
    if mode == "upsert":
        await session.execute(text(_TAGS_CHANGED))
        await session.execute(text(_OUTCOME))
        await session.execute(text(_UPDATE))
        await session.execute(text(_DROP_TAGS))
    await session.execute(text(_NEW_TAGS))
    await session.execute(text(_ADD_TAGS))
    counts: dict[str, int] = {
        str(outcome): int(n) for outcome, n in await session.execute(text(_COUNTS))
    }
    result.created = counts.get("created", 0)
    result.updated = counts.get("updated", 0)
    result.unchanged = counts.get("unchanged", 0)
    taken = counts.get("taken", 0)
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
