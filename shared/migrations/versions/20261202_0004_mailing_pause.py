"""mailing.state gains `paused` and `cancelled`

An operator pauses, resumes and cancels a mailing (`POST .../pause/`, `/resume/`,
`/cancel/`). Only the state check changes. A downgrade maps the new states onto the
old ones first: `paused` becomes `running` (or `scheduled` if it never activated),
`cancelled` becomes `finished`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = "ck_mailing_state_known"
NEW = "state IN ('scheduled', 'running', 'finished', 'paused', 'cancelled')"
OLD = "state IN ('scheduled', 'running', 'finished')"


def upgrade() -> None:
    op.drop_constraint(op.f(CHECK), "mailing", type_="check")
    op.create_check_constraint(op.f(CHECK), "mailing", NEW)


def downgrade() -> None:
    op.execute(
        "UPDATE mailing SET state = CASE WHEN activated_at IS NULL THEN 'scheduled' "
        "ELSE 'running' END WHERE state = 'paused'"
    )
    op.execute("UPDATE mailing SET state = 'finished' WHERE state = 'cancelled'")
    op.drop_constraint(op.f(CHECK), "mailing", type_="check")
    op.create_check_constraint(op.f(CHECK), "mailing", OLD)
