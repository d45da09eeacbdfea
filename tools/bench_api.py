"""`make bench-api`: latency of the admin API's statistics read on a large mailing.

Loads N clients and one mailing with N messages spread over every status (set-based
SQL), starts the API as its own process, and times sequential requests from this
process. Prints medians and tail latencies; asserts nothing (this machine is noisy).

Needs DATABASE_URL and KAFKA_BOOTSTRAP (run it under `python -m tools.infra run`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy.engine import make_url

from tools.api_process import api_process

if TYPE_CHECKING:
    import httpx

STATUSES = ["scheduled", "queued", "sending", "retrying", "sent", "failed", "expired", "cancelled"]


def load(database_url: str, messages: int) -> int:
    conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        started = time.perf_counter()
        base = conn.execute("SELECT coalesce(max(id), 0) FROM client").fetchone()
        offset = int(base[0]) if base else 0
        conn.execute(
            """
            INSERT INTO client (phone, timezone)
            SELECT '7' || lpad((%(offset)s + g)::text, 10, '0'), 'UTC'
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": messages, "offset": 5_000_000_000 + offset},
        )
        row = conn.execute(
            "INSERT INTO mailing (start_at, stop_at, text) VALUES "
            "(now(), now() + interval '1 day', 'bench') RETURNING id"
        ).fetchone()
        assert row is not None
        mailing_id = int(row[0])
        conn.execute(
            """
            INSERT INTO message (mailing_id, client_id, status)
            SELECT %(m)s, c.id, (%(statuses)s::text[])[1 + (c.id %% 8)]
            FROM client c
            WHERE c.phone LIKE '75%%' AND c.id > %(offset)s
            """,
            {"m": mailing_id, "statuses": STATUSES, "offset": offset},
        )
        # The reporter's counters for them, as it would have left them.
        conn.execute(
            """
            INSERT INTO mailing_status_count (mailing_id, status, count)
            SELECT mailing_id, status, count(*) FROM message WHERE mailing_id = %s
            GROUP BY mailing_id, status
            """,
            (mailing_id,),
        )
        conn.execute("ANALYZE client")
        conn.execute("ANALYZE message")
        count = conn.execute(
            "SELECT count(*) FROM message WHERE mailing_id = %s", (mailing_id,)
        ).fetchone()
        print(
            f"loaded {count[0] if count else 0} messages for mailing {mailing_id} "
            f"in {time.perf_counter() - started:.1f} s"
        )
    return mailing_id


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(client: httpx.Client, path: str, requests: int) -> list[float]:
    for _ in range(10):  # warm the pool, caches and the planner
        client.get(path).raise_for_status()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    database_url = os.environ["DATABASE_URL"]
    mailing_id = load(database_url, args.messages)

    with api_process() as (client, _):
        body = client.get(f"/api/v1/notifications/{mailing_id}/").json()
        print(f"number_of_messages: {body['number_of_messages']}")
        paths = {
            "GET /api/v1/notifications/{id}/": f"/api/v1/notifications/{mailing_id}/",
            "GET /api/v1/notifications/{id}/messages/?limit=100": (
                f"/api/v1/notifications/{mailing_id}/messages/?limit=100"
            ),
            "GET /health (baseline)": "/health",
        }
        print(f"{'request':<55} {'median':>8} {'p95':>8} {'p99':>8}  (ms, n={args.requests})")
        for name, path in paths.items():
            samples = measure(client, path, args.requests)
            print(
                f"{name:<55} {statistics.median(samples):8.2f} "
                f"{percentile(samples, 0.95):8.2f} {percentile(samples, 0.99):8.2f}"
            )
        # Side by side: the COUNT ... GROUP BY the read would cost without the counters.
        conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            query = "SELECT status, count(*) FROM message WHERE mailing_id = %s GROUP BY status"
            for _ in range(10):
                conn.execute(query, (mailing_id,)).fetchall()
            samples = []
            for _ in range(args.requests):
                started = time.perf_counter()
                conn.execute(query, (mailing_id,)).fetchall()
                samples.append((time.perf_counter() - started) * 1000)
        print(
            f"{'SQL COUNT(*) GROUP BY status (without counters)':<55} "
            f"{statistics.median(samples):8.2f} {percentile(samples, 0.95):8.2f} "
            f"{percentile(samples, 0.99):8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
