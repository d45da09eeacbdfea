"""message: its mailing and client references kept per statement, not per row

A mailing's audience expansion inserts up to a million messages in a few statements. The
two foreign keys of `message` (to `mailing`, with ON DELETE CASCADE, and to `client`) ran
PostgreSQL's row-level check for every inserted row (a query and a row lock on the
referenced mailing and client each time, the client's lock also a WAL record): measured,
about 60% of the CPU of an expansion statement. The same rules are now kept with one
check per statement:

* a mailing's deletion deletes its messages (an AFTER DELETE statement trigger on
  `mailing` with the deleted rows as a transition table), as ON DELETE CASCADE did;
* a client with messages cannot be deleted (an AFTER DELETE statement trigger on
  `client` raises `foreign_key_violation`), as the foreign key did; the service never
  deletes a client row (a deleted client keeps its row, `deleted_at`);
* messages are only written for a mailing and clients that exist: the scheduler inserts
  them with `INSERT ... SELECT` from `client`, holding a key-share lock on the mailing
  row for the statement's transaction (`services/scheduler/convergence.py`), so a
  mailing deleted meanwhile waits for the batch and then takes its messages with it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 07:20:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("fk_message_client_id_client", "message", type_="foreignkey")
    op.drop_constraint("fk_message_mailing_id_mailing", "message", type_="foreignkey")
    op.execute(
        """
        CREATE FUNCTION message_mailing_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM message m USING gone g WHERE m.mailing_id = g.id;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER mailing_deletes_messages AFTER DELETE ON mailing
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION message_mailing_deleted()
        """
    )
    op.execute(
        """
        CREATE FUNCTION message_client_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            referenced bigint;
        BEGIN
            SELECT m.client_id INTO referenced
            FROM message m JOIN gone g ON g.id = m.client_id LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'client % has messages: it cannot be deleted', referenced
                    USING ERRCODE = 'foreign_key_violation', TABLE = 'message';
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER client_keeps_messages AFTER DELETE ON client
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION message_client_deleted()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER client_keeps_messages ON client")
    op.execute("DROP FUNCTION message_client_deleted()")
    op.execute("DROP TRIGGER mailing_deletes_messages ON mailing")
    op.execute("DROP FUNCTION message_mailing_deleted()")
    op.create_foreign_key(
        "fk_message_mailing_id_mailing",
        "message",
        "mailing",
        ["mailing_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_foreign_key("fk_message_client_id_client", "message", "client", ["client_id"], ["id"])
