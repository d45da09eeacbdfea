"""The audience counts (migration 0005): live clients per (zone, operator code, tag set),
kept by triggers on client and client_tag, read by the audience preview.

After every kind of write (the API's create, PUT, PATCH and DELETE, the bulk import in
both modes, and SQL the service never runs: a hard delete, a tag deleted, an UPDATE of
client_tag, TRUNCATE) the counts equal the clients, key by key; compaction folds the
rows and keeps every sum.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import text

from shared.audience import compact_counts
from shared.db import create_engine, create_session_factory
from tests.support.api_helpers import phone
from tests.support.databases import libpq, scratch_database

if TYPE_CHECKING:
    from tests.support.api_helpers import ApiClient
    from tests.support.infra import Infra

# Each key: the clients it should count (from client and client_tag) and what the
# counts say. One statement, one snapshot: right whatever else writes meanwhile.
_TRUTH = """
    SELECT c.timezone, c.operator_code, t.ids, count(*)
    FROM client c
    CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(tag_id ORDER BY tag_id), '{}') AS ids
        FROM client_tag WHERE client_id = c.id
    ) AS t
    WHERE c.deleted_at IS NULL
    GROUP BY 1, 2, 3
"""
_MISMATCHES = f"""
    WITH truth AS ({_TRUTH}),
    zone AS (
        SELECT timezone, operator_code, tag_ids, sum(clients) FROM audience_zone_count
        GROUP BY 1, 2, 3 HAVING sum(clients) <> 0
    ),
    code AS (
        SELECT operator_code, tag_ids, sum(clients) FROM audience_tag_count
        GROUP BY 1, 2 HAVING sum(clients) <> 0
    ),
    truth_code AS (SELECT operator_code, ids, sum(count) FROM truth GROUP BY 1, 2)
    SELECT 'zone', count(*) FROM (
        (TABLE truth EXCEPT TABLE zone) UNION ALL (TABLE zone EXCEPT TABLE truth)) AS d
    UNION ALL
    SELECT 'code', count(*) FROM (
        (TABLE truth_code EXCEPT TABLE code) UNION ALL (TABLE code EXCEPT TABLE truth_code)
    ) AS d
