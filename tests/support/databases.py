"""Databases of a test's own on the session's PostgreSQL: for tests that change the
schema (migrations) or empty tables (TRUNCATE), which would disturb every other test."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy.engine import make_url

from tests.support.infra import REPO

if TYPE_CHECKING:
    from collections.abc import Iterator


def libpq(url: str, database: str | None = None) -> str:
    """A SQLAlchemy URL as psycopg (libpq) takes it; another database of it if given."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def alembic(url: str, *args: str) -> str:
    """Run `alembic <args>` against `url`; its output (the test fails if it does)."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), *args],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@contextlib.contextmanager
def scratch_database(database_url: str, prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """A new database next to `database_url`'s (migrated to head unless told not to),
    its SQLAlchemy URL; dropped afterwards, whoever is still connected."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = libpq(database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrated:
            alembic(url, "upgrade", "head")
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
