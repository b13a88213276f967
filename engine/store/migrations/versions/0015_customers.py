"""customers and the keys that find them (phone, email, app user id); on calls, the
customer, how they were verified, the STIR/SHAKEN attestation of their number, the
virtual agent's intent and task, and the chat a call was upgraded from

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secrets", sa.JSON, nullable=False),
        sa.Column("failed_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "customer_keys",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("value", sa.String(320), primary_key=True),
        sa.Column(
            "customer_id",
            sa.String(64),
            sa.ForeignKey("customers.id", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    op.create_index("ix_customer_keys_customer_id", "customer_keys", ["customer_id"])
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("customer_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("verified_by", sa.String(16), nullable=True))
        batch.add_column(sa.Column("attestation", sa.String(1), nullable=True))
        batch.add_column(sa.Column("upgraded_from", sa.String(36), nullable=True))
        batch.add_column(sa.Column("intent", sa.String(40), nullable=True))
        batch.add_column(sa.Column("bot_task", sa.JSON, nullable=True))
        batch.create_index("ix_calls_customer_id", ["customer_id"])


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_customer_id")
        batch.drop_column("bot_task")
        batch.drop_column("intent")
        batch.drop_column("upgraded_from")
        batch.drop_column("attestation")
        batch.drop_column("verified_by")
        batch.drop_column("customer_id")
    op.drop_table("customer_keys")
    op.drop_table("customers")
