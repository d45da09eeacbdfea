"""One structlog configuration: JSON lines with the service and entity ids, to the file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

from shared.logging import (
    KAFKA_CLIENT_NOISE,
    KafkaClientNoise,
    Outage,
    SharedFileHandler,
    bind_entities,
    clear_context,
    configure_logging,
    get_logger,
)
from shared.settings import load_settings
from tests.support.infra import REPO
from tools import logs

if TYPE_CHECKING:
    from pathlib import Path


def test_structlog_and_stdlib_lines_land_in_the_file_as_json(tmp_path: Path) -> None:
    log_file = tmp_path / "statistic.log"
    configure_logging(load_settings(log_file=log_file, log_format="json"), "api")
    try:
        bind_entities(mailing_id=5, message_id=None, client_id=9)
        get_logger("tests").info("message_scheduled", due_at="2031-01-02T09:00:00Z")
        clear_context()
        logging.getLogger("uvicorn.error").warning("broker %s unreachable", "b1")
        logging.getLogger("faststream.access").info("Received", extra={"message_id": "0-1"})
        for handler in logging.getLogger().handlers:
            handler.flush()
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    finally:
        configure_logging(load_settings(log_file=None), "tests")

    first, second, third = lines
    assert first["event"] == "message_scheduled"
    assert first["mailing_id"] == 5
    assert first["client_id"] == 9
    assert "message_id" not in first
    assert first["service"] == "api"
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "broker b1 unreachable"
    assert second["logger"] == "uvicorn.error"
    assert "mailing_id" not in second  # context was cleared
    # FastStream's record id never masquerades as our message id.
    assert third["kafka_record_id"] == "0-1"
    assert "message_id" not in third


# --- rotation by size, with several processes writing one file ------------------------

_WRITER = """
import logging, sys
from pathlib import Path
from shared.logging import configure_logging, get_logger
from shared.settings import load_settings
path, name, count, max_bytes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
settings = load_settings(
    log_file=path, log_format="json", log_file_max_bytes=max_bytes, log_file_backups=1000
)
sys.stdout = open("/dev/null", "w")
configure_logging(settings, name)
log = get_logger("writer")
for seq in range(count):
    log.info("written", writer=name, seq=seq, padding="x" * 120)
