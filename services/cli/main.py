"""`notifications import FILE` and `notifications watch MAILING_ID` (typer + rich).

The URL and token come from `--url` / `--token` or `NOTIFICATIONS_URL` /
`NOTIFICATIONS_TOKEN`. Exit status: 0 done, 1 a failure (said in one line on stderr),
2 a usage error, 3 an import that rejected some rows (the good ones are written).
"""

from __future__ import annotations

import json
import time
from pathlib import Path  # noqa: TC003 (typer reads the annotations at run time)
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from services.cli.api import DEFAULT_URL, TOKEN_ENV, URL_ENV, Api, CliError, content_type

app = typer.Typer(
    name="notifications",
    help="Command-line client of the notifications admin API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar=URL_ENV, help="The admin API's base URL")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar=TOKEN_ENV, help="An API token", show_default=False),
]
REJECTED_EXIT = 3
# Waiting statuses: the messages a mailing has not finished with.
PENDING = ("scheduled", "queued", "sending", "retrying")
FINAL_STATES = ("finished", "cancelled")


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(1)


@app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV or NDJSON file"),
    ],
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="create: telephones already known are rejected; upsert: their clients updated",
        ),
    ] = "create",
    file_format: Annotated[
        str | None,
        typer.Option("--format", help="csv or ndjson (default: from the file's extension)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Import clients from a CSV (header telephone,tag,timezone) or NDJSON file."""
    if mode not in ("create", "upsert"):
        raise _fail(f"--mode must be create or upsert, not {mode!r}")
    try:
        kind = content_type(file, file_format)
        api = Api(url, token)
    except CliError as exc:
        raise _fail(str(exc)) from None
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=as_json,
        ) as progress:
            task = progress.add_task(f"uploading {file.name}", total=file.stat().st_size)

            def advance(sent: int) -> None:
                progress.advance(task, sent)
                if progress.tasks[task].finished:
                    progress.update(task, description=f"importing {file.name}")

            result = api.import_file(file, kind, mode, advance)
    except CliError as exc:
        raise _fail(str(exc)) from None
    finally:
        api.close()
    if as_json:
        out.print_json(json.dumps(result))
    else:
        _print_import(result)
    if result.get("rejected_count", len(result.get("rejected", []))):
        raise typer.Exit(REJECTED_EXIT)


def _print_import(result: dict[str, Any]) -> None:
    rejected = result.get("rejected", [])
    count = result.get("rejected_count", len(rejected))
    out.print(
        f"created {result['created']}, updated {result['updated']}, "
        f"unchanged {result['unchanged']}, rejected {count}",
        highlight=False,
    )
    if not rejected:
        return
    table = Table("line", "field", "message", title="Rejected rows", title_justify="left")
    for row in rejected:
        table.add_row(str(row["line"]), row["field"], row["message"])
    out.print(table)
    if count > len(rejected):
        out.print(f"... and {count - len(rejected)} more", highlight=False)


def _progress_of(mailing: dict[str, Any]) -> tuple[int, int]:
    """(messages done, messages in all) of a mailing as the API counts them."""
    counts: dict[str, int] = mailing.get("messages_by_status", {})
    total = sum(counts.values())
    waiting = sum(counts.get(status, 0) for status in PENDING)
    return total - waiting, total


def _status_line(mailing: dict[str, Any]) -> str:
    counts = mailing.get("messages_by_status", {})
    shown = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    return f"{mailing.get('state', '?')}: {shown or 'no messages yet'}"


@app.command()
def watch(
    mailing_id: Annotated[int, typer.Argument(min=1, help="The mailing's id")],
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between two reads")
    ] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print the progress once and exit")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show a mailing's progress live until it is finished (Ctrl-C stops watching)."""
    try:
        api = Api(url, token)
    except CliError as exc:
        raise _fail(str(exc)) from None
    try:
        mailing = api.mailing(mailing_id)
        with Progress(
            TextColumn(f"[bold]mailing {mailing_id}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.description}"),
            console=out,
            disable=once,
        ) as progress:
            task = progress.add_task("", total=None)
            while True:
                done, total = _progress_of(mailing)
                progress.update(
                    task, completed=done, total=total or None, description=_status_line(mailing)
                )
                if once or (mailing.get("state") in FINAL_STATES and done == total):
                    break
                time.sleep(interval)
                mailing = api.mailing(mailing_id)
    except CliError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        api.close()
    done, total = _progress_of(mailing)
    out.print(
        f"mailing {mailing_id} {_status_line(mailing)} ({done}/{total} done)", highlight=False
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
