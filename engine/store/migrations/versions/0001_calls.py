"""calls, legs, utterances, emotion samples

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("recognizer", sa.String(32)),
        sa.Column("recognizer_note", sa.Text, nullable=False),
        sa.Column("caller", sa.String(200)),
        sa.Column("emotion", sa.String(16)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.String(64)),
    )
    op.create_index("ix_calls_state", "calls", ["state"])
    op.create_index("ix_calls_created_at", "calls", ["created_at"])
    op.create_table(
        "legs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("codec", sa.String(32)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_legs_call_id", "legs", ["call_id"])
    op.create_table(
        "utterances",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "leg_id", sa.String(36), sa.ForeignKey("legs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("speaker", sa.String(16), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("start", sa.Float, nullable=False),
        sa.Column("end", sa.Float, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("words", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_utterances_call_id", "utterances", ["call_id"])
    op.create_table(
        "emotion_samples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "leg_id", sa.String(36), sa.ForeignKey("legs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("utterance_id", sa.String(36), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("arousal", sa.Float, nullable=False),
        sa.Column("valence", sa.Float, nullable=False),
        sa.Column("trend", sa.Float, nullable=False),
        sa.Column("call_label", sa.String(16), nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("features", sa.JSON, nullable=False),
    )
    op.create_index("ix_emotion_samples_call_id", "emotion_samples", ["call_id"])


def downgrade() -> None:
    op.drop_table("emotion_samples")
    op.drop_table("utterances")
    op.drop_table("legs")
    op.drop_table("calls")
