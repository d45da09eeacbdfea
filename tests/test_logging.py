"""One structlog configuration: JSON lines with the service and entity ids, to the file."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from shared.logging import bind_entities, clear_context, configure_logging, get_logger
from shared.settings import load_settings

if TYPE_CHECKING:
    from pathlib import Path


def test_structlog_and_stdlib_lines_land_in_the_file_as_json(tmp_path: Path) -> None:
    log_file = tmp_path / "statistic.log"
    configure_logging(load_settings(log_file=log_file, log_format="json"), "api")
    try:
        bind_entities(mailing_id=5, message_id=None, client_id=9)
        get_logger("tests").info("message_scheduled", due_at="2031-01-02T09:00:00Z")
        clear_context()
        logging.getLogger("aiokafka").warning("broker %s unreachable", "b1")
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
    assert second["logger"] == "aiokafka"
    assert "mailing_id" not in second  # context was cleared
    # FastStream's record id never masquerades as our message id.
    assert third["kafka_record_id"] == "0-1"
    assert "message_id" not in third
