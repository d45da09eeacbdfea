"""A stop always ends: each shutdown step is bounded, and a process asked to stop by a
signal exits after the backstop even if a step hangs (a Kafka client waiting for a
broker that was killed along with it, seen in the scheduler)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from shared.service import bounded_step
from tests.support.infra import REPO
from tools.infra import free_port

if TYPE_CHECKING:
    from pathlib import Path


async def test_a_step_that_ignores_its_cancellation_does_not_hold_the_stop() -> None:
    ended = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # ignores it for a while
        ended.set()

    started = time.monotonic()
    assert await bounded_step("stubborn", stubborn(), 0.1) is False
    assert time.monotonic() - started < 0.4  # not held by the task's own clean-up
    await asyncio.wait_for(ended.wait(), 5)


async def test_a_step_that_finishes_or_fails_is_done() -> None:
    async def fails() -> None:
        raise RuntimeError("broker gone")

    assert await bounded_step("quick", asyncio.sleep(0), 1) is True
    assert await bounded_step("fails", fails(), 1) is True


# A service whose shutdown never ends (its lifespan waits forever after `yield`).
HANGS = """
import asyncio, contextlib
from fastapi import FastAPI
from shared.runner import run_service

@contextlib.asynccontextmanager
async def life(app):
    yield
    await asyncio.Event().wait()

run_service("api", lambda settings: FastAPI(lifespan=life))
"""


def test_a_process_stopped_by_a_signal_exits_after_the_backstop(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "api.log"
    env = {
        **os.environ,
        "API_PORT": str(port),
        "SHUTDOWN_GRACE_S": "1",
        "LOG_FILE": str(log),
        "LOG_FORMAT": "json",
        "DEV_MODE": "true",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", HANGS], cwd=REPO, env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the service did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the service never listened"
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        # The backstop: twice the grace and 10 s (shared/runner.py); room for a busy machine.
        code = process.wait(timeout=1 * 2 + 10 + 20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 128 + signal.SIGTERM
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    [cut] = [event for event in events if event.get("event") == "shutdown_timed_out"]
    assert cut["exit_code"] == 128 + signal.SIGTERM
