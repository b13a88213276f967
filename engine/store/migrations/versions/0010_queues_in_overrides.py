"""queues changed through the API kept with the other overrides (kind "queue")

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = "name, config, updated_by, updated_at"


def upgrade() -> None:
    op.execute(
        f"INSERT INTO config_overrides (kind, {COLUMNS})"
        f" SELECT 'queue', {COLUMNS} FROM queue_configs"
    )
    op.drop_table("queue_configs")


def downgrade() -> None:
    op.create_table(
        "queue_configs",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("config", sa.JSON, nullable=True),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        f"INSERT INTO queue_configs ({COLUMNS}) SELECT {COLUMNS} FROM config_overrides"
        " WHERE kind = 'queue'"
    )
    op.execute("DELETE FROM config_overrides WHERE kind = 'queue'")
