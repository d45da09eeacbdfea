"""`make bench-expand`: the scheduler's audience expansion of one big mailing, alone.

    python -m tools.bench_expand [--clients 1000000] [--mailings 2] [--fast-postgres]

Starts a PostgreSQL server of its own (PostgreSQL's durable defaults: fsync,
synchronous_commit and full_page_writes on, as a deployment runs; `--fast-postgres`:
all three off, as the tests run it), migrates a database in it and loads N clients
straight into it (set-based SQL, triggers off: four time zones, every client tagged
`bench`). Then, `--mailings` times in a row, it creates a mailing for the tag whose
start has come and runs the scheduler's own activation on it, in this process
(`Scheduler.activate_due_mailings`, which the scheduler's loop calls): the mailings
after the first expand with the earlier mailings' messages already in the table, as
a deployment does.

The expansion keeps its pace (`EXPANSION_MAX_RATE`, 80,000 messages a second by
default: a million in about 12.5 s); `EXPANSION_MAX_RATE=0 make bench-expand` measures
how fast PostgreSQL makes them with no pace.

For each mailing it prints the seconds from the call to the mailing being `running`
with all its messages, the messages made, the CPU seconds the PostgreSQL server's
processes and this process spent meanwhile (steadier than the seconds on a busy
machine), and the PostgreSQL WAL written (bytes per message): a figure the machine's
other load does not move. Asserts nothing. Needs no
Kafka (nothing is published; the outbox rows stay in the database).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
from sqlalchemy.engine import make_url

from services.scheduler.service import Scheduler
from shared.db import create_engine, create_session_factory
from shared.kafka import create_broker, topics_from
from shared.settings import load_settings
from tools.infra.postgres import (
    PostgresServer,
    durability_label,
    durability_settings,
    run_migrations,
)

TAG = "bench"
ZONES = ("UTC", "Europe/Moscow", "Asia/Novosibirsk", "America/New_York")


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def load_clients(conninfo: str, clients: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # The load skips the triggers (the audience counts' deltas, the references):
        # the bench's own server, and expansion reads neither.
        conn.execute("SET session_replication_role = replica")
        conn.execute("INSERT INTO tag (name) VALUES (%s) ON CONFLICT DO NOTHING", (TAG,))
        conn.execute(
            """
            INSERT INTO client (phone, timezone)
            SELECT '7' || lpad((9000000000 + g)::text, 10, '0'),
                   (%(zones)s::text[])[1 + g %% cardinality(%(zones)s::text[])]
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": clients, "zones": list(ZONES)},
        )
        conn.execute(
            "INSERT INTO client_tag (client_id, tag_id) "
            "SELECT c.id, t.id FROM client c CROSS JOIN tag t WHERE t.name = %s",
            (TAG,),
        )
        conn.execute("VACUUM ANALYZE client")
        conn.execute("VACUUM ANALYZE client_tag")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def create_mailing(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO mailing (start_at, stop_at, text, filter_tags) VALUES "
            "(now() - interval '1 second', now() + interval '1 day', 'bench', ARRAY[%s]) "
            "RETURNING id",
            (TAG,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def wal_lsn(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def server_cpu(conninfo: str) -> dict[int, float]:
    """CPU seconds (user + system) of every process of the PostgreSQL server, by pid."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    postmaster = psutil.Process(int(row[0])).parent()
    assert postmaster is not None
    found: dict[int, float] = {}
    for process in [postmaster, *postmaster.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found[process.pid] = times.user + times.system
    return found


def outcome(conninfo: str, mailing_id: int) -> tuple[str, dict[str, int]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        state = conn.execute("SELECT state FROM mailing WHERE id = %s", (mailing_id,)).fetchone()
        counts = conn.execute(
            "SELECT status, count(*) FROM message WHERE mailing_id = %s GROUP BY 1 ORDER BY 1",
            (mailing_id,),
        ).fetchall()
    return (str(state[0]) if state else "?"), {str(s): int(n) for s, n in counts}


async def expand(database_url: str, conninfo: str, mailings: int) -> list[float]:
    settings = load_settings(
        database_url=database_url,
        kafka_bootstrap="127.0.0.1:9",
        log_level="WARNING",
        log_file=None,
    )
    engine = create_engine(settings, application_name="bench-expand")
    sessions = create_session_factory(engine)
    # Activation only writes the outbox: the broker is never started.
    broker = create_broker(settings, client_id="bench-expand")
    scheduler = Scheduler(sessions, broker, topics_from(settings), settings)
    rate = settings.expansion_max_rate
    print(
        f"pace: EXPANSION_MAX_RATE={rate}"
        + (" messages a second" if rate else " (no limit: as fast as PostgreSQL goes)"),
        flush=True,
    )
    seconds: list[float] = []
    try:
        for _ in range(mailings):
            mailing_id = create_mailing(conninfo)
            wal = wal_lsn(conninfo)
            cpu_before, own_before = server_cpu(conninfo), time.process_time()
            started = time.perf_counter()
            await scheduler.activate_due_mailings()
            took = time.perf_counter() - started
            own = time.process_time() - own_before
            cpu = sum(
                seconds - cpu_before.get(pid, 0.0) for pid, seconds in server_cpu(conninfo).items()
            )
            wal = wal_lsn(conninfo) - wal
            state, counts = outcome(conninfo, mailing_id)
            made = sum(counts.values())
            seconds.append(took)
            print(
                f"mailing {mailing_id}: expanded in {took:.2f} s, {state}, "
                f"messages {counts}; CPU: PostgreSQL {cpu:.2f} s, scheduler {own:.2f} s; "
                f"WAL {wal / 1e6:.0f} MB "
                f"({wal / max(made, 1):.0f} bytes per message)",
                flush=True,
            )
    finally:
        await engine.dispose()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--mailings", type=int, default=2)
    parser.add_argument("--fast-postgres", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="notifications-bench-expand-"))
    workdir.chmod(0o711)  # PostgreSQL may run as another user: let it traverse
    server = PostgresServer(workdir / "postgres", durable=not args.fast_postgres)
    try:
        server.start()
        print(f"{server.description}: {durability_label(durability_settings(server.url))}")
        database_url = server.url
        conninfo = libpq(database_url)
        run_migrations(database_url)
        loaded = load_clients(conninfo, args.clients)
        print(f"loaded {args.clients} clients in {loaded:.1f} s", flush=True)
        seconds = asyncio.run(expand(database_url, conninfo, args.mailings))
        print("expansion seconds: " + ", ".join(f"{s:.2f}" for s in seconds))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
