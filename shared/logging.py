"""structlog, configured once per process.

One event per line: JSON when stdout is not a terminal (console rendering on a TTY), and
always JSON in the log file (`LOG_FILE`, default `statistic.log`, rotated by size:
`LOG_FILE_MAX_BYTES`, `LOG_FILE_BACKUPS`; see `SharedFileHandler`), so `grep`/`jq` on a
`mailing_id`, `message_id` or `client_id` gives an entity's whole story. Standard-library
loggers (uvicorn, aiokafka, sqlalchemy, faststream) go through the same processors.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

    from structlog.typing import Processor

    from shared.settings import Settings

# Context keys that tie a log line to an entity; bound with contextvars.
ENTITY_KEYS = ("mailing_id", "message_id", "client_id")

_outage_log = structlog.stdlib.get_logger("shared.outage")

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
        _drop_keys("color_message", "_kafka_noise"),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(settings: Settings, service: str) -> None:
    """Route structlog and stdlib logging to stdout and the log file. Idempotent.

    In JSON mode our own lines take a direct path: structlog renders each one once and
    hands the text to the same handlers (`_Lines`), with no `logging.LogRecord` and no
    second pass through a formatter (it is on every hot path: about a third of a line's
    cost). Standard-library loggers still go through the handlers' formatters."""
    shared = _shared_processors(service)
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
        tee = SharedFileHandler(
            settings.log_file,
            max_bytes=settings.log_file_max_bytes,
            backups=settings.log_file_backups,
            stdout=sys.stdout,
        )
        tee.setFormatter(formatter(json_renderer))
        handlers.append(tee)
    else:
        stdout_handler = _StdoutLines(sys.stdout)
        stdout_handler.setFormatter(formatter(stdout_renderer))
        handlers.append(stdout_handler)
        if settings.log_file is not None:
            file_handler = SharedFileHandler(
                settings.log_file,
                max_bytes=settings.log_file_max_bytes,
                backups=settings.log_file_backups,
            )
            file_handler.setFormatter(formatter(json_renderer))
            handlers.append(file_handler)

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        handler.addFilter(KAFKA_CLIENT_NOISE)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    _DIRECT.level = logging.getLevelName(settings.log_level)
    _DIRECT.writers = [
        write for handler in handlers if (write := getattr(handler, "write_line", None))
    ]
    if use_console:
        structlog.configure(
            processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                *shared,
                structlog.processors.format_exc_info,
                json_renderer,
            ],
            logger_factory=lambda name=None, *_: _Lines(name or "root"),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Access lines duplicate our own request log, which carries ids and timing.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name, level in _NOISY.items():
        logging.getLogger(name).setLevel(max(level, logging.getLevelName(settings.log_level)))


class _Lines:
    """structlog's logger in JSON mode: writes each rendered line to the handlers.

    Has what `structlog.stdlib.BoundLogger` and its processors ask of a logger (a name,
    `isEnabledFor`, a method per level taking the rendered line). The level and the
    handlers are the process's current ones (`_DIRECT`, set by `configure_logging`):
    loggers are cached on first use, possibly before a later configuration."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.disabled = False

    def isEnabledFor(self, level: int) -> bool:
        return level >= _DIRECT.level

    def getEffectiveLevel(self) -> int:
        return _DIRECT.level

    def _write(self, line: str, *_: Any, **__: Any) -> None:
        line += "\n"
        for write_line in _DIRECT.writers:
            write_line(line)

    debug = info = warning = warn = error = critical = exception = fatal = msg = log = _write


class _Direct:
    """Where `_Lines` write: the threshold and each handler's `write_line`."""

    def __init__(self) -> None:
        self.level = logging.INFO
        self.writers: list[Callable[[str], None]] = []


_DIRECT = _Direct()


class _StdoutLines(logging.StreamHandler):  # type: ignore[type-arg]
    """stdout, taking `_Lines`' rendered lines as well as standard-library records."""

    def write_line(self, line: str) -> None:
        with self.lock or contextlib.nullcontext():
            self.stream.write(line)
            self.stream.flush()


