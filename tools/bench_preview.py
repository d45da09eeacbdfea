"""`make bench-preview`: latency of the audience preview and of the forecast at scale.

Loads N clients (default 1,000,000; COPY) over 40 time zones, 20 operator codes and 12
tags (0-3 each), starts the API as its own process and times sequential requests:
`POST /api/v1/notifications/preview/` for a filtered and an unfiltered body, and
`GET /api/v1/notifications/{id}/forecast/` of the mailing created from each. Prints
p50 / p95 / p99; asserts nothing (this machine is noisy). Side by side, timed in this
process: the preview's two aggregates as SQL alone, over the audience counts (what the
endpoint runs) and over the clients and their tags (the queries before migration 0005,
kept here); and the forecast as it was before issue 11: every client of the audience
read and planned one by one (the same SQL and `shared.windows.plan` the old endpoint
ran).

Needs DATABASE_URL and KAFKA_BOOTSTRAP (run it under `python -m tools.infra run`).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg
from sqlalchemy import Select, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.orm import aliased

from services.api.outlook import preview_queries
from shared.audience import Audience
from shared.models import Client, ClientTag, Tag
from shared.windows import Window, plan
from tools.api_process import api_process

if TYPE_CHECKING:
    from sqlalchemy.sql import ClauseElement

ZONES = [
    "UTC", "Europe/London", "Europe/Berlin", "Europe/Moscow", "Europe/Samara",
    "Asia/Yekaterinburg", "Asia/Omsk", "Asia/Novosibirsk", "Asia/Krasnoyarsk",
    "Asia/Irkutsk", "Asia/Yakutsk", "Asia/Vladivostok", "Asia/Magadan",
    "Asia/Kamchatka", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo", "Asia/Shanghai",
    "Asia/Singapore", "Asia/Dubai", "Asia/Tehran", "Asia/Almaty", "Australia/Sydney",
    "Australia/Adelaide", "Australia/Lord_Howe", "Pacific/Auckland", "Pacific/Chatham",
    "Pacific/Kiritimati", "Pacific/Pago_Pago", "Pacific/Honolulu", "America/Anchorage",
    "America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York",
    "America/St_Johns", "America/Sao_Paulo", "America/Santiago", "Africa/Cairo",
    "Atlantic/Azores",
]  # fmt: skip
CODES = [900 + step for step in range(20)]
TAGS = [f"bench-tag-{n:02d}" for n in range(12)]
FIRST_PHONE = "79000000000"

BODIES: dict[str, dict[str, Any]] = {
    "filtered (2 tags, 5 codes, window 22:00-06:00)": {
        "date_time_start": "2031-03-29 12:00:00",
        "date_time_stop": "2031-04-05 00:00:00",
        "text": "bench",
        "tag": TAGS[:2],
        "mobile_code": CODES[:5],
        "time_interval_start": "22:00",
        "time_interval_end": "06:00",
    },
    "unfiltered (everyone, window 09:00-21:00)": {
        "date_time_start": "2031-03-29 12:00:00",
        "date_time_stop": "2031-03-29 20:00:00",
        "text": "bench",
        "time_interval_start": "09:00",
        "time_interval_end": "21:00",
    },
}


def _conninfo(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


def load(database_url: str, clients: int) -> None:
    rng = random.Random(11)
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM client WHERE phone = %s", (FIRST_PHONE,)).fetchone():
            print("clients already loaded")
            return
        started = time.perf_counter()
        with conn.cursor().copy("COPY client (phone, timezone) FROM STDIN") as copy:
            for n in range(clients):
                # Unique: the code is n % 20 and the last 7 digits n // 20.
                copy.write_row((f"7{CODES[n % 20]}{n // 20:07d}", rng.choice(ZONES)))
        loaded = time.perf_counter() - started
        conn.execute(
            "INSERT INTO tag (name) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (TAGS,)
        )
        # 0-3 tags per client, spread by a hash of its id (set-based, in the database).
        conn.execute(
            """
            INSERT INTO client_tag (client_id, tag_id)
            SELECT DISTINCT c.id, t.id
            FROM client c
            CROSS JOIN generate_series(1, 3) AS k
            JOIN tag t ON t.name = (%(tags)s::text[])[1 + abs(hashint8(c.id * 7 + k)::bigint) %% 12]
            WHERE abs(hashint8(c.id * 13 + k)::bigint) %% 4 < k
            """,
            {"tags": TAGS},
        )
        for table in ("client", "tag", "client_tag"):
            conn.execute(f"ANALYZE {table}")
        row = conn.execute("SELECT count(*) FROM client_tag").fetchone()
        print(
            f"loaded {clients} clients (COPY: {loaded:.1f} s) and {row[0] if row else 0} "
            f"tags of clients in {time.perf_counter() - started:.1f} s"
        )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(name: str, samples: list[float]) -> str:
    return (
        f"{name:<62} {statistics.median(samples):8.1f} {percentile(samples, 0.95):8.1f} "
        f"{percentile(samples, 0.99):8.1f}"
    )


def timed(call: Any, requests: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def old_forecast(database_url: str, body: dict[str, Any]) -> None:
    """The pre-issue-11 forecast: each client of the audience read and planned."""
    tags, codes = body.get("tag", []), body.get("mobile_code", [])
    start = datetime.fromisoformat(body["date_time_start"]).replace(tzinfo=UTC)
    stop = datetime.fromisoformat(body["date_time_stop"]).replace(tzinfo=UTC)
    window = None
    if "time_interval_start" in body:
        window = Window(
            datetime.strptime(body["time_interval_start"], "%H:%M").time(),
            datetime.strptime(body["time_interval_end"], "%H:%M").time(),
        )
    with psycopg.connect(_conninfo(database_url)) as conn:
        rows = conn.execute(
            """
            SELECT c.id, c.timezone FROM client c
            WHERE c.deleted_at IS NULL
              AND (cardinality(%(codes)s::smallint[]) = 0 OR c.operator_code = ANY(%(codes)s))
              AND (cardinality(%(tags)s::text[]) = 0 OR EXISTS (
                  SELECT 1 FROM client_tag ct JOIN tag t ON t.id = ct.tag_id
                  WHERE ct.client_id = c.id AND t.name = ANY(%(tags)s)))
            ORDER BY c.id
            """,
            {"codes": codes, "tags": tags},
        ).fetchall()
    now = datetime.now(UTC)
    zones: dict[str, ZoneInfo] = {}
    hours: dict[datetime, int] = {}
    for _client, zone_name in rows:
        zone = zones.get(zone_name) or zones.setdefault(zone_name, ZoneInfo(zone_name))
        due, _reason = plan(start, stop, now, window, zone)
        if due is not None:
            hour = due.replace(minute=0, second=0, microsecond=0)
            hours[hour] = hours.get(hour, 0) + 1


# The old preview gave its transaction this much: the tags' join hashes every client.
OLD_WORK_MEM = "64MB"


def old_preview_queries(audience: Audience) -> tuple[Select[str, int, int], Select[str, int]]:
    """The preview's aggregates before migration 0005: over every audience client and
    each of its tags."""
    condition = audience.condition()
    by_zone_and_code = (
        select(Client.timezone, Client.operator_code, func.count())
        .where(condition)
        .group_by(Client.timezone, Client.operator_code)
    )
    carried = aliased(ClientTag)
    per_tag = (
        select(carried.tag_id, func.count().label("clients"))
        .join(Client, Client.id == carried.client_id)
        .where(condition)
        .group_by(carried.tag_id)
        .subquery()
    )
    by_tag = select(Tag.name, per_tag.c.clients).join(per_tag, per_tag.c.tag_id == Tag.id)
    return by_zone_and_code, by_tag


def _sql(query: ClauseElement) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _audience(conn: psycopg.Connection[Any], body: dict[str, Any]) -> Audience:
    tag_ids = None
    if body.get("tag"):
        found = conn.execute("SELECT id FROM tag WHERE name = ANY(%s)", (body["tag"],))
        tag_ids = [int(row[0]) for row in found]
    return Audience(tag_ids=tag_ids, codes=list(body.get("mobile_code", [])))


def aggregates(database_url: str, body: dict[str, Any], *, old: bool) -> None:
    """The preview's two aggregates for `body`, in one transaction as the endpoint runs
    them: the current ones (`old=False`) or those before migration 0005."""
    with psycopg.connect(_conninfo(database_url)) as conn:
        audience = _audience(conn, body)
        if old:
            conn.execute(f"SET LOCAL work_mem = '{OLD_WORK_MEM}'")
        for query in (old_preview_queries if old else preview_queries)(audience):
            conn.execute(_sql(query)).fetchall()


def explain(database_url: str, body: dict[str, Any]) -> None:
    """EXPLAIN ANALYZE of the preview's aggregates for `body`, now and before 0005."""
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        audience = _audience(conn, body)
        for title, queries in (
            ("now", preview_queries(audience)),
            ("before migration 0005", old_preview_queries(audience)),
        ):
            if title != "now":
                conn.execute(f"SET work_mem = '{OLD_WORK_MEM}'")
            print(f"   -- {title}")
            for query in queries:
                plan_lines = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {_sql(query)}").fetchall()
                print("   " + "\n   ".join(str(row[0]) for row in plan_lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--old-requests",
        type=int,
        default=3,
        help="the old forecast's runs; 0: skip it and the side-by-side SQL of the preview",
    )
    parser.add_argument("--explain", action="store_true", help="print the preview's SQL plans")
    args = parser.parse_args()
    database_url = os.environ["DATABASE_URL"]
    load(database_url, args.clients)

    with api_process(timeout=120) as (client, _):
        print(f"{'request':<62} {'p50':>8} {'p95':>8} {'p99':>8}  (ms, n={args.requests})")
        for name, body in BODIES.items():
            answer = client.post("/api/v1/notifications/preview/", json=body)
            answer.raise_for_status()
            preview = answer.json()
            print(
                f"-- {name}: audience {preview['audience']}, "
                f"{len(preview['by_timezone'])} zones, {len(preview['by_hour'])} hours, "
                f"unreachable {preview['unreachable']}"
            )
            samples = timed(
                lambda body=body: client.post(
                    "/api/v1/notifications/preview/", json=body
                ).raise_for_status(),
                args.requests,
            )
            print(line("POST /api/v1/notifications/preview/", samples))
            if args.old_requests:
                for old, title in ((False, "counts"), (True, "clients and tags, before 0005")):
                    samples = timed(
                        lambda body=body, old=old: aggregates(database_url, body, old=old),
                        args.requests,
                    )
                    print(line(f"preview's SQL alone, over the {title}", samples))
            if args.explain:
                explain(database_url, body)
            created = client.post("/api/v1/notifications/", json=body)
            created.raise_for_status()
            path = f"/api/v1/notifications/{created.json()['id']}/forecast/?limit=100"
            forecast = client.get(path).json()
            if forecast["by_hour"] != preview["by_hour"]:
                print("!! the forecast's by_hour differs from the preview's")
            samples = timed(lambda path=path: client.get(path).raise_for_status(), args.requests)
            print(line("GET /api/v1/notifications/{id}/forecast/?limit=100", samples))
            if args.old_requests:
                samples = timed(
                    lambda body=body: old_forecast(database_url, body),
                    args.old_requests,
                    warmup=0,
                )
                print(line(f"old forecast, per client in Python (n={args.old_requests})", samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
