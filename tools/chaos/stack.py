"""The soak's own stack: PostgreSQL, Kafka, the gateway sandbox and every service, each
service a process group restarted by a supervisor when it exits (as a deployment would).

Process groups, their watchdogs and the stop escalation are `tools.infra`'s; the
sandbox is `SandboxProcess`. `Stack.stop()` stops all of it and is safe to call twice,
from `finally`, after Ctrl-C or after a failed start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.sandbox.process import SandboxProcess
from tools.infra import (
    REPO,
    KafkaServer,
    PostgresServer,
    ServerProcess,
    free_port,
    run_migrations,
    start_together,
)

if TYPE_CHECKING:
    from pathlib import Path

TOKEN = "chaos-token"  # noqa: S105 - a token of the soak's own throwaway stack
SERVICES: tuple[tuple[str, str], ...] = (
    ("api", "api"),
    ("scheduler", "scheduler"),
    ("reporter", "reporter"),
    ("dispatcher-1", "dispatcher"),
    ("dispatcher-2", "dispatcher"),
)
# The settings of the soak's services: short retry delays as in the end-to-end tests,
# so a few minutes hold many retries, and a gateway rate limit of 12 requests a second
# per dispatcher (as a provider's contract would set), so sending lasts most of the
# fault phase and the faults hit it. Everything else (the sending lease, the re-publish
# of stale commands, ...) keeps the product's defaults: the soak measures them.
SERVICE_ENV = {
    "PROVIDER_TIMEOUT_S": "1.5",
    "PROVIDER_RATE_LIMIT": "12",
    "RETRY_DELAYS_S": "0.5,1,2,4",
    "SCHEDULER_POLL_INTERVAL_S": "0.2",
    "BREAKER_FAILURES": "10",
    "BREAKER_OPEN_S": "1",
    "BREAKER_OPEN_MAX_S": "4",
    "SHUTDOWN_GRACE_S": "5",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "json",
}
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0)
# A process up this long has its backoff reset (it was not crash-looping).
STABLE_AFTER_S = 30.0


@dataclass
class Supervised:
    name: str
    module: str
    port: int
    process: ServerProcess | None = None
    started_at: float = 0.0
    failures_in_row: int = 0
    restarts: int = 0
    kills: int = 0
    # exits the soak did not cause: (monotonic time, exit code)
    unplanned_exits: list[tuple[float, int | None]] = field(default_factory=list)
    killed_pending: bool = False


class Supervisor:
    """Starts every service and restarts whichever exits, after a short backoff."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.services = {name: Supervised(name, module, free_port()) for name, module in SERVICES}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def port(self, name: str) -> int:
        return self.services[name].port

    def _launch(self, service: Supervised) -> None:
        env = {
            **self.env,
            f"{service.module.upper()}_PORT": str(service.port),
            "LOG_FILE": str(self.workdir / "logs" / f"{service.name}.jsonl"),
        }
        process = ServerProcess(
            service.name,
            [sys.executable, "-m", f"services.{service.module}"],
            log_path=self.workdir / "logs" / f"{service.name}.out",
            cwd=REPO,
            env=env,
        )
        process.launch()
        service.process = process
        service.started_at = time.monotonic()

    def start(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        with self._lock:
            for service in self.services.values():
                self._launch(service)
        self._thread.start()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.services)
        while pending:
            for name in list(pending):
                if ready(self.services[name].port):
                    pending.discard(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f}s: {sorted(pending)}")
            time.sleep(0.3)

    def kill(self, name: str) -> None:
        """`kill -9` of the service's process group; the watcher restarts it."""
        with self._lock:
            service = self.services[name]
            process = service.process
            if process is None or process.pid is None or not process.alive:
                return
            service.killed_pending = True
            service.kills += 1
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                for service in self.services.values():
                    self._check(service)

    def _check(self, service: Supervised) -> None:
        process = service.process
        if process is None:
            return
        code = process.poll()
        if code is None:
            if time.monotonic() - service.started_at > STABLE_AFTER_S:
                service.failures_in_row = 0
            return
        now = time.monotonic()
        process.stop(timeout=5)  # reap it and disarm its watchdog
        if service.killed_pending:
            service.killed_pending = False
        else:
            service.unplanned_exits.append((now, code))
            service.failures_in_row += 1
        backoff = RESTART_BACKOFF_S[min(service.failures_in_row, len(RESTART_BACKOFF_S) - 1)]
        service.process = None
        # restart later without holding up the others
        timer = threading.Timer(backoff, self._restart, args=(service,))
        timer.daemon = True
        timer.start()

    def _restart(self, service: Supervised) -> None:
        with self._lock:
            if self._stopping.is_set() or service.process is not None:
                return
            self._launch(service)
            service.restarts += 1

    def all_ready(self) -> bool:
        return all(ready(service.port) for service in self.services.values())

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            processes = [s.process for s in self.services.values() if s.process is not None]
            for service in self.services.values():
                service.process = None
        for process in processes:
            process.stop(timeout=20)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "kills": service.kills,
                "restarts": service.restarts,
                "unplanned_exits": len(service.unplanned_exits),
                "exit_codes": [code for _, code in service.unplanned_exits],
            }
            for name, service in self.services.items()
        }


def ready(port: int, path: str = "/ready") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Stack:
    """Everything the soak runs, with fixed ports so a stop + start is a restart."""

    def __init__(self, workdir: Path, sandbox_faults: dict[str, Any] | None) -> None:
        self.workdir = workdir
        self.postgres = PostgresServer(workdir / "postgres", port=free_port())
        self.kafka = KafkaServer(workdir / "kafka", port=free_port(), controller_port=free_port())
        self.sandbox = SandboxProcess(log_path=workdir / "logs" / "sandbox.out")
        self.sandbox_faults = sandbox_faults
        self.supervisor: Supervisor | None = None

    def start(self, say: Any) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        start_together([self.postgres, self.kafka])
        say(f"{self.postgres.description} at 127.0.0.1:{self.postgres.port}")
        say(f"{self.kafka.description} at {self.kafka.bootstrap}")
        run_migrations(self.postgres.url)
        self.sandbox.start(faults=self.sandbox_faults)
        say(f"sandbox at {self.sandbox.base_url} (control {self.sandbox.control_url})")
        env = {
            **os.environ,
            **SERVICE_ENV,
            "DATABASE_URL": self.postgres.url,
            "KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "DEV_MODE": "true",
            "API_TOKENS": TOKEN,
            "PROVIDER_URL": self.sandbox.provider_url,
            "PROVIDER_TOKEN": "sandbox-token",
            "PYTHONUNBUFFERED": "1",
        }
        if "embedded" in self.kafka.description.lower():
            env["KAFKA_ENABLE_IDEMPOTENCE"] = "false"
        self.supervisor = Supervisor(self.workdir, env)
        self.supervisor.start()
        self.supervisor.wait_ready(timeout=180)
        say("every service ready: " + ", ".join(self.supervisor.services))

    @property
    def api_url(self) -> str:
        assert self.supervisor is not None
        return f"http://127.0.0.1:{self.supervisor.port('api')}"

    def stop(self) -> None:
        """Services first, then the sandbox, Kafka and PostgreSQL. Idempotent."""
        if self.supervisor is not None:
            self.supervisor.stop()
        self.sandbox.stop()
        self.kafka.stop()
        self.postgres.stop()
