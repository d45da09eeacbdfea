"""`make logs`: the story of one mailing, message or client from the JSON log files.

    python -m tools.logs --mailing 5                  # the repo's statistic.log (+ .1, .2...)
    python -m tools.logs --message 17 --format pretty
    python -m tools.logs --client 3 --mailing 5 'logs/*.log' other.log

Every service writes one JSON object per line, with `mailing_id`, `message_id` and
`client_id` on each line about one; a line about many messages of a mailing names them
in lists (`message_ids`, `client_ids`, ...) and matches when one entry does (the pretty
format then shows that entry alone). Filters combine with AND; ids compare as integers
(5 does not match 55). Lines that are not JSON objects are skipped. A file named as such
is read with its rotated copies (`statistic.log.1`, `.2`, ...: LOG_FILE_MAX_BYTES). The
output is in time order across all files: the raw JSON lines (for `jq`), or `--format pretty`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = REPO / "statistic.log"
# Filter flag -> log field.
FIELDS = {"mailing": "mailing_id", "message": "message_id", "client": "client_id"}
# Shown in their own columns by the pretty format.
_COLUMNS = ("timestamp", "service", "level", "event", *FIELDS.values())
_EARLIEST = datetime.min.replace(tzinfo=UTC)
# A line about many messages (the reporter's `messages_transitioned`) names them in
# parallel lists, one entry per message: these, and the id fields they stand for.
LISTS = {
    "message_ids": "message_id",
    "client_ids": "client_id",
    "previous_statuses": "previous_status",
    "attempts": "attempt",
}
_LIST_OF = {one: many for many, one in LISTS.items()}
WHOLE = -1  # `match`: the line's own fields matched (not one entry of its lists)


class UsageError(Exception):
    """A problem with the command line or the files it names (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Line:
    at: datetime
    source: int  # which file, then which line in it: equal timestamps keep file order
    number: int
    raw: str
    fields: dict[str, Any]
    index: int = WHOLE  # which entry of a many-message line's lists matched


def as_id(value: Any) -> int | None:
    """An id field's integer value; None for anything that is not an integer id."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def match(fields: dict[str, Any], wanted: dict[str, int]) -> int | None:
    """None when the line does not match; WHOLE when its own id fields do; else the
    index of the one list entry that matches every wanted id the line has as lists."""
    index: int | None = WHOLE
    for key, ident in wanted.items():
        if as_id(fields.get(key)) == ident:
            continue
        many = fields.get(_LIST_OF.get(key, ""))
        if not isinstance(many, list):
            return None
        found = [i for i, value in enumerate(many) if as_id(value) == ident]
        if index not in (WHOLE, None):
            found = [i for i in found if i == index]
        if not found:
            return None
        index = found[0]
    return index


def matches(fields: dict[str, Any], wanted: dict[str, int]) -> bool:
    return match(fields, wanted) is not None


def narrowed(fields: dict[str, Any], index: int) -> dict[str, Any]:
    """A many-message line as if it were about one: its lists replaced by entry `index`
    (WHOLE: by nothing, its `count` stays)."""
    one = {key: value for key, value in fields.items() if key not in LISTS}
    for many, key in LISTS.items():
        values = fields.get(many)
        if index != WHOLE and isinstance(values, list) and index < len(values):
            one[key] = values[index]
    return one


def select(lines: Iterable[str], wanted: dict[str, int], source: int = 0) -> Iterator[Line]:
    """The JSON-object lines whose ids all equal `wanted` (field -> id), in input order.

    A line without a readable timestamp takes the previous line's, so it stays next to
    its neighbours when sorted.
    """
    # Cheap pre-check before parsing: the line must at least contain each id's digits.
    needles = [str(ident) for ident in wanted.values()]
    previous = _EARLIEST
    for number, raw in enumerate(lines, 1):
        if not all(needle in raw for needle in needles):
            continue
        try:
            fields = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(fields, dict):
            continue
        index = match(fields, wanted)
        if index is None:
            continue
        at = parse_time(fields.get("timestamp")) or previous
        previous = at
        yield Line(at, source, number, raw.rstrip("\r\n"), fields, index)


def expand(patterns: Sequence[str]) -> list[Path]:
    """Files named or matched by glob patterns, each once, in the order given."""
    files: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = sorted(glob.glob(pattern))
            if not found:
                raise UsageError(f"no file matches {pattern}")
            candidates = [Path(name) for name in found]
        else:
            # A file named as such brings its rotated copies (`statistic.log.1`, ...).
            candidates = [Path(pattern), *rotated(Path(pattern))]
        for path in candidates:
            if not path.exists():
                raise UsageError(f"no such file: {path}")
            if path.is_dir():
                raise UsageError(f"{path} is a directory; name the log files in it")
            if path not in files:
                files.append(path)
    return files


def rotated(path: Path) -> list[Path]:
    """The rotated copies of a log file that exist: `<name>.1`, `<name>.2`, ..."""
    copies = [
        (int(suffix), candidate)
        for candidate in path.parent.glob(glob.escape(path.name) + ".*")
        if (suffix := candidate.name[len(path.name) + 1 :]).isascii() and suffix.isdigit()
    ]
    return [candidate for _, candidate in sorted(copies)]


def collect(files: Sequence[Path], wanted: dict[str, int]) -> list[Line]:
    """Matching lines of every file, in time order."""
    found: list[Line] = []
    for source, path in enumerate(files):
        try:
            with path.open(encoding="utf-8", errors="replace") as stream:
                found.extend(select(stream, wanted, source))
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    found.sort(key=lambda line: (line.at, line.source, line.number))
    return found


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and '"' not in value else json.dumps(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def pretty(fields: dict[str, Any]) -> str:
    """time service level event ids, then the other fields as k=v."""
    ids = " ".join(
        f"{flag}={fields[key]}" for flag, key in FIELDS.items() if fields.get(key) is not None
    )
    rest = " ".join(
        f"{key}={_value(value)}" for key, value in fields.items() if key not in _COLUMNS
    )
    parts = [
        str(fields.get("timestamp", "-")),
        f"{fields.get('service', '-')!s:<10}",
        f"{fields.get('level', '-')!s:<7}",
        str(fields.get("event", "-")),
        ids,
        rest,
    ]
    return " ".join(part for part in parts if part)


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m tools.logs",
        description="Log lines of one mailing, message or client, in time order.",
        epilog="Filters combine with AND. `make logs MAILING=5 [MESSAGE=] [CLIENT=] [FILE=]`.",
    )
    for flag, key in FIELDS.items():
        cli.add_argument(
            f"--{flag}", type=int, metavar="ID", help=f"lines whose {key} is ID (an integer)"
        )
    cli.add_argument(
        "--format",
        choices=("json", "pretty"),
        default="json",
        help="json: the raw lines (default, for jq); pretty: one compact line each",
    )
    cli.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help=f"log files or glob patterns (default: {DEFAULT_FILE})",
    )
    return cli


def run(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    wanted = {
        key: getattr(args, flag) for flag, key in FIELDS.items() if getattr(args, flag) is not None
    }
    try:
        if not wanted:
            flags = ", ".join(f"--{flag} ID" for flag in FIELDS)
            raise UsageError(f"give at least one filter: {flags} (they combine with AND)")
        files = expand(args.files or [str(DEFAULT_FILE)])
        lines = collect(files, wanted)
    except UsageError as exc:
        err.write(f"{cli.prog}: error: {exc}\n")
        return 2
    for line in lines:
        shown = pretty(narrowed(line.fields, line.index)) if args.format == "pretty" else line.raw
        out.write(shown + "\n")
    return 0


def main() -> None:
    try:
        code = run(sys.argv[1:], sys.stdout, sys.stderr)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    raise SystemExit(code)


if __name__ == "__main__":
    main()
