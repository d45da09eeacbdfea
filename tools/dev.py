"""`make dev`: the whole service on this machine, with zero setup.

Starts PostgreSQL, Kafka and Keycloak (data kept in `.dev/` between runs), applies migrations,
starts every service as its own process, waits until each one's `/ready` answers 200,
then prints the URLs and the development token. Ctrl-C (or SIGTERM) stops everything it
started, children first, and leaves no stray process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tools.infra import (
    KafkaServer,
    KeycloakServer,
    PostgresServer,
    run_migrations,
    start_together,
)
from tools.infra.keycloak import ADMIN_PASSWORD, ADMIN_USER, PRESET_USERS

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".dev"
# Fixed, documented ports of the local stack (checked free before use).
KAFKA_PORT, KAFKA_CONTROLLER_PORT, POSTGRES_PORT = 19092, 19093, 15432
KEYCLOAK_PORT, KEYCLOAK_MANAGEMENT_PORT = 18080, 18081
DEV_TOKEN = "dev-token"  # noqa: S105 (the documented local-stack token)


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port: int
    extra: str = ""
    # An HTTP path answering 200 when ready; None: ready once the port accepts.
    ready_path: str | None = "/ready"
    args: tuple[str, ...] = ()


SERVICES = (
    Service("api", "services.api", 8000, "admin API"),
    Service("scheduler", "services.scheduler", 8001),
    Service("dispatcher", "services.dispatcher", 8002),
    Service("reporter", "services.reporter", 8003),
    Service(
        "sandbox",
        "services.sandbox",
        8090,
        "SMS gateway sandbox (ledger and faults: http://127.0.0.1:8091/docs)",
        ready_path="/health",
    ),
    Service(
        "mail",
        "tools.mailcatcher",
        1025,
        "SMTP mail catcher: the reporter's emails land in .dev/mail/*.eml",
        ready_path=None,
        args=("--port", "1025", "--dir", str(DATA / "mail")),
    ),
)
SANDBOX_CONTROL_PORT = 8091


def say(text: str) -> None:
    sys.stderr.write(f"dev: {text}\n")
    sys.stderr.flush()


def _ready(port: int, path: str | None = "/ready") -> bool:
    if path is None:
        return not _port_free(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


class Stack:
    def __init__(self) -> None:
        self.kafka = KafkaServer(
            DATA / "kafka", port=KAFKA_PORT, controller_port=KAFKA_CONTROLLER_PORT
        )
        self.postgres = PostgresServer(DATA / "postgres", port=POSTGRES_PORT)
        self.keycloak = KeycloakServer(
            DATA / "keycloak", port=KEYCLOAK_PORT, management_port=KEYCLOAK_MANAGEMENT_PORT
        )
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()

    def start_infra(self) -> None:
        taken = [
            port
            for port in (
                KAFKA_PORT,
                KAFKA_CONTROLLER_PORT,
                POSTGRES_PORT,
                KEYCLOAK_PORT,
                KEYCLOAK_MANAGEMENT_PORT,
                *(s.port for s in SERVICES),
            )
            if not _port_free(port)
        ]
        if taken:
            raise SystemExit(f"dev: ports already in use: {taken} (another `make dev` running?)")
        start_together([self.kafka, self.postgres, self.keycloak])
        say(f"{self.kafka.description} at {self.kafka.bootstrap}")
        say(f"{self.postgres.description} at {self.postgres.url}")
        say(f"{self.keycloak.description} at {self.keycloak.url}")
        run_migrations(self.postgres.url)
        say("migrations applied")

    def start_services(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.postgres.url,
            "KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            # The local stack is the development mode: the static token acts as admin.
            "DEV_MODE": os.environ.get("DEV_MODE", "true"),
            "API_TOKENS": os.environ.get("API_TOKENS", DEV_TOKEN),
        }
        env.setdefault("OIDC_ISSUER", self.keycloak.issuer)
        if "embedded" in self.kafka.description.lower():
            env.setdefault("KAFKA_ENABLE_IDEMPOTENCE", "false")
        for service in SERVICES:
            env[f"{service.name.upper()}_PORT"] = str(service.port)
        env["SANDBOX_CONTROL_PORT"] = str(SANDBOX_CONTROL_PORT)
        env.setdefault("PROVIDER_URL", "http://127.0.0.1:8090/v1")
        # The reporter mails the local catcher unless told otherwise.
        env.setdefault("SMTP_HOST", "127.0.0.1")
        env.setdefault("SMTP_PORT", "1025")
        env.setdefault("SMTP_TLS", "none")
        env.setdefault("REPORT_RECIPIENTS", "ops@localhost")
        for service in SERVICES:
            self.children[service.name] = subprocess.Popen(
                [sys.executable, "-m", service.module, *service.args], cwd=REPO, env=env
            )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {s.name: s for s in SERVICES}
        while pending and time.monotonic() < deadline and not self.stopping.is_set():
            self._check_children()
            for name, service in list(pending.items()):
                if _ready(service.port, service.ready_path):
                    del pending[name]
            time.sleep(0.3)
        if pending and not self.stopping.is_set():
            raise SystemExit(f"dev: not ready after {timeout:.0f}s: {sorted(pending)}")

    def _check_children(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                raise SystemExit(f"dev: {name} exited with code {child.returncode}")

    def stop(self) -> None:
        self.stopping.set()
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for name, child in self.children.items():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in 20 s; killing it")
                child.kill()
                child.wait()
        self.kafka.stop()
        self.postgres.stop()
        self.keycloak.stop()


def main() -> int:
    started = time.monotonic()
    stack = Stack()

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start_infra()
        stack.start_services()
        stack.wait_ready(timeout=120)
        elapsed = time.monotonic() - started
        lines = [f"all services ready in {elapsed:.1f} s", ""]
        for service in SERVICES:
            if service.ready_path is None:
                url = f"smtp://127.0.0.1:{service.port}"
            else:
                url = f"http://127.0.0.1:{service.port}/docs"
            lines.append(f"  {service.name:<11} {url}   {service.extra}".rstrip())
        lines += [
            "",
            f"  console     http://127.0.0.1:{SERVICES[0].port}/console/   (sign in through "
            "Keycloak as one of the users below, or with the token)",
            f"  token       Authorization: Bearer {DEV_TOKEN}   (development mode: admin)",
            f"  kafka       {stack.kafka.bootstrap}",
            f"  postgresql  {stack.postgres.url}",
            f"  keycloak    {stack.keycloak.issuer}   (issuer; admin console "
            f"{stack.keycloak.admin_console}, {ADMIN_USER} / {ADMIN_PASSWORD})",
            "  users       "
            + ", ".join(f"{user} / {password}" for user, password, _ in PRESET_USERS)
            + "   (one per role)",
            f"  logs        {REPO / 'statistic.log'}",
            "",
            "Ctrl-C stops everything.",
        ]
        say("\n     ".join(lines))
        while True:
            stack._check_children()
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    except SystemExit as exc:
        say(str(exc.code))
        return 1
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            stack.stop()
        say("stopped")


if __name__ == "__main__":
    raise SystemExit(main())