"""
# The compaction's advisory lock (migration 0005).
COMPACT_LOCK = 0x617564636F756E74
_ROWS = (
    "SELECT (SELECT count(*) FROM audience_zone_count), (SELECT count(*) FROM audience_tag_count)"
)
_KEYS = (
    "SELECT (SELECT count(DISTINCT (timezone, operator_code, tag_ids)) "
    "FROM audience_zone_count WHERE clients <> 0), "
    "(SELECT count(DISTINCT (operator_code, tag_ids)) FROM audience_tag_count "
    "WHERE clients <> 0)"
)


def _mismatches(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {kind: int(n) for kind, n in conn.execute(_MISMATCHES).fetchall()}


async def _api_mismatches(api: ApiClient) -> dict[str, int]:
    with psycopg.connect(libpq(api.settings.database_url)) as conn:
        return _mismatches(conn)


async def test_counts_follow_every_write_of_the_api(api: ApiClient) -> None:
    prefix = f"ac-{uuid.uuid4().hex[:8]}"
    created = []
    for n, zone in enumerate(["UTC", "Asia/Tokyo", "Europe/Berlin", "UTC"]):
        body = {"telephone": phone(), "tag": [f"{prefix}-{n % 2}"], "timezone": zone}
        response = await api.http.post("/api/v1/clients/", json=body)
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])
    assert await _api_mismatches(api) == {"zone": 0, "code": 0}

    first, second, third, fourth = created
    edits: list[tuple[str, int, dict[str, Any]]] = [
        ("put", first, {"telephone": phone(), "tag": [f"{prefix}-x"], "timezone": "Asia/Dubai"}),
        ("patch", second, {"tag": []}),
        ("patch", third, {"timezone": "America/New_York"}),
        ("patch", third, {"tag": [f"{prefix}-0", f"{prefix}-1", f"{prefix}-y"]}),
        ("patch", fourth, {"telephone": phone()}),  # another operator code, same tags
    ]
    for method, ident, body in edits:
        response = await api.http.request(method, f"/api/v1/clients/{ident}/", json=body)
        assert response.status_code == 200, response.text
        assert await _api_mismatches(api) == {"zone": 0, "code": 0}, (method, body)

    response = await api.http.delete(f"/api/v1/clients/{third}/")
    assert response.status_code == 204, response.text
    assert await _api_mismatches(api) == {"zone": 0, "code": 0}


async def test_counts_follow_the_bulk_import_in_both_modes(api: ApiClient) -> None:
    prefix = f"ai-{uuid.uuid4().hex[:8]}"
    phones = [phone() for _ in range(30)]
    rows = [f"{p},{prefix}-a|{prefix}-{n % 3},Europe/Moscow" for n, p in enumerate(phones)]
    csv = "telephone,tag,timezone\n" + "\n".join(rows) + "\n"
    url = "/api/v1/clients/import/"
    answer = await api.http.post(url, content=csv.encode(), headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["created"] == 30
    assert await _api_mismatches(api) == {"zone": 0, "code": 0}

    # Upsert: new tags for some, a new zone for others, some unchanged.
    rows = [
        f"{p},{prefix}-b,Europe/Moscow"
        if n % 3 == 0
        else f"{p},{prefix}-a|{prefix}-{n % 3},Asia/Omsk"
        if n % 3 == 1
        else f"{p},{prefix}-a|{prefix}-{n % 3},Europe/Moscow"
        for n, p in enumerate(phones)
    ]
    csv = "telephone,tag,timezone\n" + "\n".join(rows) + "\n"
    answer = await api.http.post(
        url, params={"mode": "upsert"}, content=csv.encode(), headers={"Content-Type": "text/csv"}
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["updated"], answer.json()["unchanged"]) == (20, 10)
    assert await _api_mismatches(api) == {"zone": 0, "code": 0}


async def _import(api: ApiClient, rows: list[str], mode: str) -> dict[str, Any]:
    csv = "telephone,tag,timezone\n" + "\n".join(rows) + "\n"
    answer = await api.http.post(
        "/api/v1/clients/import/",
        params={"mode": mode},
        content=csv.encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def test_counts_follow_an_upsert_that_moves_clients_and_creates_others(
    api: ApiClient,
) -> None:
    """The import records its own counts: zones and tags of existing clients changed,
    new clients created, repeated telephones and tag names, all in one file."""
    prefix = f"am-{uuid.uuid4().hex[:8]}"
    old = [phone() for _ in range(24)]
    rows = [f"{p},{prefix}-a|{prefix}-{n % 4},Europe/Moscow" for n, p in enumerate(old)]
    assert (await _import(api, rows, "create"))["created"] == 24
    # An API client with tags too, moved by the import below.
    body = {"telephone": phone(), "tag": [f"{prefix}-z"], "timezone": "Asia/Tokyo"}
    response = await api.http.post("/api/v1/clients/", json=body)
    assert response.status_code == 201, response.text
    assert await _api_mismatches(api) == {"zone": 0, "code": 0}

    new = [phone() for _ in range(10)]
    rows = [
        f"{p},{prefix}-b|{prefix}-b,Asia/Omsk"  # zone and tags (a tag given twice)
        if n % 4 == 0
        else f"{p},{prefix}-a|{prefix}-{n % 4},Asia/Omsk"  # zone only
        if n % 4 == 1
        else f"{p},{prefix}-{n % 4}|{prefix}-c,Europe/Moscow"  # tags only
        if n % 4 == 2
        else f"{p},{prefix}-a|{prefix}-{n % 4},Europe/Moscow"  # unchanged
        for n, p in enumerate(old)
    ]
    rows += [f"{body['telephone']},,UTC"]  # all tags dropped, zone changed
    rows += [f"{p},{prefix}-new|{prefix}-a,America/Lima" for p in new]
    rows += [f"{new[0]},{prefix}-ignored,UTC"]  # the first line of a telephone counts
    answer = await _import(api, rows, "upsert")
    assert (answer["created"], answer["updated"], answer["unchanged"]) == (10, 19, 6)
    assert await _api_mismatches(api) == {"zone": 0, "code": 0}


async def test_writes_after_an_import_still_move_the_counts(api: ApiClient) -> None:
    """The import's say-so is for its own transaction: the API's writes after it (on
    the same pooled connections) are counted by the triggers again."""
    prefix = f"aw-{uuid.uuid4().hex[:8]}"
    phones = [phone() for _ in range(5)]
    await _import(api, [f"{p},{prefix}-a,UTC" for p in phones], "upsert")
    for _ in range(3):
        body = {"telephone": phone(), "tag": [f"{prefix}-b"], "timezone": "Asia/Dubai"}
        response = await api.http.post("/api/v1/clients/", json=body)
        assert response.status_code == 201, response.text
    with psycopg.connect(libpq(api.settings.database_url)) as conn:
        counted = conn.execute(
            "SELECT coalesce(sum(clients), 0) FROM audience_zone_count a JOIN tag t "
            "ON a.tag_ids = ARRAY[t.id] WHERE t.name = %s AND a.timezone = 'Asia/Dubai'",
            (f"{prefix}-b",),
        ).fetchone()
        assert counted == (3,)
        assert _mismatches(conn) == {"zone": 0, "code": 0}


async def test_compaction_folds_the_rows_and_keeps_the_sums(api: ApiClient) -> None:
    for _ in range(3):
        body = {"telephone": phone(), "tag": ["compact-me"], "timezone": "Asia/Kolkata"}
        assert (await api.http.post("/api/v1/clients/", json=body)).status_code == 201
    engine = create_engine(api.settings, application_name="tests")
    try:
        async with engine.connect() as conn:
            before = tuple((await conn.execute(text(_ROWS))).one())
        async with create_session_factory(engine)() as session, session.begin():
            await compact_counts(session)
        async with engine.connect() as conn:
            after = tuple((await conn.execute(text(_ROWS))).one())
            keys = tuple((await conn.execute(text(_KEYS))).one())
    finally:
        await engine.dispose()
    # Each create wrote three rows (the client with no tags; then out of that key and
    # into its tags' one): folded, one row per key, none summing to 0.
    assert after[0] < before[0]
    assert after[1] < before[1]
    assert after == keys
    assert await _api_mismatches(api) == {"zone": 0, "code": 0}


def _one_compaction_at_a_time(url: str, conn: psycopg.Connection[Any]) -> None:
    """While another session holds the compaction's lock, a compaction changes nothing."""
    rows = conn.execute(_ROWS).fetchone()
    with psycopg.connect(libpq(url), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (COMPACT_LOCK,))
        conn.execute("SELECT audience_count_compact()")
        assert conn.execute(_ROWS).fetchone() == rows
        other.execute("SELECT pg_advisory_unlock(%s)", (COMPACT_LOCK,))


