"""A message's mailing and client references (migration 0008: checked per statement)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import pytest

from tests.support.databases import libpq, scratch_database

if TYPE_CHECKING:
    from tests.support.infra import Infra


def test_a_deleted_mailing_takes_its_messages_and_a_client_with_messages_stays(
    infra: Infra,
) -> None:
    with (
        scratch_database(infra.database_url, "references") as url,
        psycopg.connect(libpq(url), autocommit=True) as conn,
    ):
        clients = [
            row[0]
            for row in conn.execute(
                "INSERT INTO client (phone, timezone) VALUES "
                "('79000000001', 'UTC'), ('79000000002', 'UTC'), ('79000000003', 'UTC') "
                "RETURNING id"
            ).fetchall()
        ]
        mailings = [
            row[0]
            for row in conn.execute(
                "INSERT INTO mailing (start_at, stop_at, text) VALUES "
                "(now(), now() + interval '1 day', 'a'), "
                "(now(), now() + interval '1 day', 'b') RETURNING id"
            ).fetchall()
        ]
        for mailing in mailings:
            conn.execute(
                "INSERT INTO message (mailing_id, client_id) SELECT %s, unnest(%s::bigint[])",
                (mailing, clients[:2]),
            )

        # A client with messages cannot be deleted (the statement changes nothing).
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("DELETE FROM client WHERE id = ANY(%s)", (clients,))
        assert conn.execute("SELECT count(*) FROM client").fetchone() == (3,)
        # One without messages can.
        conn.execute("DELETE FROM client WHERE id = %s", (clients[2],))

        # Deleting a mailing deletes its messages, and only its own.
        conn.execute("DELETE FROM mailing WHERE id = %s", (mailings[0],))
        left = conn.execute("SELECT mailing_id, count(*) FROM message GROUP BY 1").fetchall()
        assert left == [(mailings[1], 2)]
