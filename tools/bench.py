"""`make bench`: the whole pipeline on one big mailing, end to end, on this machine.

    python -m tools.infra run -- python -m tools.bench [--clients 100000] [--timeout 600]
        [--dispatchers 1] [--log-level INFO] [--json PATH] [--keep]

Creates a database of its own (migrated), a Kafka topic prefix of its own and a
zero-fault gateway sandbox (compact ledger); starts api, scheduler, reporter and
dispatcher(s) as processes; loads N clients tagged `bench` straight into PostgreSQL;
creates one mailing for the tag through the API and measures, from just before that POST:

* audience expansion: until all N messages exist (and the scheduler's own figure);
* end to end: N / (last gateway arrival - t0), and the wall time until the bench saw it;
* due -> gateway latency per message (due_at to its first accepted arrival);
* duplicates at the gateway, requests against accepted;
* peak RSS of every process (PostgreSQL's backends summed, and its PSS, which does not
  count shared buffers once per backend; Kafka's JVM), sampled every 0.5 s from /proc;
* CPU seconds per process from t0, CPU milliseconds per delivered message (steadier
  than msg/s on a shared machine) and how busy the whole machine was: `other` is CPU
  used by processes outside the pipeline, e.g. a test run on the same cores;
* the sandbox's ceiling measured alone afterwards, and the share of it the pipeline used.

A progress line every 5 s (accepted so far, messages by status, outbox backlog, CPU per
process) shows where messages sit if the pipeline is slow. Everything it started is
stopped and its database dropped (unless --keep), also on Ctrl-C or failure; the logs
(services' JSON log, stderr, sandbox) are kept when the run fails.

Exit code: 0 when all N messages reached the gateway exactly once; 1 when it timed
out, stalled or saw duplicates (the report says how far it got). At ~500 msg/s a
mailing of 10**6 takes over half an hour: give `--timeout` accordingly.

Needs DATABASE_URL and KAFKA_BOOTSTRAP (run it under `python -m tools.infra run`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
from tools.infra import free_port, run_migrations

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable

    from services.sandbox.client import LedgerSummary

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"  # noqa: S105 (a throwaway token for the processes it starts)
TAG = "bench"
PENDING = ("scheduled", "queued", "sending", "retrying")
STATUS_ORDER = ("scheduled", "queued", "sending", "retrying", "sent", "failed", "expired")
PROGRESS_EVERY_S = 5.0
SAMPLE_EVERY_S = 0.5
# PostgreSQL's summed VmRSS counts shared buffers once per backend; its PSS (shared pages
# split among their users) adds up. smaps_rollup is costlier to read: every 4th sample.
PSS_EVERY = 4
OTHER = "other"  # CPU of the machine outside the watched processes
LABEL = 30  # width of the report's first column

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


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


# ------------------------------------------------------------------ process sampling


@dataclasses.dataclass(slots=True)
class _ProcInfo:
    ppid: int
    ticks: int  # utime + stime + cutime + cstime
    rss_kb: int


def _read_proc(pid: int) -> _ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after its last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17, rss 24
    try:
        ticks = sum(int(value) for value in fields[11:15])
        return _ProcInfo(ppid=int(fields[1]), ticks=ticks, rss_kb=int(fields[21]) * _PAGE_KB)
    except (IndexError, ValueError):
        return None


def _vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0  # a zombie or kernel thread: no VmRSS line


def _pss_kb(pid: int) -> int | None:
    """Proportional set size: shared pages split among their users, so it adds up."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0


def _machine_busy_ticks() -> int:
    """CPU time of the whole machine (all cores) not idle, from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as fh:
            fields = [int(value) for value in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [part.decode(errors="replace") for part in fh.read().split(b"\0") if part]
    except OSError:
        return []


def listening_pid(port: int) -> int | None:
    """The process holding a listening TCP socket on `port` (via /proc/net and fds)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                        return pid
    return None


