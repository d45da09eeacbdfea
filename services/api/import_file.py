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
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from services.api.errors import UnreadableFile, describe_error
from services.api.schemas import FILTER_MAX, PHONE, TAG_MAX, ClientIn, known_zones

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
class Client:
    """A valid row as `ClientIn` leaves it: tags unique and sorted, the zone defaulted."""

    telephone: str
    tag: list[str]
    timezone: str


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
    async for batch in line_batches(chunks):
        for item in batch:
            yield item


async def line_batches(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[tuple[int, str]]]:
    """`lines`, a list per chunk of the stream (one step of the loop per chunk, not per
    line: the import's hot path)."""
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
        batch: list[tuple[int, str]] = []
        for line in complete:
            number += 1
            if len(line) > MAX_LINE_CHARS:
                raise _too_long(number)
            batch.append((number, line.removesuffix("\r")))
        yield batch
        if len(pending) > MAX_LINE_CHARS:
            raise _too_long(number + 1)
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UnreadableFile(
            "body", f"the file is not UTF-8 text (line {number + 1}: truncated character)"
        ) from None
    if pending:
        yield [(number + 1, pending.removesuffix("\r"))]


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


# A tag cell ClientIn surely takes as it is: 1 to TAG_MAX characters each, at most
# FILTER_MAX of them, none with white space (which it would strip) or control characters.
# In a whole CSV line (`_PLAIN_CELLS`) tags hold no comma or quote either.
_SEP = re.escape(TAG_SEPARATOR)
_PLAIN_TAG = rf"[^\s\x00-\x1f\x7f{_SEP}]{{1,{TAG_MAX}}}"
_PLAIN_TAGS = re.compile(rf"{_PLAIN_TAG}(?:{_SEP}{_PLAIN_TAG}){{0,{FILTER_MAX - 1}}}")
_LINE_TAG = rf"[^\s\x00-\x1f\x7f{_SEP},\"]{{1,{TAG_MAX}}}"
_PLAIN_CELLS = {
    "telephone": rf"({PHONE.pattern})",
    "tag": rf"((?:{_LINE_TAG}(?:{_SEP}{_LINE_TAG}){{0,{FILTER_MAX - 1}}})?)",
    "timezone": r"([A-Za-z0-9_+/-]*)",
}


def plain_client(telephone: str, tags: str, zone: str) -> Client | None:
    """The client of a CSV row's cells when it is plainly valid, else None.

    A shortcut, not a second set of rules: it recognises only rows that `ClientIn`
    takes unchanged (a telephone `7` and 10 digits, a known zone or none, tags without
    spaces or control characters) and gives what `ClientIn` gives for them (unit tests
    compare the two on generated rows). Every other row is validated by `ClientIn`,
    which also words the rejection. Building the model costs ~10 µs a row, the
    shortcut ~1 µs: most of a big import's time in Python.
    """
    if not PHONE.fullmatch(telephone) or (tags and not _PLAIN_TAGS.fullmatch(tags)):
        return None
    return _checked(telephone, tags, zone)


def _checked(telephone: str, tags: str, zone: str) -> Client | None:
    """`plain_client` once the telephone and tags are known plain: the zone, the tags."""
    if not zone:
        zone = "UTC"
    elif zone not in known_zones():
        return None
    if not tags:
        return Client(telephone, [], zone)
    names = tags.split(TAG_SEPARATOR)
    return Client(telephone, sorted(set(names)) if len(names) > 1 else names, zone)


class CsvRows:
    """CSV lines to clients; `header` is read from the first line."""

    def __init__(self, *, shortcut: bool = True) -> None:
        self.positions: dict[str, int] = {}
        # shortcut=False: every row through ClientIn (what tests compare the shortcut to).
        self.shortcut = shortcut
        self._plain_line: re.Pattern[str] | None = None
        self._groups = (0, 0, 0)

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
        if self.shortcut:
            # The plain_client rows of the usual shape, recognised by one match a line:
            # no quotes, no spaces around cells. Group 0 is "" (a column not given).
            self._plain_line = re.compile(",".join(_PLAIN_CELLS[name] for name in names))
            telephone, tag, zone = (
                names.index(name) + 1 if name in names else 0 for name in COLUMNS
            )
            self._groups = (telephone, tag, zone)

    def row(self, number: int, line: str) -> Client | Rejected:
        if self._plain_line is not None and (match := self._plain_line.fullmatch(line)):
            cells = (*match.groups(), "")
            telephone, tag, zone = self._groups
            plain = _checked(cells[telephone - 1], cells[tag - 1], cells[zone - 1])
            if plain is not None:
                return plain
        return self._cells_row(number, line)

    def _cells_row(self, number: int, line: str) -> Client | Rejected:
        try:
            cells = _cells(line)
        except csv.Error as exc:
            return Rejected(number, "line", f"not a CSV row: {exc}")
        positions = self.positions
        if len(cells) != len(positions):
            return Rejected(number, "line", f"expected {len(positions)} cells, got {len(cells)}")
        telephone = cells[positions["telephone"]].strip()
        tag = positions.get("tag")
        tags = cells[tag] if tag is not None else ""
        zone = positions.get("timezone")
        timezone = cells[zone].strip() if zone is not None else ""
        plain = plain_client(telephone, tags, timezone) if self.shortcut else None
        if plain is not None:
            return plain
        data: dict[str, Any] = {"telephone": telephone}
        if tag is not None:
            data["tag"] = tags.split(TAG_SEPARATOR) if tags.strip() else []
        if timezone:
            data["timezone"] = timezone
        try:
            return _client(ClientIn.model_validate(data))
        except ValidationError as exc:
            return _first_error(number, exc)


def _client(model: ClientIn) -> Client:
    return Client(model.telephone, model.tag, model.timezone)


def _cells(line: str) -> list[str]:
    if '"' not in line:
        return line.split(",")
    return next(csv.reader((line,)), [])


def ndjson_row(number: int, line: str) -> Client | Rejected:
    try:
        return _client(ClientIn.model_validate_json(line))
    except ValidationError as exc:
        return _first_error(number, exc)


async def rows(kind: str, chunks: AsyncIterable[bytes]) -> AsyncIterator[Numbered | Rejected]:
    """Each data line of the file: a valid client with its line number, or a rejection."""
    async for batch in row_batches(kind, chunks):
        for row in batch:
            yield row


async def row_batches(
    kind: str, chunks: AsyncIterable[bytes]
) -> AsyncIterator[list[Numbered | Rejected]]:
    """`rows`, a list per chunk of the stream."""
    csv_rows: CsvRows | None = CsvRows() if kind == CSV else None
    seen_header = False
    any_line = False
    async for lines_of_chunk in line_batches(chunks):
        batch: list[Numbered | Rejected] = []
        for number, line in lines_of_chunk:
            if not line or line.isspace():
                continue
            any_line = True
            if csv_rows is not None and not seen_header:
                csv_rows.header(line)
                seen_header = True
                continue
            row = csv_rows.row(number, line) if csv_rows is not None else ndjson_row(number, line)
            batch.append(row if isinstance(row, Rejected) else Numbered(number, row))
        if batch:
            yield batch
    if not any_line:
        raise UnreadableFile("body", "the file is empty")


@dataclass(frozen=True, slots=True)
class Numbered:
    """A valid row and its line number."""

    line: int
    client: Client
