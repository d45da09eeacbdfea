"""Keycloak, the OpenID Connect provider of the tests and the local stack.

The realm ``deploy/keycloak/notifications-realm.json`` (realm ``notifications``: roles,
users and clients, docs/identity.md) is imported at start. What makes a start fast:

* the Quarkus build (``kc.sh build``) is done once and cached
  (:mod:`tools.infra.keycloak_dist`), so each start is ``start --optimized``;
* the first start ever creates the database schema, the master realm and imports the
  realm (about a minute here), then stops: its H2 database is kept as a *seed*
  (``cache_dir()/keycloak-<version>/seed-<key>/``, keyed by the build and the realm
  file) that every later server copies instead of doing it again;
* on Java 25+ that first run is also the JVM's training run: it writes an AOT cache
  (JEP 483/514: classes loaded and linked ahead of time) that later starts map.

Each server has its own workdir: ``home/`` (``kc.home.dir``: its own ``conf/`` and
``data/``, the rest linked to the cached build) and ``keycloak.log``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from tools.infra.base import (
    LOCALHOST,
    REPO,
    InfraError,
    Managed,
    fetch_once,
    free_port,
    log,
    log_tail,
)
from tools.infra.keycloak_dist import (
    KEYCLOAK_VERSION,
    build_key,
    built_keycloak,
    keycloak_home,
    keycloak_java,
)
from tools.infra.process import ServerProcess, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

REALM = "notifications"
REALM_FILE = REPO / "deploy" / "keycloak" / "notifications-realm.json"
#: The master realm's administrator (Keycloak's bootstrap admin): local use only.
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"  # noqa: S105 (the documented local-only admin)
#: The realm's preset users: (username, password, role); passwords are username + "-pass".
PRESET_USERS = (
    ("viewer", "viewer-pass", "viewer"),
    ("operator", "operator-pass", "operator"),
    ("admin", "admin-pass", "admin"),
)
HEAP = os.environ.get("KEYCLOAK_HEAP", "512m")
_ADD_OPENS = (
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.security=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--enable-native-access=ALL-UNNAMED",
)


def discovery_ready(issuer: str, timeout: float = 2.0) -> bool:
    """True when the realm's discovery document answers 200."""
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _realm_key(realm_file: Path, java: tuple[str, int, str]) -> str:
    source = build_key(java).encode() + b"\n" + realm_file.read_bytes()
    return hashlib.sha256(source).hexdigest()[:12]