def find_postgres(database_url: str) -> int | None:
    """The postmaster serving `database_url`: the listener on its port, else by cmdline."""
    port = make_url(database_url).port or 5432
    pid = listening_pid(port)
    if pid is not None:
        return pid
    for candidate in _all_pids():
        argv = _cmdline(candidate)
        if argv and Path(argv[0]).name in ("postgres", "postmaster"):
            info = _read_proc(candidate)
            parent = _cmdline(info.ppid) if info else []
            is_postmaster = not parent or Path(parent[0]).name not in ("postgres", "postmaster")
            if is_postmaster and (str(port) in argv or len(argv) == 1):
                return candidate
    return None


def find_kafka(bootstrap: str) -> int | None:
    """The broker behind the first bootstrap address: the listener, else the one java
    process running Kafka."""
    port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    pid = listening_pid(port)
    if pid is not None:
        return pid
    java = [
        candidate
        for candidate in _all_pids()
        if (argv := _cmdline(candidate))
        and Path(argv[0]).name == "java"
        and any("kafka" in part.lower() for part in argv)
    ]
    return java[0] if len(java) == 1 else None


class Sampler(threading.Thread):
    """Every 0.5 s: RSS (VmRSS) and CPU ticks of each watched process tree.

    A tree is a root pid and all its descendants (the postmaster and its backends), summed.
    """

    def __init__(self, interval_s: float = SAMPLE_EVERY_S) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval_s = interval_s
        self.roots: dict[str, int] = {}
        self.peak_kb: dict[str, int] = {}
        self.peak_pss_kb: dict[str, int] = {}
        self.first_ticks: dict[str, int] = {}
        self.last_ticks: dict[str, int] = {}
        self.seen_ticks: dict[str, int] = {}  # highest tree total seen (trees may shrink)
        self.samples = 0
        self.machine_first: tuple[float, int] | None = None  # (monotonic, busy ticks)
        self.machine_last: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def watch(self, name: str, pid: int | None) -> None:
        if pid is None:
            return
        with self._lock:
            self.roots[name] = pid

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.monotonic()
            with contextlib.suppress(Exception):  # a sampler must never kill the bench
                self.sample()
            self._stop_event.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5)

    def sample(self) -> None:
        with self._lock:
            roots = dict(self.roots)
        if not roots:
            return
        machine = (time.monotonic(), _machine_busy_ticks())
        infos = {pid: info for pid in _all_pids() if (info := _read_proc(pid)) is not None}
        children: dict[int, list[int]] = {}
        for pid, info in infos.items():
            children.setdefault(info.ppid, []).append(pid)
        with self._lock:
            for name, root in roots.items():
                if root not in infos:
                    continue
                others = {pid for other, pid in roots.items() if other != name}
                tree = _descendants(root, children, stop=others)
                rss = sum(_vm_rss_kb(pid) or 0 for pid in tree)
                ticks = sum(infos[pid].ticks for pid in tree if pid in infos)
                self.peak_kb[name] = max(self.peak_kb.get(name, 0), rss)
                if name == "postgres" and self.samples % PSS_EVERY == 0:
                    pss = sum(_pss_kb(pid) or 0 for pid in tree)
                    self.peak_pss_kb[name] = max(self.peak_pss_kb.get(name, 0), pss)
                self.first_ticks.setdefault(name, ticks)
                # a backend that exits before the postmaster reaps it drops out of the sum
                self.seen_ticks[name] = max(self.seen_ticks.get(name, 0), ticks)
                self.last_ticks[name] = self.seen_ticks[name]
            if self.machine_first is None:
                self.machine_first = machine
            self.machine_last = machine
            self.samples += 1

    def mark(self) -> None:
        """Count CPU from the latest sample on (peaks keep counting from the start)."""
        with self._lock:
            self.first_ticks = dict(self.last_ticks)
            self.machine_first = self.machine_last

    def cpu_ticks(self) -> dict[str, int]:
        """Cumulative ticks per watched tree, and `other`: the rest of the machine (other
        processes, e.g. someone's test run on the same cores)."""
        with self._lock:
            ticks = dict(self.last_ticks)
            if self.machine_last is not None:
                ticks[OTHER] = self.machine_last[1] - sum(ticks.values())
            return ticks

    def cpu_seconds(self) -> dict[str, float]:
        with self._lock:
            seconds = {
                name: (self.last_ticks[name] - self.first_ticks[name]) / _CLK_TCK
                for name in self.last_ticks
            }
            if self.machine_first is not None and self.machine_last is not None:
                machine = (self.machine_last[1] - self.machine_first[1]) / _CLK_TCK
                seconds[OTHER] = max(0.0, machine - sum(seconds.values()))
            return seconds

    def machine_load(self) -> tuple[float, float] | None:
        """(average busy cores, wall seconds) between the first and the last sample."""
        with self._lock:
            if self.machine_first is None or self.machine_last is None:
                return None
            wall = self.machine_last[0] - self.machine_first[0]
            if wall <= 0:
                return None
            busy = (self.machine_last[1] - self.machine_first[1]) / _CLK_TCK
            return busy / wall, wall

    def peaks_mb(self) -> dict[str, float]:
        with self._lock:
            return {name: kb / 1024 for name, kb in self.peak_kb.items()}

    def pss_peaks_mb(self) -> dict[str, float]:
        with self._lock:
            return {name: kb / 1024 for name, kb in self.peak_pss_kb.items()}