logging.shutdown()
"""


def _log_files(path: Path) -> list[Path]:
    return [path, *logs.rotated(path)]


def test_several_processes_share_a_rotating_file_and_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "statistic.log"
    max_bytes, writers, count = 40_000, 4, 3000
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"w{n}", str(count), str(max_bytes)],
            cwd=REPO,
        )
        for n in range(writers)
    ]
    assert [process.wait(timeout=120) for process in processes] == [0] * writers

    files = _log_files(path)
    seen: Counter[tuple[str, int]] = Counter()
    for file in files:
        for line in file.read_text().splitlines():
            fields = json.loads(line)  # every line whole: no torn or interleaved writes
            if fields["event"] == "written":
                seen[(fields["writer"], fields["seq"])] += 1
    expected = {(f"w{n}", seq) for n in range(writers) for seq in range(count)}
    assert set(seen) == expected  # no line lost...
    assert set(seen.values()) == {1}  # ...or written twice
    assert len(files) > 10  # ~2 MB through a 40 kB file: rotated many times
    # A file is rotated once a writer sees it past the limit: at most what each writer
    # appends between two looks at it (64 KiB) beyond.
    assert max(file.stat().st_size for file in files) <= max_bytes + writers * 66_000


def _record(message: str, created: float) -> logging.LogRecord:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)
    record.created = created
    return record


def test_a_writer_follows_a_rotation_made_by_another(tmp_path: Path) -> None:
    path = tmp_path / "statistic.log"
    now = time.time()
    rotating = SharedFileHandler(path, max_bytes=100, backups=3)
    other = SharedFileHandler(path, max_bytes=100, backups=3)
    try:
        other.emit(_record("other-before", now))
        rotating.emit(_record("x" * 120, now))  # past the limit now
        rotating.emit(_record("rotating-after", now + 1.5))  # its next look rotates
        # The other writer has not looked yet: its line goes to the rotated file...
        other.emit(_record("other-late", now + 0.1))
        # ...until its next look, at most a second later: then to the new file.
        other.emit(_record("other-after", now + 1.5))
    finally:
        rotating.close()
        other.close()
    assert (tmp_path / "statistic.log.1").read_text().splitlines() == [
        "other-before",
        "x" * 120,
        "other-late",
    ]
    assert path.read_text().splitlines() == ["rotating-after", "other-after"]


def test_rotation_keeps_the_configured_number_of_backups(tmp_path: Path) -> None:
    path = tmp_path / "statistic.log"
    handler = SharedFileHandler(path, max_bytes=10, backups=2)
    now = time.time()
    try:
        for n in range(5):  # each a look later than the one before: each rotates
            handler.emit(_record(f"line-{n}-" + "x" * 10, now + 2 * n))
    finally:
        handler.close()
    assert sorted(p.name for p in tmp_path.glob("statistic.log*")) == [
        "statistic.log",
        "statistic.log.1",
        "statistic.log.2",
        "statistic.log.lock",
    ]
    assert path.read_text().startswith("line-4-")
    assert (tmp_path / "statistic.log.1").read_text().startswith("line-3-")
    assert (tmp_path / "statistic.log.2").read_text().startswith("line-2-")


# --- outages: state changes, not a line per failure ---------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _events_in(path: Path) -> list[dict[str, object]]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_outage_is_one_line_a_reminder_a_minute_and_one_line_back(tmp_path: Path) -> None:
    log_file = tmp_path / "statistic.log"
    configure_logging(load_settings(log_file=log_file, log_format="json"), "tests")
    clock = _Clock()
    outage = Outage("thing_failed", "thing_still_failing", "thing_restored", clock=clock)
    try:
        for _ in range(100):  # 100 failures over 50 s
            outage.failed(ConnectionError("refused"), retry_in_s=1)
            clock.now += 0.5
        clock.now += 20  # past a minute since the first line
        outage.failed(ConnectionError("refused"), retry_in_s=1)
        clock.now += 5
        figures = outage.recovered()
        outage.recovered()  # not down any more: nothing
        lines = _events_in(log_file)
    finally:
        configure_logging(load_settings(log_file=None), "tests")
    assert [line["event"] for line in lines] == [
        "thing_failed",
        "thing_still_failing",
        "thing_restored",
    ]
    assert lines[0]["level"] == "warning"
    assert lines[0]["error"] == "ConnectionError('refused')"
    assert lines[1]["failures"] == 101
    assert lines[1]["suppressed"] == 99
    assert lines[2] == {**lines[2], "down_s": 75.0, "failures": 101, "suppressed": 99}
    assert figures == {"down_s": 75.0, "failures": 101, "suppressed": 99}


def test_the_kafka_clients_complaints_fold_into_state_changes(tmp_path: Path) -> None:
    log_file = tmp_path / "statistic.log"
    configure_logging(load_settings(log_file=log_file, log_format="json"), "tests")
    clock = _Clock()
    noise = KafkaClientNoise(clock=clock)
    for handler in logging.getLogger().handlers:
        handler.removeFilter(KAFKA_CLIENT_NOISE)
        handler.addFilter(noise)
    try:
        client = logging.getLogger("aiokafka.conn")
        for n in range(500):
            client.error("Unable connect to node with id %s: refused", n)
            logging.getLogger("aiokafka.consumer.fetcher").error("Failed fetch messages")
            clock.now += 0.1
        logging.getLogger("other").error("not the Kafka client: passes")
        clock.now += 20  # 70 s since the first: one reminder
        client.error("Unable connect to node with id 1: refused")
        clock.now += 5
        noise.restored()
        lines = _events_in(log_file)
    finally:
        configure_logging(load_settings(log_file=None), "tests")
    assert [line["event"] for line in lines] == [
        "kafka_connection_lost",
        "not the Kafka client: passes",
        "kafka_connection_still_down",
        "kafka_connection_restored",
    ]
    lost, _, reminder, restored = lines
    assert lost["level"] == "warning"
    assert lost["first_error"] == "Unable connect to node with id 0: refused"
    assert reminder["suppressed"] == 999
    assert restored["suppressed"] == 999
    assert restored["down_s"] == 75.0
    assert "_kafka_noise" not in lost


def test_a_complaint_after_a_long_quiet_is_a_new_outage_without_a_probe() -> None:
    clock = _Clock()
    noise = KafkaClientNoise(clock=clock)

    def complaint() -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "refused", None, None)

    first, again, later = complaint(), complaint(), complaint()
    assert noise.filter(first)
    assert first.getMessage() == "kafka_connection_lost"
    clock.now += 10
    assert not noise.filter(again)  # the same trouble: counted
    clock.now += 61  # a minute with no complaint, no probe (a command-line tool)
    assert noise.filter(later)
    assert later.getMessage() == "kafka_connection_lost"
