"""What every server of the harness shares: constants, errors, ports, the cache, logs."""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import re
import socket
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from tools.infra.process import ServerProcess

log = logging.getLogger("tools.infra")

REPO = Path(__file__).resolve().parents[2]

DATABASE_NAME = "notifications"
POSTGRES_SUPERUSER = "postgres"
LOCALHOST = "127.0.0.1"

# Exit code of `run` when the infrastructure could not be started (EX_UNAVAILABLE).
EXIT_INFRA_FAILED = 69


class Managed:
    """A server used as a context manager: started on entry, stopped on exit.

    Subclasses keep their running process (if any) in `_process`.
    """

    _process: ServerProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.alive else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.alive

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


def log_tail(path: Path, lines: int = 40) -> str:
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


def port_in_use_in(*logs: Path) -> bool:
    """Did the last run logged in these files (after the '===== ' marker) fail to bind?"""
    needles = ("Address already in use", "could not bind IPv4 address")
    last_runs = [log_tail(path, 200).rsplit("===== ", 1)[-1] for path in logs]
    return any(needle in text for text in last_runs for needle in needles)


class MissingExtraError(InfraError):
    """A fallback needs a package of an optional extra that is not installed."""

    def __init__(self, what: str, requirement: str, extra: str, instead: str) -> None:
        super().__init__(
            f"{what} needs {requirement}, in the optional extra '{extra}' of this project: "
            f"install it with `.venv/bin/pip install -e '.[dev,{extra}]'` "
            f"(`pip install '.[{extra}]'` outside a checkout), or {instead}"
        )
        self.extra = extra


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def untraversable(path: Path, uid: int, gid: int) -> list[Path]:
    """The existing directories on the way to ``path`` that user uid/gid cannot traverse."""
    blocked = []
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
            blocked.append(directory)
    return blocked


def make_traversable(path: Path, uid: int, gid: int) -> None:
    """Let user uid/gid reach ``path``: add the search bit (o+x only) where it is missing.

    Needed when we are root and a server runs as another user inside a directory tree
    that root created with mode 0700 (mkdtemp). Nothing becomes readable or writable for
    others: only traversal is granted.
    """
    for directory in untraversable(path, uid, gid):
        log.info("chmod o+x %s (so the server's user can traverse it)", directory)
        directory.chmod(stat.S_IMODE(directory.stat().st_mode) | stat.S_IXOTH)


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
