"""escalations, call priority and escalation reason, running summary and facts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("escalated_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("escalation_reason", sa.Text))
        batch.add_column(sa.Column("summary", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("facts", sa.JSON, nullable=False, server_default="[]"))
    op.create_table(
        "escalations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actions", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("skill", sa.String(64)),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_escalations_call_id", "escalations", ["call_id"])


def downgrade() -> None:
    op.drop_table("escalations")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("facts")
        batch.drop_column("summary")
        batch.drop_column("escalation_reason")
        batch.drop_column("escalated_at")
        batch.drop_column("priority")
