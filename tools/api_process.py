"""An API process of a benchmark's own: started on a free port against DATABASE_URL,
waited for until `/health` answers, stopped when the block ends."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx

from tools.infra import REPO, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN = "bench-token"  # noqa: S105 (a throwaway token for the process it starts)
HEALTHY_WITHIN_S = 60.0


@contextlib.contextmanager
def api_process(
    timeout: float | httpx.Timeout = 30.0,
) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    """A client of a fresh API process (its bearer token set) and the process itself."""
    port = free_port()
    env = {
        **os.environ,
        "API_PORT": str(port),
        "DEV_MODE": "true",
        "API_TOKENS": TOKEN,
        "LOG_LEVEL": "WARNING",
        "LOG_FILE": "",
    }
    api = subprocess.Popen([sys.executable, "-m", "services.api"], cwd=REPO, env=env)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=timeout,
        ) as client:
            _wait_healthy(client, api)
            yield client, api
    finally:
        api.terminate()
        api.wait(30)


def _wait_healthy(client: httpx.Client, api: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"the API exited with code {api.returncode} before it was healthy")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API did not become healthy within {HEALTHY_WITHIN_S:.0f} s")
