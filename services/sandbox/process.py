"""`SandboxProcess`: `python -m services.sandbox` as a child process, for tests and benchmarks.

    sandbox = SandboxProcess()
    base_url = sandbox.start(faults={"error_5xx": 0.1, "seed": 1})
    ...  # PROVIDER_URL = base_url + "/v1"; SandboxControl(sandbox.control_url)
    sandbox.stop()

The child runs in its own process group (stopped with SIGTERM, then SIGKILL), with
free ports picked at start unless given, and its output in a log file
(`log_path`; by default a temporary file, removed by `stop`) whose tail is in the error
if it fails to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TOKEN = "sandbox-token"  # noqa: S105 - the sandbox's documented default


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class SandboxProcess:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 20.0,
    ) -> None:
        """`env`: extra variables for the child (they win over the inherited ones)."""
        self.host = host
        self.extra_env = dict(env or {})
        self.log_path = log_path
        self._temporary_log = False
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self.control_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """Root of the sends port (the provider URL is this plus ``/v1``)."""
        if self.port is None:
            raise RuntimeError("the sandbox is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def provider_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def control_url(self) -> str:
        """Root of the control port (stays up during a `refuse` outage)."""
        if self.control_port is None:
            raise RuntimeError("the sandbox is not started")
        return f"http://{self.host}:{self.control_port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(
        self,
        port: int | None = None,
        faults: Mapping[str, Any] | None = None,
        token: str = DEFAULT_TOKEN,
        *,
        control_port: int | None = None,
        ledger_text: bool = True,
        args: tuple[str, ...] = (),
    ) -> str:
        """Start the child and wait for its /health; return `base_url`."""
        if self.running():
            raise RuntimeError("the sandbox is already running")
        self.port = port or free_port(self.host)
        self.control_port = control_port or free_port(self.host)
        env = {key: value for key, value in os.environ.items() if not key.startswith("SANDBOX_")}
        env.update(
            {
                "SANDBOX_HOST": self.host,
                "SANDBOX_PORT": str(self.port),
                "SANDBOX_CONTROL_PORT": str(self.control_port),
                "SANDBOX_TOKEN": token,
                "SANDBOX_LEDGER_TEXT": "true" if ledger_text else "false",
                "LOG_FILE": "",  # its stdout goes to log_path already
                "LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if faults:
            env["SANDBOX_FAULTS"] = json.dumps(dict(faults))
        env.update(self.extra_env)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="sandbox-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
            self._temporary_log = True
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.sandbox", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = self.control_url + "/health"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"the sandbox exited at start:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the sandbox did not answer {url} in {self.startup_timeout_s}s:\n"
                    + self.log_tail()
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM to the child's group, SIGKILL after `timeout_s`; return its exit code."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._temporary_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
            self._temporary_log = False
        return code

    def __enter__(self) -> SandboxProcess:
        if not self.running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
