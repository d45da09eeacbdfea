"""indexes for pruning outbox and processed_event

The purge of published outbox rows and the prune of processed_event ids past the
de-duplication window each become an index range scan instead of a full scan. Built
CONCURRENTLY: both tables take writes all the time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:45:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_outbox_published_at",
            "outbox",
            ["published_at"],
            unique=False,
            postgresql_where=sa.text("published_at IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_processed_event_consumer_processed_at",
            "processed_event",
            ["consumer", "processed_at"],
            unique=False,
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_processed_event_consumer_processed_at",
            table_name="processed_event",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.drop_index(
            "ix_outbox_published_at",
            table_name="outbox",
            postgresql_where=sa.text("published_at IS NOT NULL"),
            postgresql_concurrently=True,
            if_exists=True,
        )
