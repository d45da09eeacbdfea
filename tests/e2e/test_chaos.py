"""The chaos soak, shortened (`python -m tools.chaos --preset quick`): the whole stack
(its own PostgreSQL and Kafka, the sandbox with faults, every service supervised, two
dispatchers), 2,000 clients over four mailings with windows, stop times and an edit, one
`kill -9` of each service, a PostgreSQL restart, a Kafka restart and a 10 s gateway
outage. About 6 minutes on 2 cores. It asserts what `make chaos` asserts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.support.infra import REPO

if TYPE_CHECKING:
    from pathlib import Path

# generous: the machine may be busy; the soak stops by itself well before
LIMIT_S = 1500


@pytest.mark.timeout(LIMIT_S + 180)
def test_quick_soak_meets_every_target(tmp_path: Path) -> None:
    figures_path = tmp_path / "figures.json"
    command = [
        sys.executable,
        "-m",
        "tools.chaos",
        "--preset",
        "quick",
        "--json",
        str(figures_path),
        "--workdir",
        str(tmp_path / "soak"),
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=LIMIT_S)
    except BaseException:
        process.send_signal(signal.SIGTERM)  # the soak stops everything it started
        process.communicate(timeout=120)
        raise
    print(output)
    assert process.returncode in (0, 1), f"the soak did not run:\n{output[-4000:]}"
    figures = json.loads(figures_path.read_text())

    # the run did what it says: load, and every fault of the quick preset
    assert figures["messages_expected"] > 1000
    done = sorted((fault["kind"], fault["target"]) for fault in figures["faults"])
    assert done == sorted(
        [("kill", name) for name in ("api", "scheduler", "reporter", "dispatcher-1")]
        + [("kill", "dispatcher-2"), ("outage", "gateway")]
        + [("restart", "postgres"), ("restart", "kafka")]
    )
    assert all(service["kills"] == 1 for service in figures["services"].values())

    targets = (
        "lost",
        "twice_outside_window",
        "sent_after_stop",
        "outside_window",
        "unexpected",
        "old_text_after_edit",
        "accepted_not_recorded_sent",
        "recorded_sent_not_accepted",
        "counter_cells_wrong",
        "unpublished_outbox",
        "unknown_ledger_entries",
    )
    observed = {name: figures[name] for name in targets}
    assert observed == dict.fromkeys(targets, 0)
    assert figures["drained"], "not drained: messages pending, counters behind or outbox full"
    assert figures["counters_exact"]
    assert process.returncode == 0
    assert "targets: all met" in output
