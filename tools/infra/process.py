"""Process handling: each server in its own process group, stopped as a group.

Three layers make sure nothing is left behind: ``stop()``, an ``atexit`` hook, and a
tiny watchdog process per server that kills the group if this process dies without
stopping it (SIGKILL, ``os._exit``, a crash).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Protocol

from tools.infra.base import InfraError, log

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

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

_live_processes: set[ServerProcess] = set()
_live_lock = threading.Lock()


class ServerProcess:
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


def wait_until(
    what: str,
    ready: Callable[[], bool],
    process: ServerProcess,
    deadline: float,
    cancelled: threading.Event,
) -> None:
    """Poll ``ready()`` until true; fail early when the process exits, late on the deadline."""
    while True:
        if cancelled.is_set():
            raise InfraError(f"starting {what} was cancelled by stop()")
        code = process.poll()
        if code is not None:
            raise ProcessExited(f"{what} exited with code {code} before it was ready")
        if ready():
            return
        if time.monotonic() > deadline:
            raise StartTimeout(f"{what} was not ready in time")
        time.sleep(0.1)


class ProcessExited(InfraError):
    pass


class StartTimeout(InfraError):
    pass


class Startable(Protocol):
    """What :func:`start_together` starts: a server with a blocking ``start()``."""

    def start(self) -> None: ...


def start_together(servers: Iterable[Startable]) -> None:
    """Start the servers in parallel (a thread each) and return once every one is ready.

    The wait is interruptible: Ctrl-C (or an exception raised by a signal handler)
    reaches the caller while the starts go on in their threads; the caller's ``stop()``
    of each server cancels them. One failure is raised as it is when it is an
    InfraError; otherwise a single InfraError says what each failure was.
    """
    errors: list[BaseException] = []

    def run(server: Startable) -> None:
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
    if len(errors) == 1 and isinstance(errors[0], InfraError):
        raise errors[0]
    if errors:
        raise InfraError("\n\n".join(str(e) for e in errors)) from errors[0]
