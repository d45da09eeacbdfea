"""structlog, configured once per process.

One event per line: JSON when stdout is not a terminal (console rendering on a TTY), and
always JSON in the log file (`LOG_FILE`, default `statistic.log`), so `grep`/`jq` on a
`mailing_id`, `message_id` or `client_id` gives an entity's whole story. Standard-library
loggers (uvicorn, aiokafka, sqlalchemy, faststream) go through the same processors.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import structlog

if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from pathlib import Path

    from structlog.typing import Processor

    from shared.settings import Settings

# Context keys that tie a log line to an entity; bound with contextvars.
ENTITY_KEYS = ("mailing_id", "message_id", "client_id")

_NOISY = {"aiokafka": logging.WARNING, "sqlalchemy.engine": logging.WARNING}


def _rename_transport_ids(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """FastStream logs its Kafka record id as `message_id`; ours means the SMS message."""
    logger = event_dict.get("logger", "")
    if isinstance(logger, str) and logger.startswith("faststream") and "message_id" in event_dict:
        event_dict["kafka_record_id"] = event_dict.pop("message_id")
    return event_dict


def _drop_keys(*keys: str) -> Processor:
    def drop(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in keys:
            event_dict.pop(key, None)
        return event_dict

    return drop


def _shared_processors(service: str) -> list[Processor]:
    pid = os.getpid()

    def add_service(
        _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        event_dict.setdefault("pid", pid)
        return event_dict

    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_service,
        structlog.stdlib.ExtraAdder(),
        _rename_transport_ids,
        _drop_keys("color_message"),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(settings: Settings, service: str) -> None:
    """Route structlog and stdlib logging to stdout and the log file. Idempotent."""
    shared = _shared_processors(service)
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    json_renderer: Processor = structlog.processors.JSONRenderer(serializer=_dumps)
    use_console = settings.log_format == "console" or (
        settings.log_format == "auto" and sys.stdout.isatty()
    )
    stdout_renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if use_console else json_renderer
    )

    def formatter(renderer: Processor) -> logging.Formatter:
        return structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )

    handlers: list[logging.Handler] = []
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
    if settings.log_file is not None and not use_console:
        # The same JSON line for both: render it once (it is on every hot path).
        tee = _JsonTeeHandler(settings.log_file, sys.stdout)
        tee.setFormatter(formatter(json_renderer))
        handlers.append(tee)
    else:
        stdout_handler = logging.StreamHandler(sys.stdout)
        stdout_handler.setFormatter(formatter(stdout_renderer))
        handlers.append(stdout_handler)
        if settings.log_file is not None:
            # WatchedFileHandler: several processes append to one file; rotation-safe.
            file_handler = logging.handlers.WatchedFileHandler(settings.log_file)
            file_handler.setFormatter(formatter(json_renderer))
            handlers.append(file_handler)

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(settings.log_level)

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Access lines duplicate our own request log, which carries ids and timing.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name, level in _NOISY.items():
        logging.getLogger(name).setLevel(max(level, logging.getLevelName(settings.log_level)))


def _dumps(event: Any, **kw: Any) -> str:
    """orjson: several times faster than json.dumps on the hot paths that log per
    message; datetimes come out in ISO 8601, anything else it cannot encode as repr()."""
    return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


class _JsonTeeHandler(logging.handlers.WatchedFileHandler):
    """Append each formatted line to the log file and write it to stdout as well.

    Whether the file was rotated away (WatchedFileHandler's stat) is checked at most
    once a second rather than for every line."""

    def __init__(self, path: Path, stdout: TextIO) -> None:
        super().__init__(path)
        self.stdout = stdout
        self._next_check = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            self.stdout.write(line)
            self.stdout.flush()
            if record.created >= self._next_check:
                self._next_check = record.created + 1.0
                self.reopenIfNeeded()
            if self.stream is None:
                self.stream = self._open()
            self.stream.write(line)
            self.stream.flush()
        except Exception:
            self.handleError(record)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def bind_entities(**ids: int | None) -> None:
    """Bind the entity ids that apply to what follows (None values are skipped)."""
    structlog.contextvars.bind_contextvars(
        **{key: value for key, value in ids.items() if value is not None}
    )


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()