def _descendants(root: int, children: dict[int, list[int]], stop: set[int]) -> list[int]:
    """`root` and its descendants, leaving out the subtrees of `stop` (watched apart:
    the services are this bench's children but are not counted as the bench)."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(child for child in children.get(pid, ()) if child not in stop)
    return found


# -------------------------------------------------------------------------- results


@dataclasses.dataclass
class Progress:
    elapsed_s: float
    accepted: int
    rate_per_s: float
    statuses: dict[str, int]
    outbox_unpublished: int
    cpu_percent: dict[str, float]


@dataclasses.dataclass
class Results:
    clients: int
    dispatchers: int
    log_level: str
    load_s: float | None = None
    mailing_id: int | None = None
    messages_created: int | None = None
    expansion_s: float | None = None
    expansion_scheduler_s: float | None = None
    expansion_activated_s: float | None = None  # mailing.activated_at - t0
    completed: bool = False
    unique_accepted: int = 0
    requests: int = 0
    accepted: int = 0
    duplicate_count: int = 0
    duplicate_deliveries: int = 0
    end_to_end_s: float | None = None
    throughput_per_s: float | None = None
    wall_s: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    latency_max_s: float | None = None
    latency_samples: int = 0
    timeline_bucket_s: float | None = None
    timeline_per_s: list[float] = dataclasses.field(default_factory=list)
    final_statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    peak_rss_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    peak_pss_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)
    busy_cores: float | None = None  # the machine's average, all processes
    cores: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    ceiling: dict[str, Any] | None = None
    ceiling_share: float | None = None
    progress: list[Progress] = dataclasses.field(default_factory=list)
    failure: str | None = None


def percentile(ordered: list[float], share: float) -> float:
    index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[index]


def _seconds(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def _row(label: str, value: str) -> str:
    return f"{label:<{LABEL}}{value}"


def _per_process(values: dict[str, float], digits: int = 0) -> str:
    return "  ".join(f"{name} {value:.{digits}f}" for name, value in values.items()) or "n/a"


def render(results: Results) -> str:
    r = results
    lines = ["", "=" * 78]
    dispatchers = f"{r.dispatchers} dispatcher" + ("s" if r.dispatchers != 1 else "")
    lines.append(_row("clients", f"{r.clients}   ({dispatchers}, LOG_LEVEL {r.log_level})"))
    lines.append(_row("client load (not a target)", _seconds(r.load_s, 1)))
    expansion = f"{_seconds(r.expansion_s)} (scheduler: {_seconds(r.expansion_scheduler_s)}"
    if r.expansion_activated_s is not None:
        expansion += f"; activated_at: t0 + {r.expansion_activated_s:.2f} s"
    if r.messages_created is not None and r.messages_created != r.clients:
        expansion += f"; {r.messages_created} messages"
    lines.append(_row("audience expansion", expansion + ")"))
    if r.end_to_end_s is not None and r.throughput_per_s is not None:
        wall = _seconds(r.wall_s, 1)
        end_to_end = f"{r.end_to_end_s:.1f} s  -> {r.throughput_per_s:.0f} msg/s  (wall {wall})"
    else:
        end_to_end = "n/a"
    if not r.completed:
        end_to_end += f"  INCOMPLETE: {r.unique_accepted}/{r.clients} accepted"
    lines.append(_row("end to end", end_to_end))
    if r.timeline_per_s:
        width = r.timeline_bucket_s or 0
        rates = " ".join(f"{rate:.0f}" for rate in r.timeline_per_s)
        lines.append(_row(f"msg/s per {width:.0f} s from t0", rates))
    if r.latency_p50_s is not None:
        latency = (
            f"p50 {r.latency_p50_s:.1f} s  p99 {r.latency_p99_s or 0:.1f} s  "
            f"max {r.latency_max_s or 0:.1f} s  ({r.latency_samples} messages)"
        )
    else:
        latency = "n/a"
    lines.append(_row("due -> gateway latency", latency))
    duplicates = f"{r.duplicate_count}   (requests {r.requests}, accepted {r.accepted})"
    if r.duplicate_count:
        duplicates += f"  DUPLICATES: {r.duplicate_deliveries} extra deliveries"
    lines.append(_row("duplicates", duplicates))
    if r.final_statuses:
        statuses = "  ".join(f"{name} {count}" for name, count in r.final_statuses.items())
        lines.append(_row("messages by status (end)", statuses))
    lines.append(_row("peak RSS (MB)", _per_process(r.peak_rss_mb)))
    if r.peak_pss_mb:
        lines.append(_row("peak PSS (MB, shared split)", _per_process(r.peak_pss_mb)))
    lines.append(_row("CPU seconds (from t0)", _per_process(r.cpu_s, 1)))
    pipeline_cpu = {k: v for k, v in r.cpu_s.items() if k not in ("bench", OTHER)}
    if pipeline_cpu and r.unique_accepted:
        # robust against a busy machine, unlike msg/s: what each message costs in CPU
        per_message = {k: 1000 * v / r.unique_accepted for k, v in pipeline_cpu.items()}
        total = sum(per_message.values())
        lines.append(
            _row("CPU ms per message", f"{total:.2f} in all:  {_per_process(per_message, 2)}")
        )
    if r.busy_cores is not None:
        other = r.cpu_s.get(OTHER, 0.0)
        outside = other / max(sum(r.cpu_s.values()), 1e-9)
        lines.append(
            _row(
                "machine CPU busy",
                f"{r.busy_cores:.2f} of {r.cores} cores on average "
                f"({outside:.0%} of it outside the pipeline: '{OTHER}')",
            )
        )
    if r.ceiling is not None:
        share = f"{r.ceiling_share:.1%}" if r.ceiling_share is not None else "n/a"
        lines.append(
            _row(
                "sandbox ceiling (alone)",
                f"{r.ceiling['requests_per_s']:.0f} req/s  -> pipeline uses {share} of it",
            )
        )
    else:
        lines.append(_row("sandbox ceiling (alone)", "not measured"))
    if r.failure:
        lines.append(_row("FAILED", r.failure))
    lines.append("=" * 78)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clients: int = args.clients
        try:
            self.admin_url = os.environ["DATABASE_URL"]
            self.bootstrap = os.environ["KAFKA_BOOTSTRAP"]
        except KeyError as exc:
            raise BenchError(
                f"{exc.args[0]} is not set: run under `python -m tools.infra run -- ...`"
            ) from None
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.database_url = make_url(self.admin_url).set(database=self.name).render_as_string(False)
        self.conninfo = libpq(self.database_url)
        self.workdir = Path(tempfile.mkdtemp(prefix="notifications-bench-"))
        self.log_file = self.workdir / "statistic.log"
        self.sandbox = SandboxProcess(log_path=self.workdir / "sandbox.log")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.stderr_files: list[IO[bytes]] = []
        self.sampler = Sampler()
        self.database_created = False
        self.results = Results(
            clients=self.clients, dispatchers=args.dispatchers, log_level=args.log_level
        )

    # --- setup ------------------------------------------------------------------------

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
        self.sampler.watch("postgres", find_postgres(self.admin_url))
        self.sampler.watch("kafka", find_kafka(self.bootstrap))
        self.sampler.watch("bench", os.getpid())
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
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:

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

    async def statuses(self, mailing_id: int) -> dict[str, int]:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT status, count(*) FROM message WHERE mailing_id = %s GROUP BY status",
                (mailing_id,),
            )
            found = {str(status): int(count) for status, count in await cursor.fetchall()}
        ordered = {name: found.pop(name) for name in STATUS_ORDER if name in found}
        ordered.update(sorted(found.items()))
        return ordered

    async def outbox_backlog(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            cursor = await conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def report_progress(self, mailing_id: int, control: SandboxControl, t0: float) -> None:
        last_at, last_accepted = t0, 0
        last_ticks = self.sampler.cpu_ticks()
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
            ticks = self.sampler.cpu_ticks()
            span = max(now - last_at, 1e-6)
            cpu = {
                name: max(0.0, 100.0 * (value - last_ticks.get(name, value)) / _CLK_TCK / span)
                for name, value in ticks.items()
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
                f"cpu% {_per_process(point.cpu_percent)}"
            )
            last_at, last_accepted, last_ticks = now, accepted, ticks

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
        if r.completed:
            r.end_to_end_s = last - t0
            r.throughput_per_s = self.clients / r.end_to_end_s
        else:  # what it managed so far
            r.end_to_end_s = last - t0
            r.throughput_per_s = len(first) / r.end_to_end_s

        span = max(last - t0, 1e-6)
        width = max(5.0, math.ceil(span / 20 / 5) * 5)
        buckets = [0] * (int(span // width) + 1)
        for at in first.values():
            buckets[max(0, int((at - t0) // width))] += 1
        r.timeline_bucket_s = width
        last_width = span - width * (len(buckets) - 1)  # the last bucket is partial
        r.timeline_per_s = [
            round(count / (width if index < len(buckets) - 1 else max(last_width, 1.0)), 1)
            for index, count in enumerate(buckets)
        ]

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
                say(f"bench: kept database {self.name} (--keep): {self.database_url}")
            else:
                try:
                    with psycopg.connect(libpq(self.admin_url), autocommit=True) as conn:
                        conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                except psycopg.Error as exc:
                    say(f"bench: could not drop database {self.name}: {exc}")
        if keep_workdir or self.args.keep:
            say(f"bench: logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def write_json(path: str, results: Results) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(results), indent=2) + "\n")


async def amain(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    bench = Bench(args)
    code = 1
    try:
        code = await bench.run()
    except BenchError as exc:
        bench.results.failure = str(exc).splitlines()[0]
        say(f"bench: error: {exc}")
    except asyncio.CancelledError:
        bench.results.failure = "interrupted"
        raise
    finally:
        failed = code != 0
        bench.cleanup(keep_workdir=failed)
        say(render(bench.results))
        if args.json:
            write_json(args.json, bench.results)
            say(f"bench: results written to {args.json}")
    return code


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--clients", type=int, default=100_000, help="audience size (100000)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds from the POST until all sent (600)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--dispatchers", type=int, default=1, help="dispatcher processes (1)")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.clients < 1 or args.clients > 999_999_999:
        parser.error("--clients must be between 1 and 999999999")
    if args.dispatchers < 1:
        parser.error("--dispatchers must be at least 1")
    return args


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(amain(args))
    except KeyboardInterrupt:
        say("bench: interrupted")
        return 130
    except asyncio.CancelledError:
        say("bench: stopped by SIGTERM")
        return 143


if __name__ == "__main__":
    raise SystemExit(main())
