"""the reason with an agent's presence change: why they are away (break, lunch,
meeting, training, other; or the engine's: missed_call, disconnected), or why the engine
moved them (wrap_up_timed_out)

Revision ID: 0017_desk
Revises: 0016_alerts_wallboard
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_desk"
down_revision = "0016_alerts_wallboard"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("presence_log") as batch:
        batch.add_column(sa.Column("reason", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("presence_log") as batch:
        batch.drop_column("reason")