class KeycloakServer(Managed):
    """Keycloak on 127.0.0.1 with the ``notifications`` realm; ports default to free ones
    chosen now, so :attr:`issuer` is known before :meth:`start`. Reusing a workdir reuses
    its database (the local stack keeps its users and sessions between runs)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        management_port: int | None = None,
        version: str = KEYCLOAK_VERSION,
        realm_file: Path = REALM_FILE,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.port = port if port is not None else free_port()
        self.management_port = management_port if management_port is not None else free_port()
        self.version = version
        self.realm_file = realm_file
        self.java_version = ""
        #: Seconds the last start() took, and whether it had to prepare the seed first.
        self.start_seconds: float | None = None
        self.prepared_seed = False
        self._process: ServerProcess | None = None
        self._pending_aot: tuple[Path, Path] | None = None
        self._lock = threading.RLock()
        self._cancel = threading.Event()

    # ---- public surface
    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/realms/{REALM}"

    @property
    def admin_console(self) -> str:
        return f"{self.url}/admin/master/console/"

    @property
    def description(self) -> str:
        return f"Keycloak {self.version} (Java {self.java_version or '?'})"

    @property
    def log_path(self) -> Path:
        return self.workdir / "keycloak.log"

    def rss_bytes(self) -> int | None:
        """Resident memory of the JVM (Linux /proc), or None."""
        pid = self.pid
        if pid is None:
            return None
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def start(self, timeout: float = 300.0) -> None:
        """Fetch and build once, seed once, launch, wait for the realm's discovery."""
        with self._lock:
            self._cancel.clear()
            if self.is_running:
                return
            self._halt(5.0)
            started = time.monotonic()
            java = keycloak_java()
            self.java_version = java[2]
            built = built_keycloak(self.version)
            seed = self._seed(java, built, timeout)
            self._prepare_home(built, seed)
            self._process = self._build_process(java, built, self.workdir, aot_training=False)
            self._launch_and_wait(self._process, self.workdir, self.port, timeout)
            self.start_seconds = time.monotonic() - started
            log.debug("%s ready at %s (%.1fs)", self.description, self.url, self.start_seconds)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the JVM's process group, wait, SIGKILL. Idempotent."""
        self._cancel.set()
        with self._lock:
            self._halt(timeout)

    def _halt(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop(timeout)

    # ---- the workdir
    def _prepare_home(self, built: Path, seed: Path | None) -> None:
        home = self.workdir / "home"
        (home / "conf").mkdir(parents=True, exist_ok=True)
        (home / "data" / "import").mkdir(parents=True, exist_ok=True)
        for name in ("bin", "lib", "providers", "themes"):
            link = home / name
            if link.is_symlink() and link.resolve() != (built / name).resolve():
                link.unlink()
            if not link.is_symlink():
                link.symlink_to(built / name, target_is_directory=True)
        shutil.copyfile(self.realm_file, home / "data" / "import" / self.realm_file.name)
        h2 = home / "data" / "h2"
        if seed is not None and not h2.exists():
            shutil.copytree(seed, h2)

    def _seed(self, java: tuple[str, int, str], built: Path, timeout: float) -> Path:
        """The H2 database right after the realm's import (made once, by a first run)."""
        home = keycloak_home(self.version)
        seed = home / f"seed-{_realm_key(self.realm_file, java)}"
        marker = home / f"{seed.name}.complete"

        def prepare() -> str:
            self.prepared_seed = True
            scratch = home / f"{seed.name}.run-{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            port, management = free_port(), free_port()
            original = (self.workdir, self.port, self.management_port)
            self.workdir, self.port, self.management_port = scratch, port, management
            try:
                self._prepare_home(built, None)
                log.info("Keycloak's first run: database schema, master realm, realm import")
                first = time.monotonic()
                process = self._build_process(java, built, scratch, aot_training=True)
                self._launch_and_wait(process, scratch, port, timeout)
                ready = time.monotonic() - first
                # a clean exit: H2 closes its file, the JVM writes its AOT cache
                process.stop(timeout=180)
            finally:
                self.workdir, self.port, self.management_port = original
            shutil.rmtree(seed, ignore_errors=True)
            shutil.copytree(scratch / "home" / "data" / "h2", seed)
            shutil.rmtree(scratch, ignore_errors=True)
            log.info("Keycloak seed database cached in %s (first run ready in %.1fs)", seed, ready)
            return f"first run ready in {ready:.1f}s\n"

        return fetch_once(home, seed, marker, prepare)

    # ---- the JVM
    def _aot_flags(self, java: tuple[str, int, str], built: Path, training: bool) -> list[str]:
        """JDK 25+: map the AOT cache of the first run, or (that run) write it at exit.
        NOTIFICATIONS_KEYCLOAK_AOT=0 turns it off."""
        if java[1] < 25 or os.environ.get("NOTIFICATIONS_KEYCLOAK_AOT", "1") == "0":
            return []
        final = keycloak_home(self.version) / f"{built.name}.aot"
        if final.exists():
            return [f"-XX:AOTCache={final}"]
        if not training:
            return []
        partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
        self._pending_aot = (partial, final)
        return [f"-XX:AOTCacheOutput={partial}"]

    def _finish_aot(self, code: int | None) -> None:
        pending, self._pending_aot = self._pending_aot, None
        if pending is None:
            return
        partial, final = pending
        if code is not None and code != -signal.SIGKILL and partial.exists():
            os.replace(partial, final)
            log.debug("Keycloak AOT cache written: %s", final)
        else:
            partial.unlink(missing_ok=True)

    def _build_process(
        self, java: tuple[str, int, str], built: Path, workdir: Path, *, aot_training: bool
    ) -> ServerProcess:
        home = workdir / "home"
        argv = [
            java[0],
            "-Xms64m",
            f"-Xmx{HEAP}",
            "-XX:MaxMetaspaceSize=256m",
            # start fast on small machines: C1 only, serial GC
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            *self._aot_flags(java, built, aot_training),
            f"-Dkc.home.dir={home}",
            f"-Djboss.server.config.dir={home / 'conf'}",
            "-Djava.util.logging.manager=org.jboss.logmanager.LogManager",
            "-Dpicocli.disable.closures=true",
            "-Dquarkus-log-max-startup-records=10000",
            "-Djava.util.concurrent.ForkJoinPool.common.threadFactory="
            "io.quarkus.bootstrap.forkjoin.QuarkusForkJoinWorkerThreadFactory",
            "-Dfile.encoding=UTF-8",
            "-Djava.security.egd=file:/dev/urandom",
            *_ADD_OPENS,
            *os.environ.get("KEYCLOAK_JVM_OPTS", "").split(),
            # the cached build's own path: the AOT cache is valid for this class path only
            "-cp",
            str(built / "lib" / "quarkus-run.jar"),
            "io.quarkus.bootstrap.runner.QuarkusEntryPoint",
            "start",
            "--optimized",
            "--http-enabled=true",
            f"--http-host={LOCALHOST}",
            f"--http-port={self.port}",
            f"--http-management-port={self.management_port}",
            # one issuer whatever name a client uses for this host
            f"--hostname={self.url}",
            "--hostname-strict=false",
            "--health-enabled=true",
            "--cache=local",
            "--import-realm",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "KEYCLOAK_"))}
        env.update(
            KC_BOOTSTRAP_ADMIN_USERNAME=ADMIN_USER, KC_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD
        )
        on_exit: Callable[[int | None], None] | None = self._finish_aot if aot_training else None
        return ServerProcess(
            "keycloak",
            argv,
            log_path=workdir / "keycloak.log",
            cwd=workdir,
            env=env,
            on_exit=on_exit,
        )

    def _launch_and_wait(
        self, process: ServerProcess, workdir: Path, port: int, timeout: float
    ) -> None:
        process.launch()
        issuer = f"http://{LOCALHOST}:{port}/realms/{REALM}"
        try:
            wait_until(
                "Keycloak",
                lambda: discovery_ready(issuer),
                process,
                time.monotonic() + timeout,
                self._cancel,
            )
        except InfraError as exc:
            process.stop(10.0)
            tail = log_tail(workdir / "keycloak.log", 40)
            raise InfraError(
                f"Keycloak {self.version} did not start at {issuer}: {exc}\n"
                f"--- {workdir / 'keycloak.log'} (tail)\n{tail}"
            ) from None
