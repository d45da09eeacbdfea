"""The bench's view of the processes it measures: peak memory and CPU per process tree.

Read through psutil: `Sampler` sums each watched tree (a root pid and its descendants,
e.g. the postmaster and its backends) every 0.5 s; `find_postgres` and `find_kafka`
name the root of the infrastructure the run uses.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import make_url

SAMPLE_EVERY_S = 0.5
# PostgreSQL's summed RSS counts shared buffers once per backend; its PSS (shared pages
# split among their users) adds up. PSS is costlier to read: every 4th sample.
PSS_EVERY = 4
OTHER = "other"  # CPU of the machine outside the watched processes

_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def _cpu_s(times: Any) -> float:
    """A process's CPU seconds, its waited-for children's included (utime + stime +
    cutime + cstime)."""
    if times is None:
        return 0.0
    return float(times.user + times.system + times.children_user + times.children_system)


def _machine_busy_s() -> float:
    """CPU seconds of the whole machine (all cores) not idle."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(*_GONE):
        return int(psutil.Process(pid).memory_info().rss // 1024)
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split among their users, so it adds up."""
    with contextlib.suppress(*_GONE):
        return int(psutil.Process(pid).memory_full_info().pss // 1024)
    return 0


def _name(argv: list[str]) -> str:
    return Path(argv[0]).name if argv else ""


def _cmdline(pid: int) -> list[str]:
    with contextlib.suppress(*_GONE):
        return psutil.Process(pid).cmdline()
    return []


def listening_pid(port: int) -> int | None:
    """The process holding a listening TCP socket on `port`."""
    with contextlib.suppress(psutil.AccessDenied):
        for conn in psutil.net_connections(kind="tcp"):
            address = conn.laddr
            if conn.status != psutil.CONN_LISTEN or not isinstance(address, tuple) or not address:
                continue
            if address[1] == port and conn.pid is not None:
                return conn.pid
    return None


def find_postgres(database_url: str) -> int | None:
    """The postmaster serving `database_url`: the listener on its port, else by cmdline."""
    port = make_url(database_url).port or 5432
    pid = listening_pid(port)
    if pid is not None:
        return pid
    for process in psutil.process_iter(["cmdline", "ppid"]):
        argv = process.info["cmdline"] or []
        if _name(argv) in ("postgres", "postmaster"):
            parent = _cmdline(process.info["ppid"]) if process.info["ppid"] else []
            is_postmaster = not parent or _name(parent) not in ("postgres", "postmaster")
            if is_postmaster and (str(port) in argv or len(argv) == 1):
                return int(process.pid)
    return None


def find_kafka(bootstrap: str) -> int | None:
    """The broker behind the first bootstrap address: the listener, else the one java
    process running Kafka."""
    port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    pid = listening_pid(port)
    if pid is not None:
        return pid
    java = [
        int(process.pid)
        for process in psutil.process_iter(["cmdline"])
        if (argv := process.info["cmdline"] or [])
        and _name(argv) == "java"
        and any("kafka" in part.lower() for part in argv)
    ]
    return java[0] if len(java) == 1 else None


class Sampler(threading.Thread):
    """Every 0.5 s: RSS and CPU seconds of each watched process tree.

    A tree is a root pid and all its descendants (the postmaster and its backends), summed.
    """

    def __init__(self, interval_s: float = SAMPLE_EVERY_S) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval_s = interval_s
        self.roots: dict[str, int] = {}
        self.peak_kb: dict[str, int] = {}
        self.peak_pss_kb: dict[str, int] = {}
        self.first_s: dict[str, float] = {}
        self.last_s: dict[str, float] = {}
        self.seen_s: dict[str, float] = {}  # highest tree total seen (trees may shrink)
        self.samples = 0
        self.machine_first: tuple[float, float] | None = None  # (monotonic, busy CPU s)
        self.machine_last: tuple[float, float] | None = None
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
        machine = (time.monotonic(), _machine_busy_s())
        cpu: dict[int, float] = {}
        children: dict[int, list[int]] = {}
        for process in psutil.process_iter(["ppid", "cpu_times"]):
            if process.info["ppid"] is None:
                continue  # gone meanwhile
            cpu[process.pid] = _cpu_s(process.info["cpu_times"])
            children.setdefault(process.info["ppid"], []).append(process.pid)
        with self._lock:
            for name, root in roots.items():
                if root not in cpu:
                    continue
                others = {pid for other, pid in roots.items() if other != name}
                tree = _descendants(root, children, stop=others)
                rss = sum(_rss_kb(pid) for pid in tree)
                total = sum(cpu[pid] for pid in tree if pid in cpu)
                self.peak_kb[name] = max(self.peak_kb.get(name, 0), rss)
                if name == "postgres" and self.samples % PSS_EVERY == 0:
                    pss = sum(_pss_kb(pid) for pid in tree)
                    self.peak_pss_kb[name] = max(self.peak_pss_kb.get(name, 0), pss)
                self.first_s.setdefault(name, total)
                # a backend that exits before the postmaster reaps it drops out of the sum
                self.seen_s[name] = max(self.seen_s.get(name, 0.0), total)
                self.last_s[name] = self.seen_s[name]
            if self.machine_first is None:
                self.machine_first = machine
            self.machine_last = machine
            self.samples += 1

    def mark(self) -> None:
        """Count CPU from the latest sample on (peaks keep counting from the start)."""
        with self._lock:
            self.first_s = dict(self.last_s)
            self.machine_first = self.machine_last

    def cpu_totals(self) -> dict[str, float]:
        """Cumulative CPU seconds per watched tree, and `other`: the rest of the machine
        (other processes, e.g. someone's test run on the same cores)."""
        with self._lock:
            totals = dict(self.last_s)
            if self.machine_last is not None:
                totals[OTHER] = self.machine_last[1] - sum(totals.values())
            return totals

    def cpu_seconds(self) -> dict[str, float]:
        with self._lock:
            seconds = {name: self.last_s[name] - self.first_s[name] for name in self.last_s}
            if self.machine_first is not None and self.machine_last is not None:
                machine = self.machine_last[1] - self.machine_first[1]
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
            busy = self.machine_last[1] - self.machine_first[1]
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
