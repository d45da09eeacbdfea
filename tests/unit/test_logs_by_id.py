"""Logs by id: one mailing end to end on the real pipeline, every service logging to one
file, then the real `tools.logs` CLI asked for one message, client or mailing. Plus the
filter's own rules (integer ids, AND, junk lines, time order, errors) on small files."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.infra import REPO
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually
from tools import logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.support.infra import Infra

Line = dict[str, Any]


# --- the filter on small files -----------------------------------------------------


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


# --- one mailing end to end ----------------------------------------------------------


@dataclass
class Story:
    pipe: Pipeline
    mailing_id: int
    # client id -> its message id, for the mailing's two clients
    messages: dict[int, int]


def fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
async def story(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    pipe = Pipeline(infra, tmp_path_factory.mktemp("logs"))
    await pipe.start()
    try:
        tag = f"t{uuid.uuid4().hex[:6]}"
        clients = await pipe.clients(2, tag=[tag])
        for client in clients:  # a read: its request line carries the client id too
            assert (await pipe.api.get(f"/api/v1/clients/{client['id']}/")).status_code == 200
        now = datetime.now(UTC)
        mailing = await pipe.mailing(
            date_time_start=fmt(now - timedelta(minutes=1)),
            date_time_stop=fmt(now + timedelta(minutes=5)),
            text="Logs by id",
            tag=[tag],
        )
        assert await pipe.settled(mailing["id"]) == {"sent": 2}
        await eventually(
            pipe.control.accepted, lambda accepted: len(accepted) == 2, what="2 in the ledger"
        )
        rows = pipe.query("SELECT client_id, id FROM message WHERE mailing_id = %s", mailing["id"])
        yield Story(pipe, mailing["id"], {client_id: message_id for client_id, message_id in rows})
    finally:
        await pipe.stop()


async def run_logs(story: Story, *argv: str) -> list[Line]:
    """The real CLI, as a subprocess, on the pipeline's log file."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tools.logs", *argv, str(story.pipe.log_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


async def logs_until(story: Story, *argv: str, having: set[str]) -> list[Line]:
    """Lines for `argv` once every event in `having` is among them (services log
    asynchronously: a line may land just after the state the test waited for)."""
    return await eventually(
        lambda: run_logs(story, *argv),
        lambda lines: having <= {line["event"] for line in lines},
        timeout=30,
        interval=0.5,
        what=f"log lines {sorted(having)} for {' '.join(argv)}",
    )


def only(lines: list[Line], event: str) -> list[Line]:
    return [line for line in lines if line["event"] == event]


def ids(line: Line) -> tuple[Any, Any, Any]:
    return line.get("mailing_id"), line.get("message_id"), line.get("client_id")


def assert_time_ordered(lines: list[Line]) -> None:
    stamps = [datetime.fromisoformat(line["timestamp"]) for line in lines]
    assert stamps == sorted(stamps)


async def test_a_message_id_gives_scheduling_and_gateway_lines_and_nothing_else(
    story: Story,
) -> None:
    for client_id, message_id in story.messages.items():
        lines = await logs_until(
            story,
            "--message",
            str(message_id),
            having={"send_command_published", "gateway_request", "gateway_response"},
        )
        # Nothing about another message leaks in.
        assert {line["message_id"] for line in lines} == {message_id}
        assert_time_ordered(lines)
        [scheduled] = only(lines, "send_command_published")
        assert scheduled["service"] == "scheduler"
        assert ids(scheduled) == (story.mailing_id, message_id, client_id)
        [request] = only(lines, "gateway_request")
        [response] = only(lines, "gateway_response")
        for line in (request, response):
            assert line["service"] == "dispatcher"
            assert ids(line) == (story.mailing_id, message_id, client_id)
        assert (response["outcome"], response["status"]) == ("ok", 200)
        assert lines.index(request) < lines.index(response)


async def test_a_client_id_gives_its_creation_requests_and_messages(story: Story) -> None:
    for client_id, message_id in story.messages.items():
        lines = await logs_until(
            story,
            "--client",
            str(client_id),
            having={"client_created", "http_request", "gateway_response"},
        )
        assert {line["client_id"] for line in lines} == {client_id}
        assert {line.get("message_id") for line in lines} <= {message_id, None}
        assert_time_ordered(lines)
        [created] = only(lines, "client_created")
        assert created["service"] == "api"
        requests = {
            (line["method"], line["path"], line["status"]) for line in only(lines, "http_request")
        }
        assert requests == {
            ("POST", "/api/v1/clients/", 201),
            ("GET", f"/api/v1/clients/{client_id}/", 200),
        }
        # Published from the outbox by whichever service's relay held the lock.
        [published] = only(lines, "event_published")
        assert published["type"] == "client.created"
        assert published["topic"] == f"{story.pipe.name}.client.events"


async def test_a_mailing_id_gives_its_creation_activation_and_every_message(
    story: Story,
) -> None:
    lines = await logs_until(
        story,
        "--mailing",
        str(story.mailing_id),
        having={"mailing_created", "event_published", "mailing_activated", "gateway_response"},
    )
    assert {line["mailing_id"] for line in lines} == {story.mailing_id}
    assert_time_ordered(lines)
    [created] = only(lines, "mailing_created")
    assert created["service"] == "api"
    [request] = only(lines, "http_request")
    assert (request["method"], request["path"], request["status"]) == (
        "POST",
        "/api/v1/notifications/",
        201,
    )
    assert lines.index(request) > lines.index(created)
    [published] = only(lines, "event_published")
    assert published["type"] == "mailing.created"
    assert published["topic"] == f"{story.pipe.name}.mailing.events"
    [activated] = only(lines, "mailing_activated")
    assert (activated["service"], activated["messages"]) == ("scheduler", 2)
    responses = only(lines, "gateway_response")
    assert {line["message_id"] for line in responses} == set(story.messages.values())


async def test_mailing_and_client_together_give_that_one_message(story: Story) -> None:
    client_id, message_id = next(iter(story.messages.items()))
    lines = await logs_until(
        story,
        "--mailing",
        str(story.mailing_id),
        "--client",
        str(client_id),
        having={"gateway_response"},
    )
    assert {ids(line) for line in lines} == {(story.mailing_id, message_id, client_id)}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            *(sys.executable, "-m", "tools.logs", "--format", "pretty"),
            *("--message", str(message_id), str(story.pipe.log_file)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pretty = result.stdout.splitlines()
    assert len(pretty) == len(await run_logs(story, "--message", str(message_id)))
    ids_column = f"mailing={story.mailing_id} message={message_id} client={client_id}"
    assert all(ids_column in line for line in pretty)
    assert any(" dispatcher " in line and " gateway_request " in line for line in pretty)


async def test_status_changes_of_a_message_are_logged_by_the_reporter(story: Story) -> None:
    """The reporter logs one `message_status_changed` line per status event it applies."""
    for client_id, message_id in story.messages.items():
        lines = await logs_until(
            story, "--message", str(message_id), having={"message_status_changed"}
        )
        changes = only(lines, "message_status_changed")
        assert {line["service"] for line in changes} == {"reporter"}
        assert {ids(line) for line in changes} == {(story.mailing_id, message_id, client_id)}
        assert {"queued", "sending", "sent"} <= {line["status"] for line in changes}
        [sent] = [line for line in changes if line["status"] == "sent"]
        assert (sent["previous_status"], sent["attempt"], sent["error"]) == ("sending", 1, None)