def _dumps(event: Any, **kw: Any) -> str:
    """orjson: several times faster than json.dumps on the hot paths that log per
    message; datetimes come out in ISO 8601, anything else it cannot encode as repr()."""
    return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


# How often a writer checks whether the file was rotated (by itself or another process):
# on its first line after this many seconds, or after it wrote this many bytes.
_CHECK_EVERY_S = 1.0
_CHECK_EVERY_BYTES = 64 * 1024


class SharedFileHandler(logging.Handler):
    """Append each formatted line to a log file that several processes share, rotating
    it by size; optionally write the same line to stdout (the JSON tee).

    Every process opens the file in append mode, so lines from many processes never
    overwrite each other. Rotation (`max_bytes`, 0 = never) happens under an `fcntl`
    lock on `<file>.lock`: the first writer to see the file past the limit renames
    `<file>.N-1` -> `<file>.N` ... `<file>` -> `<file>.1` and opens a new `<file>`; a
    writer that then sees another inode at the path reopens it. A writer notices within
    a second or 64 KiB of its own output, and until then its lines land in `<file>.1`,
    where `make logs` reads them too: no line is lost, none goes to a rotated file for
    longer than that. (An external logrotate that moves the file is noticed the same
    way.)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 0,
        backups: int = 1,
        stdout: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = max(backups, 1)
        self.stdout = stdout
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.stream: TextIO | None = None
        self._inode: int | None = None
        self._next_check = 0.0
        self._written = 0

    def _open(self) -> TextIO:
        stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._inode = os.fstat(stream.fileno()).st_ino
        self.stream = stream
        return stream

    def _close_stream(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.close()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record) + "\n", record.created)
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """A line rendered already (structlog's direct path, `_Lines`)."""
        with self.lock or contextlib.nullcontext():
            self._write(line, time.time())

    def _write(self, line: str, created: float) -> None:
        if self.stdout is not None:
            self.stdout.write(line)
            self.stdout.flush()
        if self.stream is None:
            self._open()
        if created >= self._next_check or self._written >= _CHECK_EVERY_BYTES:
            # Before writing: the line goes to the file now at the path.
            self._next_check = created + _CHECK_EVERY_S
            self._written = 0
            self._check()
        stream = self.stream or self._open()
        stream.write(line)
        stream.flush()
        self._written += len(line)

    def _inode_at_path(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        return status.st_ino, status.st_size

    def _check(self) -> None:
        found = self._inode_at_path()
        if found is None or found[0] != self._inode:
            # Rotated (or removed) by someone else: write to the file at the path now.
            self._close_stream()
            self._open()
        elif self.max_bytes and found[1] >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                found = self._inode_at_path()
                # Another writer may have rotated while this one waited for the lock.
                if found is not None and found[0] == self._inode and found[1] >= self.max_bytes:
                    for n in range(self.backups - 1, 0, -1):
                        older = self.path.with_name(f"{self.path.name}.{n}")
                        if older.exists():
                            os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
                    os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
                self._close_stream()
                self._open()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self) -> None:
        self.acquire()
        try:
            self._close_stream()
        finally:
            self.release()
        super().close()


# A dependency that keeps failing is told at most this often between its state changes.
REMIND_EVERY_S = 60.0


class Outage:
    """State-change logging for something that fails again and again (a broker away):
    one WARNING line when it starts failing, a reminder at most once a minute with the
    count since, and one INFO line when it works again, saying for how long it failed
    and how many failures went unlogged. Not thread-safe: one event loop uses it."""

    def __init__(
        self,
        failing: str,
        reminder: str,
        restored: str | None,
        *,
        remind_every_s: float = REMIND_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = (failing, reminder, restored)
        self.remind_every_s = remind_every_s
        self.clock = clock
        self.since: float | None = None
        self.failures = 0
        self.suppressed = 0
        self._last_line = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, error: object, **fields: Any) -> None:
        now = self.clock()
        self.failures += 1
        failing, reminder, _ = self.events
        if self.since is None:
            self.since = self._last_line = now
            _outage_log.warning(failing, error=repr(error), **fields)
        elif now - self._last_line >= self.remind_every_s:
            self._last_line = now
            _outage_log.warning(
                reminder,
                error=repr(error),
                down_s=round(now - self.since, 1),
                failures=self.failures,
                suppressed=self.suppressed,
                **fields,
            )
        else:
            self.suppressed += 1

    def recovered(self, **fields: Any) -> dict[str, Any]:
        """Back to normal: log the restored line (if any); return the outage's figures."""
        if self.since is None:
            return {}
        figures = {
            "down_s": round(self.clock() - self.since, 1),
            "failures": self.failures,
            "suppressed": self.suppressed,
        }
        self.since, self.failures, self.suppressed = None, 0, 0
        restored = self.events[2]
        if restored is not None:
            _outage_log.info(restored, **figures, **fields)
        return figures


class KafkaClientNoise(logging.Filter):
    """Folds the Kafka client's (aiokafka's) WARNING/ERROR lines into state changes.

    aiokafka logs every failed connection, metadata refresh, fetch, heartbeat and
    produce attempt of each of a process's clients: a 16 s broker stop made thousands
    of lines. Its first such line becomes `kafka_connection_lost` (with the original
    message as `first_error`), later ones are counted, not written, with a
    `kafka_connection_still_down` reminder at most once a minute, and `restored()` (a
    probe of the broker after a few quiet seconds: `shared.service`) writes
    `kafka_connection_restored` with `down_s` and `suppressed`. Installed on the
    handlers, so it sees every aiokafka logger; a record is judged once however many
    handlers it passes.
    """

    def __init__(
        self, remind_every_s: float = REMIND_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.remind_every_s = remind_every_s
        self.clock = clock
        self.since: float | None = None
        self.last_seen = 0.0
        self.suppressed = 0
        self.last_error = ""
        self._last_line = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def quiet_for(self) -> float:
        """Seconds since the Kafka client last complained."""
        return self.clock() - self.last_seen

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith("aiokafka"):
            return True  # the hot path: every other line passes untouched
        verdict = getattr(record, "_kafka_noise", None)
        if verdict is not None:  # judged by the previous handler
            return bool(verdict)
        verdict = self._judge(record)
        record._kafka_noise = verdict
        return verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        # Quiet for a reminder's length: a new trouble (where no probe said `restored`,
        # e.g. a command-line tool, the earlier one is long over).
        fresh = self.since is not None and now - self.last_seen >= self.remind_every_s
        self.last_seen = now
        message = record.getMessage()[:300]
        self.last_error = message
        if self.since is None or fresh:
            self.since = self._last_line = now
            self.suppressed = 0
            _rewrite(record, "kafka_connection_lost", first_error=message, client=record.name)
            return True
        if now - self._last_line >= self.remind_every_s:
            self._last_line = now
            _rewrite(
                record,
                "kafka_connection_still_down",
                down_s=round(now - self.since, 1),
                suppressed=self.suppressed,
                last_error=message,
            )
            return True
        self.suppressed += 1
        return False

    def restored(self) -> None:
        """The broker answers again and the client has been quiet: say so, once."""
        if self.since is None:
            return
        down_s = round(self.clock() - self.since, 1)
        suppressed, last_error = self.suppressed, self.last_error
        self.since, self.suppressed = None, 0
        _outage_log.info(
            "kafka_connection_restored",
            down_s=down_s,
            suppressed=suppressed,
            last_error=last_error,
        )


def _rewrite(record: logging.LogRecord, event: str, **fields: Any) -> None:
    record.msg, record.args = event, ()
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    for key, value in fields.items():
        setattr(record, key, value)


# The process's one filter (it keeps the outage's state across all handlers).
KAFKA_CLIENT_NOISE = KafkaClientNoise()


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
