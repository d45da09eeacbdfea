"""What the harness's PostgreSQL runs with: the fast settings for the tests, PostgreSQL's
durable defaults when asked (the benchmark), read back from the server as the
benchmark's report prints them."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from tools.infra import PostgresServer
from tools.infra.postgres import durability_label, durability_settings

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("durable", "expected"),
    [
        (False, "fast (fsync=off, synchronous_commit=off, full_page_writes=off)"),
        (True, "durable (fsync=on, synchronous_commit=on, full_page_writes=on)"),
    ],
)
def test_the_server_runs_with_the_settings_asked_for(
    tmp_path: Path, durable: bool, expected: str
) -> None:
    pg = PostgresServer(tmp_path / "pg", durable=durable)
    pg.start()
    try:
        settings = durability_settings(pg.url)
    finally:
        pg.stop()
        if (tmp_path / "pg" / "pgdata").is_symlink():  # moved out of reach of pytest's root
            shutil.rmtree(pg.datadir.parent, ignore_errors=True)
    assert durability_label(settings) == expected
