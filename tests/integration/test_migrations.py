"""Alembic migrations on the real PostgreSQL: up, down, up again, and no drift."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import psycopg

from tests.support.databases import alembic, libpq, scratch_database

if TYPE_CHECKING:
    from tests.support.infra import Infra

TABLES = {
    "api_key",
    "audit_log",
    "client",
    "tag",
    "client_tag",
    "mailing",
    "message",
    "outbox",
    "processed_event",
    "mailing_status_count",
    "daily_report",
    "console_session",
    "audience_zone_count",
    "audience_tag_count",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(libpq(url)) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows} - {"alembic_version"}


def _constraints(url: str, table: str) -> set[str]:
    with psycopg.connect(libpq(url)) as conn:
        rows = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass", (table,)
        ).fetchall()
    return {row[0] for row in rows}


def test_upgrade_downgrade_upgrade_on_a_fresh_database(infra: Infra) -> None:
    with scratch_database(infra.database_url, "migrations", migrated=False) as url:
        alembic(url, "upgrade", "head")
        assert _tables(url) == TABLES
        assert "uq_message_mailing_id" in _constraints(url, "message")
        assert "ck_mailing_stop_after_start" in _constraints(url, "mailing")

        alembic(url, "downgrade", "base")
        assert _tables(url) == set()

        alembic(url, "upgrade", "head")
        assert _tables(url) == TABLES
        # The models and the migrations describe the same schema.
        assert "No new upgrade operations detected" in alembic(url, "check")


def test_operator_code_is_derived_by_the_database(infra: Infra) -> None:
    with psycopg.connect(libpq(infra.database_url)) as conn:
        phone = f"7{uuid.uuid4().int % 10**10:010d}"
        row = conn.execute(
            "INSERT INTO client (phone) VALUES (%s) RETURNING operator_code, timezone", (phone,)
        ).fetchone()
        conn.rollback()
    assert row == (int(phone[1:4]), "UTC")
