"""The `notifications` command-line client against a stub of the admin API: what it
sends, what it prints, its exit status and its error messages."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from typer.testing import CliRunner

from services.cli import api
from services.cli.main import REJECTED_EXIT, app

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

runner = CliRunner()


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], list[httpx.Request]]:
    """Route the CLI's requests to `handler`; returns the list of requests it got."""

    def install(handler: Callable[[httpx.Request], httpx.Response]) -> list[httpx.Request]:
        seen: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            request.read()
            seen.append(request)
            return handler(request)

        monkeypatch.setattr(api, "transport", httpx.MockTransport(record))
        return seen

    return install


RESULT = {"created": 2, "updated": 0, "unchanged": 0, "rejected": [], "rejected_count": 0}


def test_import_streams_the_file_with_its_type_and_mode(
    stub: Callable[[Any], list[httpx.Request]], tmp_path: Path
) -> None:
    file = tmp_path / "clients.csv"
    file.write_text("telephone,tag,timezone\n79111234567,a,UTC\n79111234568,,\n")
    seen = stub(lambda _: httpx.Response(200, json=RESULT))
    result = runner.invoke(
        app,
        ["import", str(file), "--mode", "upsert", "--url", "http://api:8000/", "--token", "t"],
    )
    assert result.exit_code == 0, result.output
    assert "created 2, updated 0, unchanged 0, rejected 0" in result.stdout
    [request] = seen
    assert str(request.url) == "http://api:8000/api/v1/clients/import/?mode=upsert"
    assert request.headers["content-type"] == "text/csv"
    assert request.headers["authorization"] == "Bearer t"
    assert request.content == file.read_bytes()


def test_rejected_rows_are_listed_and_exit_3(
    stub: Callable[[Any], list[httpx.Request]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "clients.jsonl"
    file.write_text('{"telephone": "79111234567"}\n')
    monkeypatch.setenv(api.TOKEN_ENV, "from-env")
    answer = {
        **RESULT,
        "rejected": [{"line": 4, "field": "timezone", "message": "unknown IANA time zone"}],
        "rejected_count": 1,
    }
    seen = stub(lambda _: httpx.Response(200, json=answer))
    result = runner.invoke(app, ["import", str(file)])
    assert result.exit_code == REJECTED_EXIT, result.output
    assert seen[0].headers["content-type"] == "application/x-ndjson"
    assert seen[0].headers["authorization"] == "Bearer from-env"
    assert "rejected 1" in result.stdout
    assert "timezone" in result.stdout
    assert "unknown IANA time zone" in result.stdout


def test_json_output_for_scripts(
    stub: Callable[[Any], list[httpx.Request]], tmp_path: Path
) -> None:
    file = tmp_path / "clients.txt"
    file.write_text("telephone\n79111234567\n")
    stub(lambda _: httpx.Response(200, json=RESULT))
    result = runner.invoke(app, ["import", str(file), "--format", "csv", "--json", "--token", "t"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == RESULT


@pytest.mark.parametrize(
    ("args", "env", "response", "message"),
    [
        (["--token", "t"], {}, httpx.Response(401, json={"detail": "x"}), "refused the token"),
        ([], {}, None, "no API token"),
        (
            ["--token", "t"],
            {},
            httpx.Response(
                422,
                json={"detail": [{"field": "header", "message": "the first line must be"}]},
            ),
            "422: header: the first line must be",
        ),
    ],
)
def test_failures_are_one_clear_line(
    stub: Callable[[Any], list[httpx.Request]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    response: httpx.Response | None,
    message: str,
) -> None:
    monkeypatch.delenv(api.TOKEN_ENV, raising=False)
    file = tmp_path / "clients.csv"
    file.write_text("telephone\n")
    stub(lambda _: response or httpx.Response(500))
    result = runner.invoke(app, ["import", str(file), *args])
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_an_unreachable_api_is_named(
    stub: Callable[[Any], list[httpx.Request]], tmp_path: Path
) -> None:
    file = tmp_path / "clients.csv"
    file.write_text("telephone\n")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    stub(refuse)
    result = runner.invoke(app, ["import", str(file), "--token", "t", "--url", "http://nowhere"])
    assert result.exit_code == 1
    assert "cannot reach the API at http://nowhere" in result.stderr


def test_an_unknown_format_and_a_missing_file_are_usage_errors(tmp_path: Path) -> None:
    odd = tmp_path / "clients.xlsx"
    odd.write_bytes(b"")
    result = runner.invoke(app, ["import", str(odd), "--token", "t"])
    assert result.exit_code == 1
    assert "--format csv|ndjson" in _words(result.stderr)
    missing = runner.invoke(app, ["import", str(tmp_path / "nope.csv"), "--token", "t"])
    assert missing.exit_code == 2
    assert "nope.csv' does not exist" in _words(missing.output)


def _words(output: str) -> str:
    """The text as words: messages are wrapped at the terminal's width (and usage
    errors drawn in a box), where the words fall depending on the paths in them."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", output).split())


def test_watch_follows_a_mailing_until_it_is_finished(
    stub: Callable[[Any], list[httpx.Request]],
) -> None:
    answers = iter(
        [
            {"state": "running", "messages_by_status": {"scheduled": 3, "sent": 1}},
            {"state": "running", "messages_by_status": {"queued": 1, "sent": 3}},
            {"state": "finished", "messages_by_status": {"sent": 3, "failed": 1}},
        ]
    )
    seen = stub(lambda _: httpx.Response(200, json=next(answers)))
    result = runner.invoke(app, ["watch", "7", "--interval", "0.2", "--token", "t"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 3
    assert all(request.url.path == "/api/v1/notifications/7/" for request in seen)
    assert "mailing 7 finished: failed 1, sent 3 (4/4 done)" in result.stdout


def test_watch_once_and_an_unknown_mailing(stub: Callable[[Any], list[httpx.Request]]) -> None:
    stub(lambda _: httpx.Response(200, json={"state": "running", "messages_by_status": {}}))
    once = runner.invoke(app, ["watch", "7", "--once", "--token", "t"])
    assert once.exit_code == 0, once.output
    assert "running: no messages yet (0/0 done)" in once.stdout
    stub(lambda _: httpx.Response(404, json={"detail": "mailing 8 not found"}))
    missing = runner.invoke(app, ["watch", "8", "--token", "t"])
    assert missing.exit_code == 1
    assert "404: mailing 8 not found" in missing.stderr
