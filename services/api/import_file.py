"""Reading a bulk-import file as it streams in: lines, then rows validated as `ClientIn`.

Nothing here holds the whole file: the body arrives in chunks, is decoded with an
incremental UTF-8 decoder, cut into lines (a line longer than `MAX_LINE_CHARS` stops the
import), and each line becomes one row validated by the same model as POST
/api/v1/clients/ (`ClientIn`), so the rules are written once. A row that fails names
its line and field and is skipped; a file that cannot be read at all (no or a wrong
header, not UTF-8, empty, a line over the limit) raises `UnreadableFile`.

CSV: a header row naming `telephone`, and optionally `tag` (several separated by `|`)
and `timezone`, in any order; an empty `timezone` cell is UTC. A quoted cell may hold
commas but not a line break (one row is one line). NDJSON: one JSON object per line,
exactly a POST body; blank lines are skipped.
"""

from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from services.api.errors import UnreadableFile, describe_error
from services.api.schemas import ClientIn

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator

CSV = "text/csv"
NDJSON = "application/x-ndjson"
CONTENT_TYPES = (CSV, NDJSON)
# A client row is under 100 characters; a line this long is not a client row.
MAX_LINE_CHARS = 16_384
COLUMNS = ("telephone", "tag", "timezone")
TAG_SEPARATOR = "|"


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    field: str
    message: str


def file_kind(content_type: str | None) -> str:
    """`text/csv` or `application/x-ndjson` from a Content-Type header (415 otherwise)."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in ("application/ndjson", "application/jsonl", "application/jsonlines"):
        kind = NDJSON
    if kind not in CONTENT_TYPES:
        raise UnreadableFile(
            "content-type",
            f"send the file as {CSV} or {NDJSON} (got {kind or 'no Content-Type'})",
            status=415,
        )
    return kind


async def lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, str]]:
    """(line number from 1, text without the line end) of a UTF-8 byte stream."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    pending = ""
    number = 0
    started = False
    async for chunk in chunks:
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            at = number + 1 + chunk[: max(exc.start, 0)].count(b"\n")
            raise UnreadableFile(
                "body", f"the file is not UTF-8 text (line {at}: {exc.reason})"
            ) from None
        if not started and text:
            started = True
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
        pending += text
        if "\n" not in text:
            if len(pending) > MAX_LINE_CHARS:
                raise _too_long(number + 1)
            continue
        *complete, pending = pending.split("\n")
        for line in complete:
            number += 1
            if len(line) > MAX_LINE_CHARS:
                raise _too_long(number)
            yield number, line.removesuffix("\r")
        if len(pending) > MAX_LINE_CHARS:
            raise _too_long(number + 1)
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UnreadableFile(
            "body", f"the file is not UTF-8 text (line {number + 1}: truncated character)"
        ) from None
    if pending:
        yield number + 1, pending.removesuffix("\r")


def _too_long(number: int) -> UnreadableFile:
    return UnreadableFile(
        "body", f"line {number} is longer than {MAX_LINE_CHARS} characters: not a client row"
    )


def _first_error(number: int, exc: ValidationError) -> Rejected:
    described = describe_error(dict(exc.errors()[0]))
    field = described["field"]
    message = described["message"]
    if field == "body":  # about the line as a whole, not one of its fields
        field = "line"
        message = message.replace("request body", "the line")
    return Rejected(number, field, message)


class CsvRows:
    """CSV lines to `ClientIn` dicts; `header` is read from the first line."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}

    def header(self, line: str) -> None:
        names = [name.strip().lower() for name in _cells(line)]
        unknown = [name for name in names if name not in COLUMNS]
        if "telephone" not in names or unknown:
            got = ",".join(names)[:200]
            hint = f"; unknown column {unknown[0]!r}" if unknown and names[0] else ""
            raise UnreadableFile(
                "header",
                f"the first line must be the header row telephone,tag,timezone (got {got!r}{hint})",
            )
        duplicated = {name for name in names if names.count(name) > 1}
        if duplicated:
            raise UnreadableFile("header", f"column {sorted(duplicated)[0]!r} appears twice")
        self.positions = {name: index for index, name in enumerate(names)}

    def row(self, number: int, line: str) -> ClientIn | Rejected:
        try:
            cells = _cells(line)
        except csv.Error as exc:
            return Rejected(number, "line", f"not a CSV row: {exc}")
        if len(cells) != len(self.positions):
            return Rejected(
                number, "line", f"expected {len(self.positions)} cells, got {len(cells)}"
            )
        data: dict[str, Any] = {"telephone": cells[self.positions["telephone"]].strip()}
        if "tag" in self.positions:
            tags = cells[self.positions["tag"]]
            data["tag"] = tags.split(TAG_SEPARATOR) if tags.strip() else []
        if "timezone" in self.positions:
            zone = cells[self.positions["timezone"]].strip()
            if zone:
                data["timezone"] = zone
        try:
            return ClientIn.model_validate(data)
        except ValidationError as exc:
            return _first_error(number, exc)


def _cells(line: str) -> list[str]:
    if '"' not in line:
        return line.split(",")
    return next(csv.reader((line,)), [])


def ndjson_row(number: int, line: str) -> ClientIn | Rejected:
    try:
        return ClientIn.model_validate_json(line)
    except ValidationError as exc:
        return _first_error(number, exc)


async def rows(kind: str, chunks: AsyncIterable[bytes]) -> AsyncIterator[Numbered | Rejected]:
    """Each data line of the file: a valid client with its line number, or a rejection."""
    csv_rows: CsvRows | None = CsvRows() if kind == CSV else None
    seen_header = False
    any_line = False
    async for number, line in lines(chunks):
        if not line.strip():
            continue
        any_line = True
        if csv_rows is not None and not seen_header:
            csv_rows.header(line)
            seen_header = True
            continue
        row = csv_rows.row(number, line) if csv_rows is not None else ndjson_row(number, line)
        yield row if isinstance(row, Rejected) else Numbered(number, row)
    if not any_line:
        raise UnreadableFile("body", "the file is empty")


@dataclass(frozen=True, slots=True)
class Numbered:
    """A valid row and its line number."""

    line: int
    client: ClientIn