def test_counts_follow_sql_the_service_never_runs(infra: Infra) -> None:
    """A database of its own: TRUNCATE would take every other test's clients with it."""
    with (
        scratch_database(infra.database_url, "counts") as url,
        psycopg.connect(libpq(url), autocommit=True) as conn,
    ):
        conn.execute("INSERT INTO tag (name) VALUES ('a'), ('b'), ('c')")
        conn.execute(
            "INSERT INTO client (phone, timezone) "
            "SELECT '7' || (900 + n % 20)::text || lpad(n::text, 7, '0'), "
            "(ARRAY['UTC', 'Asia/Tokyo', 'Europe/Berlin'])[1 + n % 3] "
            "FROM generate_series(1, 300) AS n"
        )
        # Tags and clients in one statement each, in bulk, as the import does.
        conn.execute(
            "INSERT INTO client_tag (client_id, tag_id) SELECT c.id, t.id FROM client c "
            "JOIN tag t ON (c.id + t.id) % 3 <> 0"
        )
        assert _mismatches(conn) == {"zone": 0, "code": 0}
        steps = [
            "UPDATE client_tag SET tag_id = (SELECT id FROM tag WHERE name = 'c') "
            "WHERE tag_id = (SELECT id FROM tag WHERE name = 'a') AND client_id % 5 = 0 "
            "AND NOT EXISTS (SELECT 1 FROM client_tag x "
            "WHERE x.client_id = client_tag.client_id "
            "AND x.tag_id = (SELECT id FROM tag WHERE name = 'c'))",
            "UPDATE client SET timezone = 'Asia/Dubai' WHERE id % 7 = 0",
            "UPDATE client SET updated_at = now()",
            "UPDATE client SET deleted_at = now() WHERE id % 11 = 0",
            "DELETE FROM client WHERE id % 13 = 0",
            "DELETE FROM tag WHERE name = 'b'",
            "DELETE FROM client_tag WHERE client_id % 4 = 0",
            "SELECT audience_count_compact()",
            "TRUNCATE client_tag",
        ]
        for step in steps:
            if step == "SELECT audience_count_compact()":
                _one_compaction_at_a_time(url, conn)
            conn.execute(step)
            assert _mismatches(conn) == {"zone": 0, "code": 0}, step
        conn.execute("TRUNCATE client CASCADE")
        assert conn.execute(_ROWS).fetchone() == (0, 0)
