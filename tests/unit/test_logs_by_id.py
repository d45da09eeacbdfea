"""Logs by id: the filter's own rules (integer ids, AND, junk lines, time order, errors)
on small files. On the real pipeline's log file: tests/e2e/test_logs_by_id.py."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import pytest

from tools import logs

if TYPE_CHECKING:
    from pathlib import Path


Line = dict[str, Any]


def write(path: Path, *lines: Line | str) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = logs.run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def events(output: str) -> list[str]:
    return [json.loads(line)["event"] for line in output.splitlines()]


def test_ids_compare_as_integers(tmp_path: Path) -> None:
    log = write(
        tmp_path / "a.log",
        {"event": "five", "mailing_id": 5, "timestamp": "2031-01-02T09:00:00Z"},
        {"event": "fifty-five", "mailing_id": 55, "timestamp": "2031-01-02T09:00:01Z"},
        {"event": "fifteen", "mailing_id": 15, "timestamp": "2031-01-02T09:00:02Z"},
        {"event": "as text", "mailing_id": "5", "timestamp": "2031-01-02T09:00:03Z"},
        {"event": "in another field", "message_id": 5, "timestamp": "2031-01-02T09:00:04Z"},
        {"event": "a boolean", "mailing_id": True, "timestamp": "2031-01-02T09:00:05Z"},
        {"event": "a float", "mailing_id": 5.5, "timestamp": "2031-01-02T09:00:06Z"},
    )
    code, out, err = cli("--mailing", "5", str(log))
    assert (code, err) == (0, "")
    assert events(out) == ["five", "as text"]
    code, out, _ = cli("--mailing", "1", str(log))
    assert (code, out) == (0, "")


def test_filters_combine_with_and(tmp_path: Path) -> None:
    log = write(
        tmp_path / "a.log",
        {"event": "mailing only", "mailing_id": 5, "timestamp": "2031-01-02T09:00:00Z"},
        {"event": "client only", "client_id": 3, "timestamp": "2031-01-02T09:00:01Z"},
        {"event": "both", "mailing_id": 5, "client_id": 3, "timestamp": "2031-01-02T09:00:02Z"},
        {
            "event": "other client",
            "mailing_id": 5,
            "client_id": 4,
            "timestamp": "2031-01-02T09:00:03Z",
        },
        {
            "event": "all three",
            "mailing_id": 5,
            "message_id": 9,
            "client_id": 3,
            "timestamp": "2031-01-02T09:00:04Z",
        },
    )
    assert events(cli("--mailing", "5", "--client", "3", str(log))[1]) == ["both", "all three"]
    assert events(cli("--client", "3", "--message", "9", str(log))[1]) == ["all three"]
    assert events(cli("--client", "3", str(log))[1]) == ["client only", "both", "all three"]


def test_lines_that_are_not_json_objects_are_skipped(tmp_path: Path) -> None:
    log = write(
        tmp_path / "a.log",
        "Traceback (most recent call last): mailing_id 5",
        '{"event": "cut short", "mailing_id": 5, "timest',
        "[5, 5]",
        "5",
        '"mailing_id: 5"',
        "",
        {"event": "kept", "mailing_id": 5, "timestamp": "2031-01-02T09:00:00Z"},
        "\x00\x01 binary garbage 5 \xff",
    )
    with log.open("ab") as stream:
        stream.write(b'\xff\xfe{"mailing_id": 5}\n')
    code, out, err = cli("--mailing", "5", str(log))
    assert (code, err) == (0, "")
    assert events(out) == ["kept"]


def test_output_is_in_time_order_across_files(tmp_path: Path) -> None:
    api = write(
        tmp_path / "api.log",
        {"event": "api 1", "client_id": 3, "timestamp": "2031-01-02T09:00:01.500000Z"},
        {"event": "api 2", "client_id": 3, "timestamp": "2031-01-02T09:00:03Z"},
        {"event": "api, same instant", "client_id": 3, "timestamp": "2031-01-02T09:00:04Z"},
    )
    dispatcher = write(
        tmp_path / "dispatcher.log",
        {"event": "dispatcher 1", "client_id": 3, "timestamp": "2031-01-02T09:00:00Z"},
        {"event": "offset form", "client_id": 3, "timestamp": "2031-01-02T12:00:02+03:00"},
        {"event": "dispatcher, same instant", "client_id": 3, "timestamp": "2031-01-02T09:00:04Z"},
        {"event": "no timestamp: stays after its neighbour", "client_id": 3},
    )
    code, out, _ = cli("--client", "3", str(dispatcher), str(api))
    assert code == 0
    assert events(out) == [
        "dispatcher 1",
        "api 1",
        "offset form",
        "api 2",
        # Equal instants: in the order the files were given, then line order.
        "dispatcher, same instant",
        "no timestamp: stays after its neighbour",
        "api, same instant",
    ]
    # The raw lines come out unchanged.
    assert out.splitlines()[1] == api.read_text().splitlines()[0]


def test_globs_name_several_files_once_each(tmp_path: Path) -> None:
    for name in ("a.log", "b.log"):
        write(tmp_path / name, {"event": name, "client_id": 3, "timestamp": "2031-01-02T09:00:00Z"})
    write(
        tmp_path / "c.txt", {"event": "c.txt", "client_id": 3, "timestamp": "2031-01-02T09:00:00Z"}
    )
    code, out, _ = cli("--client", "3", str(tmp_path / "*.log"), str(tmp_path / "a.log"))
    assert code == 0
    assert events(out) == ["a.log", "b.log"]


def test_a_named_file_is_read_with_its_rotated_copies(tmp_path: Path) -> None:
    log = tmp_path / "statistic.log"
    write(
        log.with_name("statistic.log.2"),
        {"event": "oldest", "client_id": 3, "timestamp": "2031-01-02T09:00:00Z"},
    )
    write(
        log.with_name("statistic.log.1"),
        {"event": "older", "client_id": 3, "timestamp": "2031-01-02T09:00:01Z"},
    )
    write(log, {"event": "newest", "client_id": 3, "timestamp": "2031-01-02T09:00:02Z"})
    write(log.with_name("statistic.log.lock"), "")
    write(log.with_name("statistic.log.bak"), {"event": "not a rotated copy", "client_id": 3})
    code, out, _ = cli("--client", "3", str(log))
    assert code == 0
    assert events(out) == ["oldest", "older", "newest"]


def test_pretty_format_is_one_compact_line_each(tmp_path: Path) -> None:
    log = write(
        tmp_path / "a.log",
        {
            "event": "gateway_response",
            "service": "dispatcher",
            "level": "info",
            "timestamp": "2031-01-02T09:00:00.250000Z",
            "mailing_id": 5,
            "message_id": 17,
            "client_id": 3,
            "status": 200,
            "error": None,
            "detail": "took a while",
        },
    )
    code, out, _ = cli("--message", "17", "--format", "pretty", str(log))
    assert code == 0
    assert out == (
        "2031-01-02T09:00:00.250000Z dispatcher info    gateway_response"
        " mailing=5 message=17 client=3"
        ' status=200 error=null detail="took a while"\n'
    )


def test_without_a_filter_it_names_the_flags(tmp_path: Path) -> None:
    log = write(tmp_path / "a.log", {"event": "x", "mailing_id": 5})
    code, out, err = cli(str(log))
    assert (code, out) == (2, "")
    for flag in ("--mailing", "--message", "--client"):
        assert flag in err


def test_missing_files_are_named(tmp_path: Path) -> None:
    code, out, err = cli("--mailing", "5", str(tmp_path / "nope.log"))
    assert (code, out) == (2, "")
    assert f"no such file: {tmp_path / 'nope.log'}" in err
    code, _, err = cli("--mailing", "5", str(tmp_path / "*.log"))
    assert code == 2
    assert "no file matches" in err
    code, _, err = cli("--mailing", "5", str(tmp_path))
    assert code == 2
    assert "is a directory" in err


def test_a_non_integer_id_is_refused() -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("--mailing", "five")
    assert exit_info.value.code == 2


def transitioned(at: str, **overrides: Any) -> Line:
    """The reporter's line for a `messages.transitioned` event of three messages."""
    return {
        "event": "messages_transitioned",
        "timestamp": at,
        "service": "reporter",
        "level": "info",
        "mailing_id": 5,
        "status": "sent",
        "count": 3,
        "message_ids": [70, 71, 72],
        "client_ids": [30, 31, 32],
        "previous_statuses": ["sending", "sending", "retrying"],
        "attempts": [1, 1, 2],
        **overrides,
    }


