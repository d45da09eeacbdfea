"""Logs by id: one mailing end to end on the real pipeline, every service logging to one
file, then the real `tools.logs` CLI asked for one message, client or mailing.

The filter's own rules on small files: tests/unit/test_logs_by_id.py."""

from __future__ import annotations

import asyncio
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

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.infra import Infra

Line = dict[str, Any]


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


MANY = ("message_ids", "client_ids", "previous_statuses", "attempts")


def entry(line: Line, message_id: int) -> dict[str, Any]:
    """A line's fields about one message: its own, or those of the message's entry in a
    many-message line's lists (`messages_transitioned`)."""
    if "message_ids" not in line:
        return dict(line)
    i = line["message_ids"].index(message_id)
    one = {k: v for k, v in line.items() if k not in MANY}
    for many, key in zip(
        MANY, ("message_id", "client_id", "previous_status", "attempt"), strict=True
    ):
        if many in line:
            one[key] = line[many][i]
    return one


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
            having={"send_command_published", "gateway_response"},
        )
        # Nothing about another message leaks in.
        assert {entry(line, message_id)["message_id"] for line in lines} == {message_id}
        assert_time_ordered(lines)
        [scheduled] = only(lines, "send_command_published")
        assert scheduled["service"] == "scheduler"
        assert ids(entry(scheduled, message_id)) == (story.mailing_id, message_id, client_id)
        # One line per attempt, with its answer.
        [response] = only(lines, "gateway_response")
        assert response["service"] == "dispatcher"
        assert ids(response) == (story.mailing_id, message_id, client_id)
        assert (response["outcome"], response["status"], response["attempt"]) == ("ok", 200, 1)
        assert response["deadline_s"] > 0
        assert lines.index(scheduled) < lines.index(response)


async def test_a_client_id_gives_its_creation_requests_and_messages(story: Story) -> None:
    for client_id, message_id in story.messages.items():
        lines = await logs_until(
            story,
            "--client",
            str(client_id),
            having={"client_created", "http_request", "gateway_response"},
        )
        assert {
            line["client_id"] if "client_ids" not in line else entry(line, message_id)["client_id"]
            for line in lines
        } == {client_id}
        assert {line.get("message_id") for line in lines} <= {message_id, None}
        assert all(
            line["message_ids"][line["client_ids"].index(client_id)] == message_id
            for line in lines
            if "message_ids" in line
        )
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
    assert {ids(entry(line, message_id)) for line in lines} == {
        (story.mailing_id, message_id, client_id)
    }
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
    assert any(" dispatcher " in line and " gateway_response " in line for line in pretty)
    # A many-message line shows this message's entry alone.
    transitioned = [line for line in pretty if " messages_transitioned " in line]
    assert transitioned
    assert all(" message_ids=" not in line and " attempt=" in line for line in transitioned)


async def test_status_changes_of_a_message_are_logged_by_the_reporter(story: Story) -> None:
    """The reporter logs one `messages_transitioned` line per status event it applies,
    naming each message of the event; a message's id finds every change it went
    through."""
    for client_id, message_id in story.messages.items():
        lines = await logs_until(
            story, "--message", str(message_id), having={"messages_transitioned"}
        )
        changes = [entry(line, message_id) for line in only(lines, "messages_transitioned")]
        assert {line["service"] for line in changes} == {"reporter"}
        assert {ids(line) for line in changes} == {(story.mailing_id, message_id, client_id)}
        assert {"queued", "sending", "sent"} <= {line["status"] for line in changes}
        [sent] = [line for line in changes if line["status"] == "sent"]
        assert (sent["previous_status"], sent["attempt"], sent["error"]) == ("sending", 1, None)
