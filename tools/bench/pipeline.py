"""The pipeline driver: its own database, topics and sandbox, the services as processes,
the clients, one mailing, and the measurements while it runs (see `tools.bench`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import psycopg
from sqlalchemy.engine import make_url

from services.sandbox.ceiling import measure_ceiling
from services.sandbox.client import SandboxControl
from services.sandbox.process import SandboxProcess
from tools.bench.figures import PROBE, early_rate, timeline
from tools.bench.report import Progress, Results, per_process, percentile
from tools.bench.sampling import Sampler, find_kafka
from tools.infra import InfraError, PostgresServer, free_port, run_migrations
from tools.infra.postgres import durability_label, durability_settings

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

    from services.sandbox.client import LedgerSummary

REPO = Path(__file__).resolve().parents[2]
TOKEN = "bench-token"  # noqa: S105 (a throwaway token for the processes it starts)
TAG = "bench"
PENDING = ("scheduled", "queued", "sending", "retrying")
STATUS_ORDER = ("scheduled", "queued", "sending", "retrying", "sent", "failed", "expired")
PROGRESS_EVERY_S = 5.0


class BenchError(RuntimeError):
    """The bench could not set up or run the pipeline; the message says why."""


def libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def fmt_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def say(message: str) -> None:
    print(message, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clients: int = args.clients
        try:
            self.bootstrap = os.environ["KAFKA_BOOTSTRAP"]
        except KeyError as exc:
            raise BenchError(
                f"{exc.args[0]} is not set: run under `python -m tools.infra run -- ...`"
            ) from None
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.workdir = Path(tempfile.mkdtemp(prefix="notifications-bench-"))
        self.workdir.chmod(0o711)  # PostgreSQL may run as another user: let it traverse
        # a server of its own, so the durability settings are the ones asked for
        self.postgres = PostgresServer(self.workdir / "postgres", durable=not args.fast_postgres)
        self.admin_url = self.postgres.url
        self.database_url = ""
        self.conninfo = ""
        self.log_file = self.workdir / "statistic.log"
        self.sandbox = SandboxProcess(log_path=self.workdir / "sandbox.log")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.stderr_files: list[IO[bytes]] = []
        self.sampler = Sampler()
        # The bench's own queries during the run (progress, expansion watch) go through
        # one connection whose backend is watched as `bench-sql`, so the PostgreSQL
        # figure is the pipeline's alone (a count over a million-message mailing every
        # 5 s was about a tenth of PostgreSQL's CPU in a 1,000,000 run).
        self.probe: psycopg.AsyncConnection[Any] | None = None
        self.database_created = False
        self.results = Results(
            clients=self.clients, dispatchers=args.dispatchers, log_level=args.log_level
        )

    # --- setup ------------------------------------------------------------------------

    def start_postgres(self) -> None:
        try:
            self.postgres.start()
        except InfraError as exc:
            raise BenchError(f"PostgreSQL did not start: {exc}") from None
        self.admin_url = self.postgres.url
        url = make_url(self.admin_url).set(database=self.name)
        self.database_url = url.render_as_string(hide_password=False)
        self.conninfo = libpq(self.database_url)
        settings = durability_settings(self.admin_url)
        self.results.postgres_settings = settings
        self.results.postgres = durability_label(settings)

    def create_database(self) -> None:
        with psycopg.connect(libpq(self.admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.database_created = True
        run_migrations(self.database_url)

    def launch(self, service: str, name: str) -> None:
        port = free_port()
        self.ports[name] = port
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "KAFKA_TOPIC_PREFIX": f"{self.name}.",
            "DEV_MODE": "true",
            "API_TOKENS": TOKEN,
            "PROVIDER_URL": self.sandbox.provider_url,
            "LOG_FILE": str(self.log_file),
            "LOG_LEVEL": self.args.log_level,
            f"{service.upper()}_PORT": str(port),
        }
        stderr = (self.workdir / f"{name}.stderr").open("ab")
        self.stderr_files.append(stderr)
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        self.sampler.watch(name, self.processes[name].pid)

    async def wait_ready(self, name: str, timeout_s: float = 90.0) -> None:
        url = f"http://127.0.0.1:{self.ports[name]}/ready"
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                self.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} not ready at {url} after {timeout_s:.0f} s")
                await asyncio.sleep(0.2)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                tail = _tail(self.workdir / f"{name}.stderr")
                raise BenchError(f"{name} exited with code {code}; stderr tail:\n{tail}")
        if not self.sandbox.running():
            raise BenchError(f"the sandbox exited:\n{self.sandbox.log_tail()}")

    def load_clients(self) -> float:
        started = time.perf_counter()
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("INSERT INTO tag (name) VALUES (%s) ON CONFLICT DO NOTHING", (TAG,))
            conn.execute(
                """
                INSERT INTO client (phone, timezone)
                SELECT '7' || lpad((9000000000 + g)::text, 10, '0'), 'UTC'
                FROM generate_series(1, %s) AS g
                """,
                (self.clients,),
            )
            conn.execute(
                """
                INSERT INTO client_tag (client_id, tag_id)
                SELECT c.id, t.id FROM client c CROSS JOIN tag t WHERE t.name = %s
                """,
                (TAG,),
            )
            conn.execute("ANALYZE client")
            conn.execute("ANALYZE client_tag")
            conn.execute("ANALYZE tag")
        return time.perf_counter() - started

    # --- the run ----------------------------------------------------------------------

    async def run(self) -> int:
        r = self.results
        say(f"bench: database {self.name}, workdir {self.workdir}")
        await asyncio.to_thread(self.start_postgres)
        say(f"bench: {self.postgres.description}: {r.postgres}")
        await asyncio.to_thread(self.create_database)
        await asyncio.to_thread(self.sandbox.start, None, None, ledger_text=False)
        self.sampler.watch("sandbox", self.sandbox.pid)
        self.launch("api", "api")
        self.launch("scheduler", "scheduler")
        self.launch("reporter", "reporter")
        dispatchers = self.args.dispatchers
        for index in range(1, dispatchers + 1):
            self.launch("dispatcher", "dispatcher" if dispatchers == 1 else f"dispatcher{index}")
        await asyncio.gather(*(self.wait_ready(name) for name in self.processes))
        self.sampler.watch("postgres", self.postgres.pid)
        self.sampler.watch("kafka", find_kafka(self.bootstrap))
        self.sampler.watch("bench", os.getpid())
        self.probe = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        backend = await (await self.probe.execute("SELECT pg_backend_pid()")).fetchone()
        self.sampler.watch(PROBE, int(backend[0]) if backend else None)
        missing = {"postgres", "kafka"} - set(self.sampler.roots)
        say(
            "bench: services ready; watching "
            + ", ".join(f"{name}={pid}" for name, pid in self.sampler.roots.items())
            + (f" (not found: {', '.join(sorted(missing))})" if missing else "")
        )
        self.sampler.start()

        say(f"bench: loading {self.clients} clients ...")
        r.load_s = await asyncio.to_thread(self.load_clients)
        say(f"bench: loaded {self.clients} clients in {r.load_s:.1f} s")

        control = SandboxControl(self.sandbox.control_url)
        try:
            await self.measure(control)
        finally:
            await control.aclose()
        self.sampler.stop()
        # Closed after the last sample: an exited backend's CPU goes to the postmaster.
        await self.probe.close()
        r.peak_rss_mb = self.sampler.peaks_mb()
        r.peak_pss_mb = self.sampler.pss_peaks_mb()
        r.cpu_s = self.sampler.cpu_seconds()
        load = self.sampler.machine_load()
        r.busy_cores = load[0] if load else None

        # the ceiling alone: nothing of the pipeline may compete for the two cores
        self.stop_services()
        say("bench: measuring the sandbox's ceiling alone ...")
        ceiling = await measure_ceiling(requests=20_000, concurrency=64, ledger_text=False)
        r.ceiling = dataclasses.asdict(ceiling)
        if r.throughput_per_s is not None and ceiling.requests_per_s:
            r.ceiling_share = r.throughput_per_s / ceiling.requests_per_s
        say(f"bench: {ceiling.describe()}")
        return self.verdict()

    def verdict(self) -> int:
        r = self.results
        if not r.completed:
            r.failure = r.failure or (
                f"only {r.unique_accepted} of {r.clients} messages reached the gateway"
            )
        elif r.duplicate_count:
            r.failure = f"{r.duplicate_count} message ids were accepted more than once"
        return 1 if r.failure else 0

    async def measure(self, control: SandboxControl) -> None:
        r = self.results
        now = datetime.now(UTC)
        body = {
            "date_time_start": fmt_utc(now - timedelta(minutes=1)),
            "date_time_stop": fmt_utc(now + timedelta(hours=2)),
            "text": "Bench: your order is on its way",
            "tag": [TAG],
        }
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.ports['api']}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        ) as api:
            wal_before = await self.wal_counters()
            self.sampler.mark()  # CPU figures cover the mailing, not the client load
            t0 = time.time()
            response = await api.post("/api/v1/notifications/", json=body)
        if response.status_code != 201:
            raise BenchError(f"POST /api/v1/notifications/: {response.status_code} {response.text}")
        mailing_id = int(response.json()["id"])
        r.mailing_id = mailing_id
        say(f"bench: mailing {mailing_id} created at t0; waiting for {self.clients} sends")
        deadline = t0 + self.args.timeout

        expansion = asyncio.create_task(self.watch_expansion(mailing_id, t0, deadline))
        progress = asyncio.create_task(self.report_progress(mailing_id, control, t0))
        try:
            summary = await self.wait_complete(control, t0, deadline)
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        r.wall_s = time.time() - t0
        wal_after = await self.wal_counters()
        if not expansion.done():
            expansion.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expansion
        r.expansion_scheduler_s = await asyncio.to_thread(self.scheduler_seconds, mailing_id)
        r.final_statuses = await self.statuses(mailing_id)

        r.unique_accepted = summary["unique_accepted"]
        r.requests = summary["requests"]
        r.accepted = summary["accepted"]
        r.duplicate_count = summary["duplicate_count"]
        r.duplicate_deliveries = summary["duplicate_deliveries"]
        await self.ledger_figures(control, mailing_id, t0)
        if r.unique_accepted:
            r.wal_per_message = {
                name: (wal_after[name] - wal_before[name]) / r.unique_accepted
                for name in wal_before
            }

    async def wal_counters(self) -> dict[str, float]:
        """The cluster's WAL so far: bytes (its insert position, exact), records and
        full-page images (pg_stat_wal, flushed by the backends about once a second).
        Only this bench's database is busy in its server, so differences are the run's."""
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8, "
                "wal_records::float8, wal_fpi::float8 FROM pg_stat_wal"
            )
            row = await cursor.fetchone()
        wal_bytes, records, fpi = row if row else (0.0, 0.0, 0.0)
        return {"bytes": wal_bytes, "records": records, "full_page_images": fpi}

    async def watch_expansion(self, mailing_id: int, t0: float, deadline: float) -> None:
        """Poll every 0.2 s until all N messages exist.

        `count(*)` over the mailing's messages is a parallel seq scan (~85 ms at 10**6
        rows): run back to back it would eat most of a core the pipeline needs, so it runs
        at most every 0.2 s and ~5% of the wall time at most. The cheap probe in
        between is the mailing's `activated_at`, set right after the last batch commits;
        a final count confirms it.
        """
        r = self.results
        count_sql = "SELECT count(*) FROM message WHERE mailing_id = %s"
        activated_sql = "SELECT extract(epoch FROM activated_at)::float8 FROM mailing WHERE id = %s"
        async with self.probing() as conn:

            async def scalar(sql: str) -> Any:
                row = await (await conn.execute(sql, (mailing_id,))).fetchone()
                return row[0] if row else None

            next_count = 0.0
            while time.time() < deadline:
                activated = await scalar(activated_sql)
                if activated is not None or time.monotonic() >= next_count:
                    started = time.monotonic()
                    count = int(await scalar(count_sql) or 0)
                    spent = time.monotonic() - started
                    next_count = time.monotonic() + max(0.0, 20 * spent - 0.2)
                    r.messages_created = count
                    if count >= self.clients or activated is not None:
                        r.expansion_s = time.time() - t0
                        if activated is not None:
                            r.expansion_activated_s = float(activated) - t0
                        say(f"bench: {count} messages exist after {r.expansion_s:.2f} s")
                        return
                await asyncio.sleep(0.2)

    async def wait_complete(
        self, control: SandboxControl, t0: float, deadline: float
    ) -> LedgerSummary:
        r = self.results
        last_settled_check = -1.0
        while True:
            summary = await control.summary()
            r.unique_accepted = summary["unique_accepted"]
            if summary["unique_accepted"] >= self.clients:
                r.completed = True
                return summary
            self.check_alive()
            now = time.time()
            if now > deadline:
                r.failure = (
                    f"timed out after {self.args.timeout:.0f} s: "
                    f"{summary['unique_accepted']} of {self.clients} accepted"
                )
                say(f"bench: {r.failure}")
                return summary
            # every message final but some never reached the gateway: waiting is useless
            # (judged on the progress line's counts: no extra scan of the message table)
            latest = r.progress[-1] if r.progress else None
            if r.expansion_s is not None and latest and latest.elapsed_s > last_settled_check:
                last_settled_check = latest.elapsed_s
                statuses = latest.statuses
                if statuses and not set(PENDING) & set(statuses):
                    summary = await control.summary()
                    if summary["unique_accepted"] < self.clients:
                        r.failure = f"every message is final, but {statuses} at t0+{now - t0:.0f}s"
                        say(f"bench: {r.failure}")
                        return summary
            await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def probing(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The probe connection while the run is measured, else a connection of its own."""
        if self.probe is not None and not self.probe.closed:
            yield self.probe
            return
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            yield conn

    async def statuses(self, mailing_id: int) -> dict[str, int]:
        async with self.probing() as conn:
            cursor = await conn.execute(
                "SELECT status, count(*) FROM message WHERE mailing_id = %s GROUP BY status",
                (mailing_id,),
            )
            found = {str(status): int(count) for status, count in await cursor.fetchall()}
        ordered = {name: found.pop(name) for name in STATUS_ORDER if name in found}
        ordered.update(sorted(found.items()))
        return ordered

    async def outbox_backlog(self) -> int:
        async with self.probing() as conn:
            cursor = await conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def report_progress(self, mailing_id: int, control: SandboxControl, t0: float) -> None:
        last_at, last_accepted = t0, 0
        last_cpu_s = self.sampler.cpu_totals()
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S - (time.time() - t0) % PROGRESS_EVERY_S)
            try:
                summary = await control.summary()
                statuses = await self.statuses(mailing_id)
                backlog = await self.outbox_backlog()
            except (httpx.HTTPError, psycopg.Error) as exc:
                say(f"bench: progress probe failed: {exc!r}")
                continue
            now = time.time()
            cpu_s = self.sampler.cpu_totals()
            span = max(now - last_at, 1e-6)
            cpu = {
                name: max(0.0, 100.0 * (value - last_cpu_s.get(name, value)) / span)
                for name, value in cpu_s.items()
            }
            accepted = summary["unique_accepted"]
            rate = (accepted - last_accepted) / span
            point = Progress(
                elapsed_s=round(now - t0, 1),
                accepted=accepted,
                rate_per_s=round(rate, 1),
                statuses=statuses,
                outbox_unpublished=backlog,
                cpu_percent={name: round(value, 1) for name, value in cpu.items()},
            )
            self.results.progress.append(point)
            by_status = " ".join(f"{name}={count}" for name, count in statuses.items()) or "-"
            say(
                f"[{point.elapsed_s:6.1f}s] accepted {accepted:>8} (+{rate:6.0f}/s)  "
                f"messages {by_status}  outbox {backlog}  "
                f"cpu% {per_process(point.cpu_percent)}"
            )
            last_at, last_accepted, last_cpu_s = now, accepted, cpu_s

    def scheduler_seconds(self, mailing_id: int) -> float | None:
        """The `seconds` of the scheduler's `mailing_activated` line for this mailing."""
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), self.log_file.open("rb") as fh:
                for line in fh:
                    if b'"mailing_activated"' not in line:
                        continue
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if event.get("mailing_id") == mailing_id:
                            return float(event["seconds"])
            if time.monotonic() > deadline or self.args.log_level not in ("DEBUG", "INFO"):
                return None
            time.sleep(0.5)

    async def ledger_figures(self, control: SandboxControl, mailing_id: int, t0: float) -> None:
        r = self.results
        pairs = await control.accepted()
        if not pairs:
            return
        first: dict[int, float] = {}
        for msg_id, at in pairs:
            first.setdefault(msg_id, at)
        last = max(first.values())
        r.first_message_s = min(first.values()) - t0
        if r.completed:
            r.end_to_end_s = last - t0
            r.throughput_per_s = self.clients / r.end_to_end_s
        else:  # what it managed so far
            r.end_to_end_s = last - t0
            r.throughput_per_s = len(first) / r.end_to_end_s
        early = early_rate(first.values(), t0)
        if early is not None:
            r.first_10s_per_s, r.first_window_s = early
            if r.throughput_per_s:
                r.first_10s_ratio = r.first_10s_per_s / r.throughput_per_s

        r.timeline_bucket_s, r.timeline_per_s = timeline(first.values(), t0, last)

        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT id, extract(epoch FROM due_at)::float8 FROM message "
                "WHERE mailing_id = %s AND due_at IS NOT NULL",
                (mailing_id,),
            )
            rows = await cursor.fetchall()
        latencies = sorted(
            first[msg_id] - due for msg_id, due in rows if msg_id in first and due is not None
        )
        if latencies:
            r.latency_samples = len(latencies)
            r.latency_p50_s = percentile(latencies, 0.50)
            r.latency_p99_s = percentile(latencies, 0.99)
            r.latency_max_s = latencies[-1]

    # --- teardown ---------------------------------------------------------------------

    def stop_services(self, grace_s: float = 20.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.sandbox.stop()

    def cleanup(self, *, keep_workdir: bool) -> None:
        """Stop everything this bench started; synchronous so it survives cancellation."""
        self.sampler.stop()
        if not self.results.peak_rss_mb:  # the run ended early: report what was sampled
            self.results.peak_rss_mb = self.sampler.peaks_mb()
            self.results.peak_pss_mb = self.sampler.pss_peaks_mb()
            self.results.cpu_s = self.sampler.cpu_seconds()
            load = self.sampler.machine_load()
            self.results.busy_cores = load[0] if load else None
        with contextlib.suppress(Exception):
            self.stop_services()
        for handle in self.stderr_files:
            handle.close()
        if self.database_created:
            if self.args.keep:
                say(
                    f"bench: kept database {self.name} (--keep) in the PostgreSQL data "
                    f"directory {self.postgres.datadir} (the server is stopped)"
                )
            else:
                try:
                    with psycopg.connect(libpq(self.admin_url), autocommit=True) as conn:
                        conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                except psycopg.Error as exc:
                    say(f"bench: could not drop database {self.name}: {exc}")
        self.postgres.stop()
        if keep_workdir or self.args.keep:
            say(f"bench: logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"
