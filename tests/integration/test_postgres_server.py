"""The harness's PostgreSQL keeps working when the directories above its workdir change
mode under it, as pytest's own temporary root does each time another pytest starts."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import psycopg

from tools.infra import PostgresServer
from tools.infra.postgres import server_account


def test_a_restart_is_clean_after_the_tree_above_is_closed_again(tmp_path: Path) -> None:
    account = server_account()
    closed = tmp_path / "closed"  # like /tmp/pytest-of-root: the owner's alone
    closed.mkdir(mode=0o700)
    pg = PostgresServer(closed / "pg")
    pg.start()
    try:
        with psycopg.connect(pg.conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        # Another pytest process takes the search bit away again, the server running.
        closed.chmod(0o700)
        pg.stop()
        pg.start()
        with psycopg.connect(pg.conninfo) as conn:
            rows = conn.execute("SELECT n FROM kept").fetchall()
    finally:
        pg.stop()
        moved = pg.datadir.parent if (closed / "pg" / "pgdata").is_symlink() else None
    try:
        _check(pg, closed, rows, account is not None)
    finally:
        if moved is not None:
            shutil.rmtree(moved, ignore_errors=True)


def _check(pg: PostgresServer, closed: Path, rows: list[tuple[int]], as_other_user: bool) -> None:
    log = pg.log_path.read_text()
    assert rows == [(1,)]
    assert "PANIC" not in log
    assert "not properly shut down" not in log
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700
    if as_other_user:
        # Run as root for another user: the data lives where that user always reaches.
        assert (closed / "pg" / "pgdata").is_symlink()
        assert not pg.datadir.is_relative_to(closed)
    else:
        assert pg.datadir == closed / "pg" / "pgdata"
