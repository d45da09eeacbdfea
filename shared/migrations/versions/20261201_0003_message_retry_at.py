"""message.retry_at, and an index for the re-drive of orphaned messages

`retry_at` is when a `retrying` message's retry command becomes due (its
`not_before`). `due_at` keeps the moment the message first became due, which the
retry age cap counts from; the scheduler's re-drive judges a `retrying` message by
`retry_at`. The partial index serves the re-drive's scan of `queued` and `retrying`
messages by last change.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:50:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = sa.text("status IN ('queued','retrying')")


def upgrade() -> None:
    op.add_column("message", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_message_waiting_updated",
            "message",
            ["status", "updated_at"],
            unique=False,
            postgresql_where=WAITING,
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_message_waiting_updated",
            table_name="message",
            postgresql_where=WAITING,
            postgresql_concurrently=True,
            if_exists=True,
        )
    op.drop_column("message", "retry_at")
