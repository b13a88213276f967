"""post-call analytics (engine/callanalytics.py): one row per analysed call

Revision ID: 0018_analytics
Revises: 0017_desk
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_analytics"
down_revision = "0017_desk"
branch_labels = None
depends_on = None

FIGURES = (
    "handle_seconds", "queue_seconds", "bot_seconds", "agent_seconds", "hold_seconds",
    "wrap_up_seconds",
)  # fmt: skip
# None for a chat: typed lines take no time
TALK_FIGURES = (
    "caller_talk_seconds", "agent_talk_seconds", "non_talk_seconds",
    "longest_non_talk_seconds",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "call_analytics",
        sa.Column(
            "call_id",
            sa.String(36),
            sa.ForeignKey("calls.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        *(sa.Column(name, sa.Float, nullable=False) for name in FIGURES),
        *(sa.Column(name, sa.Float, nullable=True) for name in TALK_FIGURES),
        sa.Column("caller_interruptions", sa.Integer, nullable=False),
        sa.Column("agent_interruptions", sa.Integer, nullable=False),
        sa.Column("categories", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("call_analytics")
