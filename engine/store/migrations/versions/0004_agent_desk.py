"""agent desk: who handled a call, wrap-up disposition and notes, callbacks

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("agent_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("disposition", sa.String(64), nullable=True))
        batch.add_column(sa.Column("wrapped_up_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_calls_agent_id", ["agent_id"])
        batch.create_index("ix_calls_caller", ["caller"])
    with op.batch_alter_table("legs") as batch:
        batch.add_column(sa.Column("user_id", sa.String(36), nullable=True))
    op.create_table(
        "call_notes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("author_id", sa.String(36), nullable=True),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("disposition", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_call_notes_call_id", "call_notes", ["call_id"])
    op.create_table(
        "callbacks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("caller", sa.String(200), nullable=True),
        sa.Column("contact", sa.String(200), nullable=True),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("escalation_reason", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_by", sa.String(64), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_callbacks_call_id", "callbacks", ["call_id"])
    op.create_index("ix_callbacks_status", "callbacks", ["status"])


def downgrade() -> None:
    op.drop_table("callbacks")
    op.drop_table("call_notes")
    with op.batch_alter_table("legs") as batch:
        batch.drop_column("user_id")
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_caller")
        batch.drop_index("ix_calls_agent_id")
        batch.drop_column("wrapped_up_at")
        batch.drop_column("disposition")
        batch.drop_column("agent_id")