def test_a_many_message_line_matches_by_any_of_its_entries(tmp_path: Path) -> None:
    log = write(
        tmp_path / "a.log",
        transitioned("2031-01-02T09:00:00Z"),
        {"event": "other", "message_id": 7, "timestamp": "2031-01-02T09:00:01Z"},
        # 7 is only part of 70: no match.
    )
    assert events(cli("--message", "72", str(log))[1]) == ["messages_transitioned"]
    assert events(cli("--client", "31", str(log))[1]) == ["messages_transitioned"]
    assert events(cli("--message", "7", str(log))[1]) == ["other"]
    assert events(cli("--message", "73", str(log))[1]) == []
    # Message and client must be the same entry, not two entries of the line.
    assert events(cli("--message", "71", "--client", "31", str(log))[1]) == [
        "messages_transitioned"
    ]
    assert events(cli("--message", "71", "--client", "32", str(log))[1]) == []
    assert events(cli("--message", "72", "--mailing", "5", str(log))[1]) == [
        "messages_transitioned"
    ]
    assert events(cli("--message", "72", "--mailing", "6", str(log))[1]) == []


def test_pretty_shows_the_matching_entry_of_a_many_message_line(tmp_path: Path) -> None:
    log = write(tmp_path / "a.log", transitioned("2031-01-02T09:00:00Z"))
    code, out, _ = cli("--format", "pretty", "--message", "72", str(log))
    assert code == 0
    [line] = out.splitlines()
    assert "mailing=5 message=72 client=32" in line
    for shown in ("previous_status=retrying", "attempt=2", "status=sent"):
        assert shown in line
    for hidden in ("message_ids", "70"):
        assert hidden not in line
    # By mailing: no entry is singled out, the count stays and the lists go.
    [line] = cli("--format", "pretty", "--mailing", "5", str(log))[1].splitlines()
    assert "count=3" in line
    assert "message_ids" not in line
    assert "message=" not in line
    # The JSON format gives the line as it was written.
    raw = json.loads(cli("--message", "72", str(log))[1])
    assert raw["message_ids"] == [70, 71, 72]
