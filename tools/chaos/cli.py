"""`python -m tools.chaos` (`make chaos`): the chaos soak, end to end, on this machine.

Starts its own PostgreSQL, Kafka, gateway sandbox and services (two dispatchers), each
service supervised; loads the workload through the API; runs the faults; waits for
everything to drain; prints one table and exits 0 only when every target is met
(1: a target missed; 2: the soak itself could not run).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from services.sandbox.client import SandboxControl
from tools.chaos import faults as chaos_faults
from tools.chaos.faults import FaultPlan, FaultRunner
from tools.chaos.report import DatabaseView, Figures, analyse, render, write_json
from tools.chaos.stack import SERVICE_ENV, SERVICES, TOKEN, Stack
from tools.chaos.workload import apply_edit, create_mailings, load_clients, plan

if TYPE_CHECKING:
    from collections.abc import Sequence

    from services.sandbox.client import LedgerEntry
    from tools.chaos.workload import Workload

PENDING = ("scheduled", "queued", "sending", "retrying")
PRESETS: dict[str, dict[str, Any]] = {
    # `make chaos`: about 10 minutes of faults, then the drain
    "full": {
        "clients": 6000,
        "duration": 600.0,
        "kills": 3,
        "postgres_restarts": 2,
        "kafka_restarts": 1,
        "outage": 30.0,
        "drain_timeout": 600.0,
    },
    # tests/e2e/test_chaos.py: a few minutes, one of each fault
    "quick": {
        "clients": 2000,
        "duration": 150.0,
        "kills": 1,
        "postgres_restarts": 1,
        "kafka_restarts": 1,
        "outage": 10.0,
        "drain_timeout": 300.0,
    },
}


def say(message: str) -> None:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    print(f"chaos {stamp} {message}", file=sys.stderr, flush=True)


def read_database(conninfo: str) -> DatabaseView:
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        statuses = {
            (int(m), int(c)): str(s)
            for m, c, s in conn.execute("SELECT mailing_id, client_id, status FROM message")
        }
        counts = {
            (int(m), str(s)): int(n)
            for m, s, n in conn.execute(
                "SELECT mailing_id, status, count(*) FROM message GROUP BY 1, 2"
            )
        }
        counters = {
            (int(m), str(s)): int(n)
            for m, s, n in conn.execute(
                "SELECT mailing_id, status, count FROM mailing_status_count WHERE count <> 0"
            )
        }
        row = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
    return DatabaseView(statuses, counts, counters, int(row[0]) if row else 0)


def drained(view: DatabaseView) -> bool:
    pending = any(status in PENDING for status in view.statuses.values())
    return not pending and view.counts == view.counters and view.unpublished_outbox == 0


async def wait_drained(conninfo: str, limit_s: float) -> tuple[bool, float, DatabaseView | None]:
    """Poll until nothing is pending, the counters equal COUNT(*) and the outbox is empty."""
    deadline = time.monotonic() + limit_s
    view: DatabaseView | None = None
    last_note = 0.0
    while True:
        try:
            view = await asyncio.to_thread(read_database, conninfo)
        except psycopg.Error as exc:
            say(f"drain: database not answering ({type(exc).__name__})")
        else:
            if drained(view):
                return True, time.time(), view
            if time.monotonic() - last_note > 30:
                last_note = time.monotonic()
                pending = Counter(s for s in view.statuses.values() if s in PENDING)
                waiting = " ".join(f"{status}={n}" for status, n in sorted(pending.items()))
                behind = sum(
                    1
                    for cell in set(view.counts) | set(view.counters)
                    if view.counts.get(cell, 0) != view.counters.get(cell, 0)
                )
                say(
                    f"drain: pending {waiting or 'none'}, counters wrong in {behind} cells, "
                    f"outbox {view.unpublished_outbox}"
                )
        if time.monotonic() > deadline:
            return False, time.time(), view
        await asyncio.sleep(2.0)


async def read_ledger(control_url: str) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    async with SandboxControl(control_url, timeout_s=120) as control:
        while True:
            page = await control.entries(accepted=True, limit=50_000, offset=len(entries))
            entries.extend(page)
            if len(page) < 50_000:
                return entries


def error_lines(logs: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, _module in SERVICES:
        path = logs / f"{name}.jsonl"
        count = 0
        if path.exists():
            with path.open("rb") as fh:
                for line in fh:
                    with contextlib.suppress(ValueError):
                        if str(json.loads(line).get("level", "")).lower() == "error":
                            count += 1
        counts[name] = count
    return counts


async def soak(args: argparse.Namespace, workdir: Path, stack: Stack) -> Figures:
    fault_plan = FaultPlan(
        kills_per_service=args.kills if args.faults == "on" else 0,
        postgres_restarts=args.postgres_restarts if args.faults == "on" else 0,
        kafka_restarts=args.kafka_restarts if args.faults == "on" else 0,
        postgres_down_s=args.postgres_down,
        kafka_down_s=args.kafka_down,
        outage_s=args.outage if args.faults == "on" else 0.0,
    )
    await asyncio.to_thread(stack.start, say)
    workload: Workload = plan(args.clients, args.duration, args.seed)
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as api:
        started = time.monotonic()
        await load_clients(api, workload)
        say(f"{len(workload.clients)} clients loaded in {time.monotonic() - started:.0f}s")
        workload.restart_clock()
        await create_mailings(api, workload)
        t0 = time.monotonic()
        for mailing in workload.mailings:
            window = (
                f"window {mailing.window.start:%H:%M}-{mailing.window.end:%H:%M} Moscow"
                if mailing.window
                else "no window"
            )
            say(
                f"mailing {mailing.id} {mailing.key}: start {mailing.start:%H:%M:%S}, "
                f"stop {mailing.stop:%Y-%m-%d %H:%M:%S}, {window}"
            )
        runner = FaultRunner(stack, fault_plan, say)
        edited = workload.edited
        assert edited.edit_at is not None

        async def edit() -> None:
            assert edited.edit_at is not None
            await asyncio.sleep(max(0.0, edited.edit_at.timestamp() - time.time()))
            await apply_edit(api, edited)
            say(f"mailing {edited.id} edited (filter and text)")

        await asyncio.gather(runner.run(t0, args.duration), edit())
    # the drain is timed from the end of the last fault; the final figures are read once
    # the last stop time has passed too
    say("faults done; waiting for the drain")
    ok, drained_at, view = await wait_drained(stack.postgres.conninfo, args.drain_timeout)
    rest = workload.end.timestamp() - time.time()
    if rest > 0:
        say(f"drained; the last stop time is in {rest:.0f}s")
        await asyncio.sleep(rest)
    if ok:  # still drained at the end?
        ok, _, view = await wait_drained(stack.postgres.conninfo, args.drain_timeout)
    if view is None:
        view = await asyncio.to_thread(read_database, stack.postgres.conninfo)
    ledger = await read_ledger(stack.sandbox.control_url)
    kill_window = float(SERVICE_ENV["PROVIDER_TIMEOUT_S"]) + 1.0
    figures = analyse(
        workload,
        ledger,
        view,
        runner.dispatcher_kills(),
        kill_window,
        gateway_cuts=runner.gateway_cuts(),
    )
    reference = runner.last_fault_end or workload.end.timestamp()
    figures.drained = ok
    figures.seconds_to_drain = max(0.0, drained_at - reference) if ok else None
    figures.error_log_lines = error_lines(workdir / "logs")
    assert stack.supervisor is not None
    figures.services = stack.supervisor.summary()
    figures.faults = runner.as_json()
    figures.settings = {
        "clients": args.clients,
        "duration_s": args.duration,
        "seed": args.seed,
        "faults": args.faults,
        "sandbox_faults": chaos_faults.SANDBOX_FAULTS if args.faults == "on" else {},
        "service_env": SERVICE_ENV,
        "kafka": stack.kafka.description,
        "postgres": stack.postgres.description,
        "workdir": str(workdir),
    }
    # how much sending each fault met: acceptances within 5 s of its start or its end
    times = sorted(float(entry["at_epoch"]) for entry in ledger)
    for fault in figures.faults:
        low, high = fault["started_at"] - 5, fault["ended_at"] + 5
        fault["accepted_around"] = bisect.bisect_right(times, high) - bisect.bisect_left(times, low)
    if times:
        figures.settings["accepted_from_s"] = round(times[0] - workload.t0.timestamp(), 1)
        figures.settings["accepted_until_s"] = round(times[-1] - workload.t0.timestamp(), 1)
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos",
        description="Chaos soak: the whole stack under kills, restarts and gateway faults.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--clients", type=int, help="clients loaded through the API")
    parser.add_argument("--duration", type=float, help="seconds of the fault phase")
    parser.add_argument("--kills", type=int, help="kill -9 of each service, times")
    parser.add_argument("--postgres-restarts", type=int)
    parser.add_argument("--kafka-restarts", type=int)
    parser.add_argument("--outage", type=float, help="seconds of the gateway outage")
    parser.add_argument("--postgres-down", type=float, default=5.0)
    parser.add_argument("--kafka-down", type=float, default=10.0)
    parser.add_argument("--drain-timeout", type=float)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", choices=("on", "off"), default="on")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--workdir", type=Path, help="keep data and logs here (kept)")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.clients < 100 or args.duration < 60:
        parser.error("use at least 100 clients and 60 s")
    return args


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    created = args.workdir is None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="notifications-chaos-"))).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o711)  # PostgreSQL may run as another user: let it traverse
    faults = {**chaos_faults.SANDBOX_FAULTS, "seed": args.seed} if args.faults == "on" else None
    stack = Stack(workdir, faults)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    code = 2
    try:
        figures = asyncio.run(soak(args, workdir, stack))
        print(render(figures), flush=True)
        if args.json:
            write_json(args.json, figures)
        code = 0 if not figures.misses() else 1
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        code = 130
    except Exception as exc:
        say(f"error: the soak could not run: {type(exc).__name__}: {exc}")
        code = 2
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()
        if created and code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        elif created:
            for data in ("postgres", "kafka"):
                shutil.rmtree(workdir / data, ignore_errors=True)
        if code != 0:
            say(f"logs kept in {workdir / 'logs'}")
    return code
