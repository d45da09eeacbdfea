"""Reading an import file as it streams: lines across chunk boundaries, the header,
rows checked as POST checks a client, the unreadable cases."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.api.errors import UnreadableFile
from services.api.import_file import (
    COLUMNS,
    CSV,
    MAX_LINE_CHARS,
    NDJSON,
    Client,
    CsvRows,
    Numbered,
    Rejected,
    file_kind,
    lines,
    plain_client,
    rows,
)
from services.api.schemas import FILTER_MAX, TAG_MAX, ClientIn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


async def _stream(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _lines(data: bytes, size: int) -> list[tuple[int, str]]:
    return [item async for item in lines(_stream(data, size))]


async def _rows(kind: str, data: bytes, size: int = 7) -> list[Numbered | Rejected]:
    return [row async for row in rows(kind, _stream(data, size))]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
async def test_lines_survive_any_chunking(size: int) -> None:
    data = "\ufeffa,é\r\nb,中文\n\nlast".encode()
    assert await _lines(data, size) == [(1, "a,é"), (2, "b,中文"), (3, ""), (4, "last")]


async def test_a_line_over_the_limit_stops_the_file() -> None:
    with pytest.raises(UnreadableFile, match="line 2 is longer"):
        await _lines(b"ok\n" + b"x" * (MAX_LINE_CHARS + 1) + b"\nmore\n", 1024)


async def test_bytes_that_are_not_utf8_stop_the_file_naming_the_line() -> None:
    with pytest.raises(UnreadableFile, match=r"not UTF-8 text \(line 2"):
        await _lines(b"ok\n\xff\n", 64)


async def test_csv_rows_become_clients_or_named_rejections() -> None:
    data = b'Telephone , tag\n79111234567,a|b\n79111234568\n89111234567,a\n79111234569,"x, y|z"\n'
    got = await _rows(CSV, data)
    first, missing, bad, quoted = got
    assert isinstance(first, Numbered)
    assert (first.line, first.client.telephone, first.client.tag) == (2, "79111234567", ["a", "b"])
    assert first.client.timezone == "UTC"
    assert missing == Rejected(3, "line", "expected 2 cells, got 1")
    assert isinstance(bad, Rejected)
    assert (bad.line, bad.field) == (4, "telephone")
    assert isinstance(quoted, Numbered)
    assert quoted.client.tag == ["x, y", "z"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"phone,tag\n", "header row telephone,tag,timezone"),
        (b"79111234567,a,UTC\n", "header row"),
        (b"telephone,tag,colour\n", "unknown column 'colour'"),
        (b"telephone,tag,tag\n", "'tag' appears twice"),
    ],
)
async def test_a_wrong_header_stops_the_file(header: bytes, message: str) -> None:
    with pytest.raises(UnreadableFile, match=message) as raised:
        await _rows(CSV, header + b"79111234567,a,UTC\n")
    assert raised.value.field == "header"


async def test_an_empty_file_is_unreadable() -> None:
    with pytest.raises(UnreadableFile, match="empty"):
        await _rows(CSV, b"\n\n")


async def test_ndjson_lines_are_post_bodies() -> None:
    got = await _rows(NDJSON, b'{"telephone": 79111234567, "tag": "a"}\n{"tag": []}\n', 4)
    ok, missing = got
    assert isinstance(ok, Numbered)
    assert (ok.client.telephone, ok.client.tag) == ("79111234567", ["a"])
    assert isinstance(missing, Rejected)
    assert (missing.line, missing.field) == (2, "telephone")


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("text/csv; charset=utf-8", CSV),
        ("application/x-ndjson", NDJSON),
        ("application/jsonl", NDJSON),
    ],
)
def test_content_types(header: str, kind: str) -> None:
    assert file_kind(header) == kind


@pytest.mark.parametrize("header", [None, "", "application/json", "text/plain"])
def test_other_content_types_are_415(header: str | None) -> None:
    with pytest.raises(UnreadableFile) as raised:
        file_kind(header)
    assert raised.value.status == 415
    assert raised.value.field == "content-type"


# The CSV shortcut takes a row only when ClientIn would take it, and gives what ClientIn
# gives. Cells drawn near the rules' edges: spaces (stripped by ClientIn), control
# characters, non-ASCII letters and spaces, tags of 64 and 65 characters, 100 and 101 tags.
_TAG_CHARS = st.sampled_from(["a", "b", "Я", "_", "-", " ", "\u00a0", "\t", "\x01", "\x7f", "é"])
_TAG = st.one_of(
    st.text(_TAG_CHARS, min_size=0, max_size=4),
    st.sampled_from(["x" * TAG_MAX, "x" * (TAG_MAX + 1), " a", "a "]),
)
_TAGS = st.one_of(
    st.lists(_TAG, max_size=5).map("|".join),
    st.sampled_from([FILTER_MAX, FILTER_MAX + 1]).map(lambda n: "|".join(["t"] * n)),
)
_PHONE = st.one_of(
    st.from_regex(r"7[0-9]{10}", fullmatch=True),
    st.sampled_from(["8911123456", "7911123456", "791112345678", "7911123456\u0669", ""]),
)
_ZONE = st.sampled_from(["", "UTC", "Europe/Moscow", "europe/moscow", "Mars/Base", "Asia/Tokyo"])


def _by_model(telephone: str, tags: str, zone: str) -> Client | None:
    data: dict[str, object] = {"telephone": telephone}
    data["tag"] = tags.split("|") if tags.strip() else []
    if zone:
        data["timezone"] = zone
    try:
        model = ClientIn.model_validate(data)
    except ValidationError:
        return None
    return Client(model.telephone, model.tag, model.timezone)


@settings(max_examples=400, deadline=None)
@given(telephone=_PHONE, tags=_TAGS, zone=_ZONE)
def test_the_csv_shortcut_takes_only_what_clientin_takes_and_gives_the_same(
    telephone: str, tags: str, zone: str
) -> None:
    shortcut = plain_client(telephone, tags, zone)
    if shortcut is not None:
        assert shortcut == _by_model(telephone, tags, zone)


_CELL_TEXT = st.text(st.sampled_from(["7", "1", "a", ",", '"', " ", "|", "/", "\x01"]), max_size=12)


@settings(max_examples=400, deadline=None)
@given(
    columns=st.permutations(COLUMNS).flatmap(
        lambda order: st.integers(1, len(order)).map(lambda n: order[:n])
    ),
    telephone=st.one_of(_PHONE, _CELL_TEXT, _PHONE.map(lambda p: f" {p} ")),
    tags=st.one_of(
        _TAGS,
        _CELL_TEXT,
        _TAGS.map(lambda t: f'"{t}"'),
        st.lists(st.sampled_from(["a", "b,c", 'd"e', "Я"]), min_size=1, max_size=3).map("|".join),
    ),
    zone=st.one_of(_ZONE, _CELL_TEXT, _ZONE.map(lambda z: f"{z} ")),
)
def test_csv_lines_read_with_the_shortcut_as_without_it(
    columns: list[str], telephone: str, tags: str, zone: str
) -> None:
    if "telephone" not in columns:
        columns = ["telephone", *columns]
    cells = {"telephone": telephone, "tag": tags, "timezone": zone}
    line = ",".join(cells[name] for name in columns)
    fast, model = CsvRows(), CsvRows(shortcut=False)
    for reader in (fast, model):
        reader.header(",".join(columns))
    assert fast.row(2, line) == model.row(2, line)


def test_the_csv_shortcut_takes_plain_rows() -> None:
    assert plain_client("79111234567", "b|a|b", "Europe/Moscow") == Client(
        "79111234567", ["a", "b"], "Europe/Moscow"
    )
    assert plain_client("79111234567", "", "") == Client("79111234567", [], "UTC")
    assert plain_client("79111234567", " a", "UTC") is None  # ClientIn strips it


async def test_rows_the_shortcut_leaves_are_checked_and_worded_by_clientin() -> None:
    many = "|".join(["t"] * (FILTER_MAX + 1))
    data = (
        "telephone,tag,timezone\n"
        f"79111234567, a |b,\n"
        f"79111234568,{many},UTC\n"
        "79111234569,x,Mars/Base\n"
    ).encode()
    spaced, too_many, zone = await _rows(CSV, data)
    assert spaced == Numbered(2, Client("79111234567", ["a", "b"], "UTC"))
    assert isinstance(too_many, Rejected)
    assert (too_many.line, too_many.field) == (3, "tag")
    assert "at most 100 items" in too_many.message
    assert zone == Rejected(4, "timezone", "unknown IANA time zone 'Mars/Base', e.g. Europe/Moscow")
