"""`make bench-bulk`: the scheduler's memory and time on a whole big mailing.

    python -m tools.infra run -- python -m tools.bench_bulk [--messages 1000000]

Loads N clients (every second one tagged `half`) and one running mailing with N
`scheduled` messages straight into PostgreSQL (set-based SQL), then runs, in this
process, the scheduler's own code on it:

* expiry: the stop time moves to the past, then `Scheduler.expire_past_stop`: all N
  messages `expired`;
* edit: the stop time moves a day ahead and the filter becomes the tag `half` (as a PUT
  leaves the row: version + 1), then `Scheduler.apply_edit`: the N/2 matching clients'
  expired messages re-planned (a new chance), the others left as they are.

For each it prints the messages changed, the status events staged in the outbox, the
seconds, and this process's resident memory (VmRSS, sampled every 20 ms) before and at
its peak. Asserts nothing (this machine is noisy). Needs DATABASE_URL and
KAFKA_BOOTSTRAP (run it under `python -m tools.infra run`); Kafka is not used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy.engine import make_url

from services.scheduler.service import Scheduler
from shared.db import create_engine, create_session_factory
from shared.kafka import create_broker, topics_from
from shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def rss_kb() -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


class PeakRss:
    """The peak VmRSS of this process while the block runs, sampled by a thread."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, rss_kb())
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRss:
        self.peak_kb = rss_kb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, rss_kb())


def load(conninfo: str, messages: int) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        started = time.perf_counter()
        row = conn.execute("SELECT coalesce(max(id), 0) FROM client").fetchone()
        offset = int(row[0]) if row else 0
        conn.execute(
            """
            INSERT INTO client (phone, timezone)
            SELECT '7' || lpad((%(offset)s + g)::text, 10, '0'), 'UTC'
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": messages, "offset": 6_000_000_000 + offset},
        )
        conn.execute("INSERT INTO tag (name) VALUES ('half') ON CONFLICT DO NOTHING")
        conn.execute(
            """
            INSERT INTO client_tag (client_id, tag_id)
            SELECT c.id, (SELECT id FROM tag WHERE name = 'half')
            FROM client c WHERE c.id > %(offset)s AND c.id %% 2 = 0
            """,
            {"offset": offset},
        )
        row = conn.execute(
            "INSERT INTO mailing (start_at, stop_at, text, state, activated_at) VALUES "
            "(now(), now() + interval '1 day', 'bench', 'running', now()) RETURNING id"
        ).fetchone()
        assert row is not None
        mailing_id = int(row[0])
        conn.execute(
            """
            INSERT INTO message (mailing_id, client_id, status, due_at)
            SELECT %(m)s, c.id, 'scheduled', now() + interval '1 hour'
            FROM client c WHERE c.id > %(offset)s ORDER BY c.id
            """,
            {"m": mailing_id, "offset": offset},
        )
        conn.execute("ANALYZE client")
        conn.execute("ANALYZE client_tag")
        conn.execute("ANALYZE message")
        print(
            f"loaded {messages} clients and messages for mailing {mailing_id} "
            f"in {time.perf_counter() - started:.1f} s"
        )
    return mailing_id


async def phase(
    name: str, conninfo: str, mailing_id: int, work: Callable[[], Awaitable[object]]
) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()
        before = int(row[0]) if row else 0
    baseline = rss_kb()
    started = time.perf_counter()
    with PeakRss() as peak:
        await work()
    seconds = time.perf_counter() - started
    with psycopg.connect(conninfo, autocommit=True) as conn:
        events = conn.execute(
            "SELECT payload->>'type', count(*) FROM outbox WHERE id > %s GROUP BY 1 ORDER BY 1",
            (before,),
        ).fetchall()
        statuses = conn.execute(
            "SELECT status, count(*) FROM message WHERE mailing_id = %s GROUP BY 1 ORDER BY 1",
            (mailing_id,),
        ).fetchall()
    print(
        f"{name}: {seconds:.1f} s; RSS before {baseline / 1024:.0f} MB, "
        f"peak {peak.peak_kb / 1024:.0f} MB (+{(peak.peak_kb - baseline) / 1024:.0f} MB); "
        f"events staged {dict(events)}; messages now {dict(statuses)}"
    )


async def amain(messages: int) -> int:
    database_url = os.environ["DATABASE_URL"]
    conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    mailing_id = load(conninfo, messages)
    settings = load_settings(database_url=database_url, log_level="WARNING", log_file=None)
    engine = create_engine(settings, application_name="bench-bulk")
    sessions = create_session_factory(engine)
    # Neither the edit nor the expiry publishes to Kafka: the broker is never started.
    broker = create_broker(settings, client_id="bench-bulk")
    scheduler = Scheduler(sessions, broker, topics_from(settings), settings)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "UPDATE mailing SET stop_at = now() - interval '1 second' WHERE id = %s",
                (mailing_id,),
            )
        await phase("expiry", conninfo, mailing_id, scheduler.expire_past_stop)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "UPDATE mailing SET filter_tags = '{half}', version = version + 1, "
                "stop_at = now() + interval '1 day' WHERE id = %s",
                (mailing_id,),
            )
        await phase("edit", conninfo, mailing_id, lambda: scheduler.apply_edit(mailing_id))
    finally:
        await engine.dispose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    return asyncio.run(amain(args.messages))


if __name__ == "__main__":
    raise SystemExit(main())
